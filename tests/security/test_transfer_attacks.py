"""Attacks on the transfer server (plain DNS over UDP and TCP), through the real door.

Each test plays the attacker with kdig or raw dnspython sockets against a
running transfer server fed by real publications, and checks that the
attack ends refused, with a log line naming the peer and the reason, and
changes nothing (no zone data, no transfer recorded as an ISP's pull).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import pytest

from app.config import Settings
from app.core import Core
from app.embedded import free_port
from tests.conftest import Personas, publish
from tests.test_xfr_server import ENTRIES, ZONE, kdig, listed, records, soa_serial, tsig, wait_for
from workers.xfrd import ServerThread

#: Another loopback address: a second source, as another ISP would be.
OTHER = "127.0.0.2"


@pytest.fixture
def dns_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None, notify_retries=0)


@pytest.fixture
def acme(core: Core, personas: Personas) -> dict[str, Any]:
    """An ISP registered with a TSIG key and an address list that includes the attacker's address."""
    return core.isps.add(personas.ada.actor, "acme", allow_from=["127.0.0.0/8"])


@pytest.fixture
def version(core: Core, personas: Personas, acme: dict[str, Any]) -> int:
    listed(core, personas, ENTRIES)
    return int(publish(core).version)


def serve(dns_settings: Settings, core: Core, version: int, **changes: Any) -> ServerThread:
    return ServerThread(replace(dns_settings, **changes), core.store)


@pytest.fixture
def server(dns_settings: Settings, core: Core, version: int) -> Iterator[ServerThread]:
    with ServerThread(dns_settings, core.store) as t:
        wait_for(lambda: soa_serial(t.port) == version)
        wait_for(lambda: t.server is not None and t.server.access.keys)
        yield t


def key_of(isp: dict[str, Any]) -> dns.tsig.Key:
    return dns.tsig.Key(isp["tsig_key_name"], isp["tsig_secret"], dns.tsig.HMAC_SHA256)


def refusals(caplog: pytest.LogCaptureFixture, reason: str) -> list[Any]:
    return [r for r in caplog.records if r.name == "blocklist.xfrd" and getattr(r, "reason", None) == reason]


def send(sock: socket.socket, wire: bytes) -> None:
    sock.sendall(struct.pack("!H", len(wire)) + wire)


def read(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        return buf

    return exactly(struct.unpack("!H", exactly(2))[0])


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes the connection within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65535):
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def cnames(wire_messages: list[bytes]) -> list[str]:
    out = []
    for w in wire_messages:
        msg = dns.message.from_wire(w, keyring=False)
        out += [rr.name.to_text() for rr in msg.answer if rr.rdtype == dns.rdatatype.CNAME]
    return out


# --------------------------------------------------------------------------- 1. unsigned transfers


