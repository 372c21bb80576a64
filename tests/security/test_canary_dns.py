"""The door between ``blocklist-pull check`` and the resolvers it asks: answers it must not believe.

A fake resolver on a loopback socket sends what an attacker on the path, or a
broken resolver, could send: answers with another id or to another
question, a compression loop, records that run past the end, a genuine
NXDOMAIN from the root zone, a truncated answer. The stub ignores, refuses
or re-asks, and the check never counts them as enforcement.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from client import dnsquery
from client.check import ask_blocked, ask_version

Handler = Callable[[bytes], list[bytes]]
Fake = Callable[[Handler], tuple[str, int]]


def question(query: bytes) -> tuple[int, bytes]:
    """(id, question section) of a query."""
    end = query.index(b"\0", 12) + 5
    return struct.unpack("!H", query[:2])[0], query[12:end]


def response(qid: int, q: bytes, *, rcode: int = 0, flags: int = 0x8180, answers: Sequence[bytes] = (),
             authority: Sequence[bytes] = ()) -> bytes:
    return (struct.pack("!HHHHHH", qid, flags | rcode, 1, len(answers), len(authority), 0) + q
            + b"".join(answers) + b"".join(authority))


def txt(text: str) -> bytes:
    data = bytes([len(text)]) + text.encode()
    return b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, len(data)) + data


def root_soa() -> bytes:
    rdata = b"\x01a\x0croot-servers\x03net\x00\x05nstld\x0cverisign-grs\x03com\x00" + struct.pack("!5I", 1, 2, 3, 4, 5)
    return b"\x00" + struct.pack("!HHIH", 6, 1, 86400, len(rdata)) + rdata


@pytest.fixture
def fake() -> Iterator[Fake]:
    socks: list[socket.socket] = []

    def start(handler: Handler) -> tuple[str, int]:
        for _ in range(50):  # a UDP port whose TCP twin is free too
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", port))
                break
            except OSError:
                udp.close()
                tcp.close()
        tcp.listen()
        socks.extend([udp, tcp])

        def serve_udp() -> None:
            while True:
                try:
                    data, peer = udp.recvfrom(512)
                except OSError:
                    return
                for answer in handler(data):
                    udp.sendto(answer, peer)

        def serve_tcp() -> None:
            while True:
                try:
                    conn, _ = tcp.accept()
                except OSError:
                    return
                with conn:
                    n = struct.unpack("!H", conn.recv(2))[0]
                    data = conn.recv(n)
                    for answer in handler(b"TCP" + data):
                        conn.sendall(struct.pack("!H", len(answer)) + answer)

        for target in (serve_udp, serve_tcp):
            threading.Thread(target=target, daemon=True).start()
        return "127.0.0.1", port

    yield start
    for s in socks:
        s.close()


def test_an_answer_with_another_id_is_ignored_and_the_real_one_taken(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        qid, q = question(query)
        return [response(qid ^ 1, q, answers=[txt("999")]), response(qid, q, answers=[txt("7")])]

    assert ask_version(fake(handler), 2.0) == (7, "7")


def test_an_answer_to_another_question_is_not_believed(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        qid, _ = question(query)
        other = b"\x07version\x06canary\x04evil\x00\x00\x10\x00\x01"
        return [response(qid, other, answers=[txt("999")])]

    version, detail = ask_version(fake(handler), 0.5)

    assert version is None
    assert "did not answer within 0.5 s" in detail


def test_a_compression_loop_is_a_clear_error_not_a_hang(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        qid, q = question(query)
        loop = struct.pack("!H", 0xC000 | (12 + len(q)))  # a name that points at itself
        return [response(qid, q, answers=[loop + struct.pack("!HHIH", 16, 1, 60, 2) + b"\x0142"])]

    with pytest.raises(dnsquery.DnsError, match="malformed: a name has a compression loop"):
        dnsquery.query(fake(handler), "version.canary.", dnsquery.TXT, 2.0)


def test_a_record_running_past_the_end_is_a_clear_error(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        qid, q = question(query)
        return [response(qid, q, answers=[txt("42")[:-1]])]

    version, detail = ask_version(fake(handler), 2.0)

    assert version is None
    assert "malformed: a record runs past the end of the answer" in detail


def test_a_genuine_nxdomain_from_the_root_is_not_taken_for_blocking(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        qid, q = question(query)
        return [response(qid, q, rcode=3, authority=[root_soa()])]

    assert ask_blocked(fake(handler), 2.0, frozenset()) == (
        False, "NXDOMAIN from the root zone: the policy did not apply")


def test_a_canary_holding_something_else_than_a_version_is_refused(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        qid, q = question(query)
        return [response(qid, q, answers=[txt("42; rm -rf /")])]

    assert ask_version(fake(handler), 2.0) == (None, "the version canary holds '42; rm -rf /', not a version number")


def test_a_truncated_answer_is_asked_again_over_tcp(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        if query.startswith(b"TCP"):
            qid, q = question(query[3:])
            return [response(qid, q, answers=[txt("12")])]
        qid, q = question(query)
        return [response(qid, q, flags=0x8380)]  # TC set, nothing in it

    assert ask_version(fake(handler), 2.0) == (12, "12")


def a_record(address: str) -> bytes:
    return b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)


def test_an_address_answer_counts_as_blocked_only_when_it_is_the_stop_page_given(fake: Fake) -> None:
    def handler(query: bytes) -> list[bytes]:
        qid, q = question(query)
        return [response(qid, q, answers=[a_record("192.0.2.80")])]

    server = fake(handler)

    assert ask_blocked(server, 2.0, frozenset({"192.0.2.80"})) == (True, "the stop page")
    assert ask_blocked(server, 2.0, frozenset()) == (False, "not blocked (NOERROR, 192.0.2.80)")
    assert ask_blocked(server, 2.0, frozenset({"192.0.2.99"}))[0] is False  # someone else's address


@pytest.mark.parametrize("name", ["version.canary", "blocked.canary"])
def test_a_feed_entry_taking_a_canarys_name_is_refused_in_a_snapshot_and_in_a_delta(tmp_path: Path,
                                                                                     name: str) -> None:
    from client.errors import RefusedError
    from tests.feed_builder import FeedBuilder, rec
    from tests.test_client_incremental import pull

    # A signed feed could still carry it (a mistake, or a compromised signer): the version
    # canary would turn into an NXDOMAIN, or the outputs would not load.
    builder = FeedBuilder()
    builder.publish([rec("site.test"), rec(name)])
    with pytest.raises(RefusedError, match=f"lists '{name}', a name reserved for the canary"):
        pull(builder, tmp_path / "snapshot")
    assert not (tmp_path / "snapshot" / "out" / "0.rpz").exists()

    follower = FeedBuilder(key=builder.key)
    follower.publish([rec("site.test")])
    pull(follower, tmp_path / "delta")
    before = (tmp_path / "delta" / "out" / "0.rpz").read_bytes()
    follower.publish([rec("site.test"), rec(name)])
    with pytest.raises(RefusedError, match="a name reserved for the canary"):
        pull(follower, tmp_path / "delta")
    assert (tmp_path / "delta" / "out" / "0.rpz").read_bytes() == before  # still version 1, untouched