def test_unsigned_axfr_from_allowed_address_is_refused(
        core: Core, acme: dict[str, Any], server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    out = kdig(server.port, "+tcp", "AXFR", ZONE)
    assert "REFUSED" in out.stdout + out.stderr
    assert not [r for r in records(out.stdout) if r[1] == "CNAME"], "no listed name leaves without TSIG"
    (line,) = refusals(caplog, "no_tsig")[:1]
    assert line.peer == "127.0.0.1"
    assert "without TSIG" in line.getMessage()
    time.sleep(0.3)
    assert core.isps.get("acme").last_pull_at is None, "nothing is recorded as acme's pull"
    # The ISP's own signed transfer from the same address still works.
    signed = kdig(server.port, "-y", tsig(acme), "AXFR", ZONE)
    assert [r for r in records(signed.stdout) if r[1] == "CNAME"]


def test_unsigned_udp_ixfr_from_allowed_address_is_refused_and_not_logged_as_a_pull(
        core: Core, version: int, server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    q = dns.message.make_query(ZONE, "IXFR")
    q.authority.append(dns.rrset.from_text(ZONE, 0, "IN", "SOA", f"a. b. {version - 1} 1 1 1 1"))
    r = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3)
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.answer
    assert refusals(caplog, "no_tsig")
    time.sleep(0.3)
    assert core.isps.get("acme").last_pull_at is None


def test_an_isp_registered_address_only_is_the_one_explicit_way_to_transfer_unsigned(
        core: Core, personas: Personas, version: int, server: ServerThread) -> None:
    core.isps.add(personas.ada.actor, "unbound-isp", allow_from=[f"{OTHER}/32"], address_only=True)
    assert core.isps.get("unbound-isp").tsig_secret == "", "an address-only ISP has no key to leak"
    wait_for(lambda: server.server is not None and server.server.access.address_only)
    with connect(server.port, OTHER) as sock:
        send(sock, dns.message.make_query(ZONE, "AXFR").to_wire())
        assert cnames([read(sock), read(sock)]), "its address lets it transfer"
    with connect(server.port) as sock:  # any other address: refused
        send(sock, dns.message.make_query(ZONE, "AXFR").to_wire())
        assert dns.message.from_wire(read(sock)).rcode() == dns.rcode.REFUSED


def test_before_any_publication_an_unsigned_transfer_is_refused_and_only_a_signed_one_learns_why(
        dns_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    narrow = core.isps.add(personas.ada.actor, "narrow", allow_from=["127.0.0.1/32"])
    assert core.publisher.latest() is None
    with serve(dns_settings, core, 0) as t:
        wait_for(lambda: t.server is not None and len(t.server.access.keys) == 2)
        unsigned = kdig(t.port, "+tcp", "AXFR", ZONE)
        assert "REFUSED" in unsigned.stdout + unsigned.stderr, unsigned.stdout + unsigned.stderr
        assert refusals(caplog, "no_tsig")
        q = dns.message.make_query(ZONE, "IXFR")
        q.authority.append(dns.rrset.from_text(ZONE, 0, "IN", "SOA", "a. b. 1 1 1 1 1"))
        assert dns.query.tcp(q, "127.0.0.1", port=t.port, timeout=3).rcode() == dns.rcode.REFUSED
        # A signed request from an address its ISP does not allow learns nothing either.
        elsewhere = kdig(t.port, "-y", tsig(narrow), "-b", OTHER, "AXFR", ZONE)
        assert "REFUSED" in elsewhere.stdout + elsewhere.stderr, elsewhere.stdout + elsewhere.stderr
        assert refusals(caplog, "acl")
        assert not refusals(caplog, "no_version")
        # The ISP's signed request from an address it allows may learn that nothing is published yet.
        signed = kdig(t.port, "-y", tsig(acme), "AXFR", ZONE)
        assert "SERVFAIL" in signed.stdout + signed.stderr, signed.stdout + signed.stderr


# --------------------------------------------------------------------------- 7. one address starves the others


def test_one_address_cannot_hold_more_than_its_share_of_connections(
        dns_settings: Settings, core: Core, acme: dict[str, Any], version: int,
        caplog: pytest.LogCaptureFixture) -> None:
    share = 16  # the default of BLOCKLIST_DNS_MAX_CONNECTIONS_PER_ADDRESS
    with serve(dns_settings, core, version) as t:
        wait_for(lambda: soa_serial(t.port) == version)
        time.sleep(0.5)  # the SOA polls above (over TCP) are closed on the server side too
        held = [connect(t.port) for _ in range(share)]
        try:
            time.sleep(0.2)
            extra = connect(t.port)
            assert closed_by_server(extra, 2.0), "one more connection from the same address is closed at once"
            extra.close()
            # Another address still has room and is served.
            out = kdig(t.port, "-y", tsig(acme), "-b", OTHER, "AXFR", ZONE)
            assert [r for r in records(out.stdout) if r[1] == "CNAME"], out.stderr
        finally:
            for s in held:
                s.close()
        assert t.server is not None
        assert t.server.metrics.refusals.labels("connections_per_address")._value.get() >= 1
    line = refusals(caplog, "connections_per_address")[0]
    assert line.peer == "127.0.0.1"


def test_unsigned_soa_queries_do_not_keep_a_connection_open(
        dns_settings: Settings, core: Core, acme: dict[str, Any], version: int,
        caplog: pytest.LogCaptureFixture) -> None:
    with serve(dns_settings, core, version, dns_tcp_idle=1.0) as t:
        wait_for(lambda: soa_serial(t.port) == version)
        t0 = time.monotonic()
        with connect(t.port) as sock:
            closed_at = None
            while time.monotonic() - t0 < 4:
                try:
                    send(sock, dns.message.make_query(ZONE, "SOA").to_wire())
                    read(sock)
                except (ConnectionError, TimeoutError, OSError):
                    closed_at = time.monotonic() - t0
                    break
                time.sleep(0.25)
        assert closed_at is not None and closed_at < 2.0, closed_at
        # Signed queries from the ISP keep its connection open as long as they come.
        key = key_of(acme)
        with connect(t.port) as sock:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.5:
                q = dns.message.make_query(ZONE, "SOA")
                q.use_tsig(key)
                send(sock, q.to_wire())
                assert dns.message.from_wire(read(sock), keyring=key, request_mac=q.mac).answer
                time.sleep(0.25)
    assert refusals(caplog, "idle")[0].peer == "127.0.0.1"


def test_a_flood_of_udp_queries_from_one_address_is_cut_while_others_are_answered(
        dns_settings: Settings, core: Core, version: int, acme: dict[str, Any]) -> None:
    with serve(dns_settings, core, version) as t:  # the defaults: 20 a second, bursts of 40
        wait_for(lambda: soa_serial(t.port) == version)
        time.sleep(2.5)  # the bucket refills after the start-up probes
        q = dns.message.make_query(ZONE, "SOA")
        q.use_tsig(key_of(acme))
        answered = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(1.0)  # answers wait in the socket buffer; this only ends the count
            for _ in range(300):
                q.id = (q.id + 1) & 0xFFFF
                q.use_tsig(key_of(acme), original_id=q.id)
                s.sendto(q.to_wire(), ("127.0.0.1", t.port))
            try:
                while True:
                    s.recv(4096)
                    answered += 1
            except TimeoutError:
                pass
        assert 35 <= answered <= 90, answered
        other = dns.message.make_query(ZONE, "SOA")
        other.use_tsig(key_of(acme))
        r = dns.query.udp(other, "127.0.0.1", port=t.port, source=OTHER, timeout=2)
        assert r.answer, "another address is still answered"
        assert t.server is not None
        assert t.server.metrics.refusals.labels("rate")._value.get() >= 200


def test_an_unsigned_udp_query_gets_no_answer_larger_than_itself(
        core: Core, acme: dict[str, Any], server: ServerThread) -> None:
    q = dns.message.make_query(ZONE, "SOA", use_edns=0, payload=4096)
    wire = q.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, ("127.0.0.1", server.port))
        answer = s.recv(65535)
    assert len(answer) <= len(wire), "a spoofed query is not amplified"
    r = dns.message.from_wire(answer)
    assert r.flags & dns.flags.TC, "the client is told to come back over TCP"
    assert not r.answer
    signed = dns.message.make_query(ZONE, "SOA", use_edns=0, payload=4096)
    signed.use_tsig(key_of(acme))
    full = dns.query.udp(signed, "127.0.0.1", port=server.port, timeout=3)
    assert full.answer, "an authenticated query gets the whole answer"


# --------------------------------------------------------------------------- 8. the TSIG time window


def _signed_at(q: dns.message.Message, when: float, monkeypatch: pytest.MonkeyPatch) -> bytes:
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: when)
        return q.to_wire()


def test_a_request_signed_an_hour_ago_with_fudge_65535_is_refused_badtime(
        core: Core, acme: dict[str, Any], server: ServerThread, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = key_of(acme)
    q = dns.message.make_query(ZONE, "AXFR")
    q.use_tsig(key, fudge=65535)
    wire = _signed_at(q, time.time() - 3600, monkeypatch)
    with connect(server.port) as sock:
        send(sock, wire)
        first = read(sock)
    r = dns.message.from_wire(first, keyring=False)
    assert r.rcode() == dns.rcode.NOTAUTH
    assert r.tsig is not None
    assert r.tsig[0].error == dns.rcode.BADTIME
    assert not r.answer, "no zone data"
    line = refusals(caplog, "badtime")[0]
    assert line.peer == "127.0.0.1"
    time.sleep(0.3)
    assert core.isps.get("acme").last_pull_at is None


def test_a_replayed_signed_axfr_request_is_refused(
        core: Core, acme: dict[str, Any], server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    key = key_of(acme)
    q = dns.message.make_query(ZONE, "AXFR")
    q.use_tsig(key)
    captured = q.to_wire()  # what an eavesdropper keeps of the ISP's request
    with connect(server.port) as sock:
        send(sock, captured)
        assert cnames([read(sock), read(sock)]), "the ISP's own request is served"
    for source in ("127.0.0.1", OTHER):
        with connect(server.port, source) as sock:
            send(sock, captured)
            r = dns.message.from_wire(read(sock), keyring=False)
        assert r.rcode() == dns.rcode.REFUSED
        assert not r.answer
    lines = refusals(caplog, "replay")
    assert lines
    assert "sent again" in lines[0].getMessage()
