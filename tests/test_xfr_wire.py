"""The transfer server's wire layer (app.xfr), checked by dnspython as a client.

Every transfer here is read back the way a secondary reads it: messages
parsed by dnspython with TSIG verification against the request MAC, then
applied by ``dns.xfr.Inbound`` to a ``dns.versioned.Zone``. No sockets.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import random
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.versioned
import dns.xfr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import rpz, xfr
from app.isps import Isp
from app.rpz import SoaParams
from app.xfr import Access, BuildReport, Dispatcher, Zone, ZoneInfo, build_snapshot

PARAMS = SoaParams(zone="blocklist.rpz.", ttl=60, refresh=300, retry=60, expire=2592000, minimum=60,
                   ns="ns.blocklist.example.")
INFO = ZoneInfo.from_params(PARAMS)
ORIGIN = dns.name.from_text("blocklist.rpz.")
SECRET = base64.b64encode(bytes(range(32))).decode()
KEY = dns.tsig.Key("acme.tsig.", SECRET, dns.tsig.HMAC_SHA256)
OTHER_SECRET = base64.b64encode(bytes(range(1, 33))).decode()


def isp(name: str = "acme", *, allow_from: list[str] | None = None, active: bool = True,
        secret: str = SECRET, notify: list[str] | None = None, address_only: bool = False) -> Isp:
    allow = allow_from or []
    return Isp(name=name, active=active, tsig_name="" if address_only else f"{name}.tsig.",
               tsig_secret="" if address_only else secret, notify=notify or [], allow_from=allow, created_at=0,
               version="1", address_only=address_only, networks=[ipaddress.ip_network(c) for c in allow])


def names_for(domains: list[tuple[str, bool]]) -> list[str]:
    """Zone owner names in the publisher's order: ``d`` then ``*.d`` for subdomain entries."""
    out: list[str] = []
    for d, sub in sorted(domains):
        out.extend(rpz.names(d, sub))
    return out


def domains(n: int, seed: int = 1) -> list[tuple[str, bool]]:
    rnd = random.Random(seed)
    tlds = ["com", "net", "org", "ru", "xyz", "info", "top", "cc"]
    out = set()
    while len(out) < n:
        label = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(rnd.randint(3, 20)))
        label = label.strip("-") or "x"
        host = f"{label}.{rnd.choice(tlds)}"
        if rnd.random() < 0.3:
            host = f"cdn{rnd.randint(1, 9)}.{host}"
        out.add(host)
    return [(d, rnd.random() < 0.7) for d in sorted(out)]


def zone_of(names: list[str], serial: int = 5) -> Zone:
    return Zone(INFO, build_snapshot(INFO, serial, names))


def query(rdtype: str, *, key: dns.tsig.Key | None = KEY, serial: int | None = None, name: str = "blocklist.rpz.",
          edns: int = -1, payload: int = 1232) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    if serial is not None:
        q.authority.append(dns.rrset.from_text(name, 0, "IN", "SOA", f"a. b. {serial} 1 1 1 1"))
    if key is not None:
        q.use_tsig(key)
    return q


_IDS = itertools.cycle(range(1, 65536))


def ask(d: Dispatcher, q: dns.message.Message, *, peer: str = "192.0.2.1",
        tcp: bool = True) -> tuple[xfr.Answer, list[bytes]]:
    if isinstance(q.keyring, dns.tsig.Key):
        # A new request each time: the server refuses a signed request sent twice.
        q.id = next(_IDS)
        q.use_tsig(q.keyring, original_id=q.id)
    a = d.handle(q.to_wire(), peer, tcp)
    msgs = [m[2:] if tcp else m for m in a.messages]
    if tcp:
        for m in msgs:
            assert len(m) <= 65535
    return a, msgs


def receive(q: dns.message.Message, msgs: list[bytes], *, base: list[str] | None = None,
            serial: int | None = None) -> tuple[set[str], int]:
    """Apply a transfer as a secondary would; (names in the zone, serial)."""
    zone = dns.versioned.Zone(ORIGIN)
    if base is not None:
        with zone.writer(replacement=True) as txn:
            txn.add("@", dns.rdataset.from_text("IN", "SOA", 60, f"a. b. {serial} 1 1 1 1"))
            for n in base:
                txn.add(n, dns.rdataset.from_text("IN", "CNAME", 60, "."))
    rdtype = q.question[0].rdtype
    inbound = dns.xfr.Inbound(zone, rdtype, serial=serial if rdtype == dns.rdatatype.IXFR else None)
    ctx = None
    done = False
    keyring = q.keyring if q.had_tsig else None
    for wire in msgs:
        r = dns.message.from_wire(wire, keyring=keyring, request_mac=q.mac if q.had_tsig else b"", xfr=True,
                                  origin=ORIGIN, tsig_ctx=ctx, multi=True, one_rr_per_rrset=True)
        ctx = r.tsig_ctx
        assert r.id == q.id
        done = inbound.process_message(r)
    assert done, "the transfer did not end with the SOA"
    names = {n.to_text() for n in zone.nodes if n != dns.name.empty}
    soa = zone.find_rdataset("@", "SOA")[0]
    return names, int(soa.serial)


@pytest.fixture
def dispatcher() -> Dispatcher:
    return Dispatcher(INFO, zone_of(names_for(domains(3000))), Access.from_isps([isp()]))


# --------------------------------------------------------------------------- rendering


def test_axfr_carries_every_published_name_once_between_two_soa_records() -> None:
    names = names_for(domains(4000))
    d = Dispatcher(INFO, zone_of(names, 7), Access.from_isps([isp()]), sign_every=3)
    q = query("AXFR")
    answer, msgs = ask(d, q)
    assert (answer.kind, answer.result, answer.transfer) == ("axfr", "ok", "xfr:axfr")
    assert len(msgs) > 6, "the test needs a transfer long enough for unsigned middle messages"
    got, serial = receive(q, msgs)
    assert serial == 7
    assert got == set(names)
    first = dns.message.from_wire(msgs[0], keyring=KEY, request_mac=q.mac, xfr=True, one_rr_per_rrset=True)
    assert first.answer[0].rdtype == dns.rdatatype.SOA
    assert first.answer[1].rdtype == dns.rdatatype.NS
    assert first.flags & dns.flags.AA


def test_a_transfer_may_leave_up_to_99_messages_unsigned_between_tsigs() -> None:
    d = Dispatcher(INFO, zone_of(names_for(domains(60_000))), Access.from_isps([isp()]), sign_every=100)
    q = query("AXFR")
    _, msgs = ask(d, q)
    assert len(msgs) > 150
    signed = [i for i, m in enumerate(msgs) if struct.unpack("!H", m[10:12])[0] == 1]
    assert signed[0] == 0
    assert signed[-1] == len(msgs) - 1
    assert all(b - a <= 100 for a, b in itertools.pairwise(signed))
    assert len(signed) < len(msgs) / 50


def test_by_default_every_message_is_signed_as_bind_requires() -> None:
    d = Dispatcher(INFO, zone_of(names_for(domains(2000))), Access.from_isps([isp()]))
    q = query("AXFR")
    _, msgs = ask(d, q)
    assert all(struct.unpack("!H", m[10:12])[0] == 1 for m in msgs)
    assert receive(q, msgs)[0]


def test_wildcards_are_compressed_against_their_name() -> None:
    snap = build_snapshot(INFO, 1, ["a-rather-long-name.example", "*.a-rather-long-name.example"])
    body = snap.pieces[0].body
    name_rec = len("a-rather-long-name.example") + 1 + 13
    assert len(body) == name_rec + 15
    assert body[name_rec:name_rec + 3] == b"\x01*\xc0"


def test_names_in_any_order_and_a_wildcard_without_its_name_are_all_served() -> None:
    names = [*names_for(domains(2000)), "*.lonely.example", "zz.example"]
    random.Random(3).shuffle(names)
    snap = build_snapshot(INFO, 1, names)
    assert sorted(snap.names()) == sorted(set(names))
    q = query("AXFR")
    _, msgs = ask(Dispatcher(INFO, Zone(INFO, snap), Access.from_isps([isp()])), q)
    assert receive(q, msgs)[0] == set(names)


def test_names_that_are_not_valid_dns_names_are_left_out_and_reported() -> None:
    bad = ["a" * 64 + ".example", "two..dots.example", "sp ace.example", "ünï.example", "mid.*.example",
           "x" * 250 + ".example", ""]
    report = BuildReport()
    snap = build_snapshot(INFO, 1, ["fine.example", *bad, "*.fine.example"], report)
    assert sorted(snap.names()) == ["*.fine.example", "fine.example"]
    assert sorted(report.skipped) == sorted(bad)


def test_an_empty_version_is_a_valid_zone() -> None:
    d = Dispatcher(INFO, zone_of([]), Access.from_isps([isp()]))
    q = query("AXFR")
    _, msgs = ask(d, q)
    assert receive(q, msgs) == (set(), 5)


def test_the_fast_zone_reader_agrees_with_the_general_one() -> None:
    frags = [rpz.fragment(dom, sub) for dom, sub in domains(500)]
    text = rpz.zone_text(PARAMS, frags, list_name="worst-of", version=9, published_at="t", expires_at="u")
    assert xfr.zone_file_names(text) == rpz.parse_zone_names(text)
    empty = rpz.zone_text(PARAMS, [], list_name="worst-of", version=3, published_at="t", expires_at="u")
    assert xfr.zone_file_names(empty) == (3, [])
    last = text.rindex(" CNAME .\n")
    with pytest.raises(ValueError, match="unexpected zone line"):
        xfr.zone_file_names(text[:last] + " A 192.0.2.1\n" + text[last + len(" CNAME .\n"):])


# --------------------------------------------------------------------------- versions and IXFR


def test_a_new_version_re_renders_only_the_pieces_it_changes() -> None:
    names = names_for(domains(20_000))
    z1 = zone_of(names, 1)
    report = BuildReport()
    z2 = z1.advance(2, [names[10], names[5000]], ["new-one.example", "*.new-one.example"], report)
    assert report.consistent
    assert report.pieces_rendered <= 6  # three touched pieces, each may split in two
    shared = sum(1 for p in z2.snapshot.pieces if any(p is o for o in z1.snapshot.pieces))
    assert shared >= len(z1.snapshot.pieces) - 3
    expected = (set(names) - {names[10], names[5000]}) | {"new-one.example", "*.new-one.example"}
    assert set(z2.snapshot.names()) == expected


def test_ixfr_sends_only_the_condensed_difference(dispatcher: Dispatcher) -> None:
    assert dispatcher.zone is not None
    z5 = dispatcher.zone
    old = list(z5.snapshot.names())
    z6 = z5.advance(6, [old[0], old[1]], ["added-in-6.example"])
    z7 = z6.advance(7, ["added-in-6.example"], ["added-in-7.example", "*.added-in-7.example"])
    dispatcher.zone = z7
    q = query("IXFR", serial=5)
    answer, msgs = ask(dispatcher, q)
    assert (answer.kind, answer.transfer) == ("ixfr", "xfr:ixfr")
    r = dns.message.from_wire(msgs[0], keyring=KEY, request_mac=q.mac, xfr=True, one_rr_per_rrset=True)
    owners = [(rr.name.relativize(ORIGIN).to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in r.answer]
    assert owners == [("@", "SOA"), ("@", "SOA"), (old[0], "CNAME"), (old[1], "CNAME"), ("@", "SOA"),
                      ("added-in-7.example", "CNAME"), ("*.added-in-7.example", "CNAME"), ("@", "SOA")]
    got, serial = receive(q, msgs, base=old, serial=5)
    assert serial == 7
    assert got == set(z7.snapshot.names())


def test_ixfr_from_a_serial_outside_history_is_a_full_transfer(dispatcher: Dispatcher) -> None:
    q = query("IXFR", serial=2)
    answer, msgs = ask(dispatcher, q)
    assert answer.transfer == "xfr:axfr"
    assert dispatcher.zone is not None
    assert receive(q, msgs, base=["stale.example"], serial=2)[0] == set(dispatcher.zone.snapshot.names())


@pytest.mark.parametrize("client_serial", [5, 6, 2**31])
def test_ixfr_from_a_current_or_newer_serial_is_a_single_soa(dispatcher: Dispatcher, client_serial: int) -> None:
    q = query("IXFR", serial=client_serial)
    _, msgs = ask(dispatcher, q)
    assert len(msgs) == 1
    r = dns.message.from_wire(msgs[0], keyring=KEY, request_mac=q.mac)
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.SOA]
    assert r.answer[0][0].serial == 5


def test_serials_compare_as_rfc_1982_says_across_the_wrap() -> None:
    zone = zone_of(["a.example"], 3)
    assert zone.is_current(3)
    assert not zone.is_current(2**32 - 2)  # 2**32-2 is before 3 once the serial wrapped
    assert zone.is_current(4)


def test_udp_ixfr_answers_in_one_message_or_with_the_soa(dispatcher: Dispatcher) -> None:
    assert dispatcher.zone is not None
    z5 = dispatcher.zone
    old = list(z5.snapshot.names())
    dispatcher.zone = z5.advance(6, [old[0]], ["small.example"])
    q = query("IXFR", serial=5, edns=0)
    answer, msgs = ask(dispatcher, q, tcp=False)
    assert answer.transfer == "xfr:ixfr"
    assert len(msgs) == 1
    assert receive(q, msgs, base=old, serial=5)[0] == set(dispatcher.zone.snapshot.names())
    dispatcher.zone = z5.advance(6, old[:200], [])
    q = query("IXFR", serial=5, edns=0)
    _, msgs = ask(dispatcher, q, tcp=False)
    assert len(msgs[0]) <= 1232
    r = dns.message.from_wire(msgs[0], keyring=KEY, request_mac=q.mac)
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.SOA]


def test_history_is_bounded_and_older_serials_get_the_whole_zone() -> None:
    zone = Zone(INFO, build_snapshot(INFO, 1, ["a.example"]), history=3)
    for v in range(2, 8):
        zone = zone.advance(v, [], [f"v{v}.example"])
    assert zone.oldest == 4
    assert zone.difference(4) == (set(), {"v5.example", "v6.example", "v7.example"})
    assert zone.difference(3) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sets(st.tuples(st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9-]{1,8}){0,2}\.(com|net)", fullmatch=True),
                           st.booleans()), max_size=300),
    steps=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
)
def test_incremental_versions_and_ixfr_always_match_a_full_build(
        base: set[tuple[str, bool]], steps: list[tuple[int, int]], seed: int) -> None:
    rnd = random.Random(seed)
    entries = dict(sorted(base))
    zone = Zone(INFO, build_snapshot(INFO, 1, names_for(list(entries.items()))))
    history = [(1, set(zone.snapshot.names()))]
    for version, (n_del, n_add) in enumerate(steps, start=2):
        gone = rnd.sample(sorted(entries), min(n_del, len(entries)))
        before = set(names_for(list(entries.items())))
        for g in gone:
            del entries[g]
        for i in range(n_add):
            entries[f"n{version}x{i}.{rnd.choice(['com', 'net'])}"] = rnd.random() < 0.5
        after = set(names_for(list(entries.items())))
        report = BuildReport()
        zone = zone.advance(version, before - after, after - before, report)
        assert report.consistent
        assert set(zone.snapshot.names()) == after
        full = build_snapshot(INFO, version, names_for(list(entries.items())))
        assert full.records == zone.snapshot.records
        history.append((version, after))
    d = Dispatcher(INFO, zone, Access.from_isps([isp()]))
    for serial, names in history[:-1]:
        q = query("IXFR", serial=serial)
        _, msgs = ask(d, q)
        got, got_serial = receive(q, msgs, base=sorted(names), serial=serial)
        assert got_serial == zone.serial
        assert got == history[-1][1]


# --------------------------------------------------------------------------- access and TSIG


def test_our_tsig_records_carry_the_mac_dnspython_computes() -> None:
    """First message with the request MAC, then chained messages (RFC 8945 5.3.1)."""
    request_mac = bytes(range(32))
    signer = xfr.TsigSigner(KEY, request_mac, 0x1234, now=lambda: 1_800_000_000)
    ctx = None
    for i, wire in enumerate([b"\x12\x34" + bytes(40), b"\x12\x34" + bytes(range(60))]):
        ours = signer.sign(wire)
        template = xfr.tsig_rdata(KEY.algorithm, 1_800_000_000, 0x1234)
        theirs, ctx = dns.tsig.sign(wire, KEY, template, 1_800_000_000, request_mac, ctx, multi=True)
        assert ours == xfr.tsig_record(KEY.name, theirs), f"message {i}"


def _tsig_of(wire: bytes) -> tuple[int, dns.message.Message]:
    r = dns.message.from_wire(wire, keyring=False)
    return r.rcode(), r


def test_a_wrong_secret_is_notauth_badsig_unsigned(dispatcher: Dispatcher) -> None:
    q = query("AXFR", key=dns.tsig.Key("acme.tsig.", OTHER_SECRET, dns.tsig.HMAC_SHA256))
    answer, msgs = ask(dispatcher, q)
    assert (answer.result, answer.reason) == ("notauth", "badsig")
    rcode, r = _tsig_of(msgs[0])
    assert rcode == dns.rcode.NOTAUTH
    assert r.tsig_error == dns.rcode.BADSIG
    assert r.tsig[0].mac == b""
    assert not r.answer


@pytest.mark.parametrize("key", [
    dns.tsig.Key("nobody.tsig.", SECRET, dns.tsig.HMAC_SHA256),
    dns.tsig.Key("acme.tsig.", SECRET, dns.tsig.HMAC_SHA512),
])
def test_an_unknown_key_or_algorithm_is_notauth_badkey(dispatcher: Dispatcher, key: dns.tsig.Key) -> None:
    q = query("AXFR", key=key)
    answer, msgs = ask(dispatcher, q)
    assert (answer.result, answer.reason) == ("notauth", "badkey")
    rcode, r = _tsig_of(msgs[0])
    assert (rcode, r.tsig_error) == (dns.rcode.NOTAUTH, dns.rcode.BADKEY)


def test_a_request_signed_outside_the_fudge_is_notauth_badtime_signed_with_our_time(
        dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    q = query("SOA")
    real = time.time()
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: real - 1000)
        wire = q.to_wire()
    answer = dispatcher.handle(wire, "192.0.2.1", False)
    assert (answer.result, answer.reason) == ("notauth", "badtime")
    resp = next(iter(answer.messages))
    rcode, r = _tsig_of(resp)
    assert (rcode, r.tsig_error) == (dns.rcode.NOTAUTH, dns.rcode.BADTIME)
    rd = r.tsig[0]
    assert rd.time_signed == int(real - 1000)
    server_time = int.from_bytes(rd.other, "big")
    assert abs(server_time - real) < 5
    # The MAC is ours: recompute it over the response without its TSIG.
    unsigned = resp[:10] + struct.pack("!H", struct.unpack("!H", resp[10:12])[0] - 1) + resp[12:resp.rfind(
        KEY.name.to_wire())]
    template = xfr.tsig_rdata(KEY.algorithm, rd.time_signed, rd.original_id, rd.error, rd.other)
    expect, _ = dns.tsig.sign(unsigned, KEY, template, rd.time_signed, q.mac)
    assert rd.mac == expect.mac


def test_without_tsig_a_transfer_is_refused_unless_an_address_only_isp_allows_the_address() -> None:
    zone = zone_of(names_for(domains(100)))
    d = Dispatcher(INFO, zone, Access.from_isps([isp(), isp("resolver", allow_from=["198.51.100.0/24"],
                                                            address_only=True)]))
    q = query("AXFR", key=None)
    answer, msgs = ask(d, q, peer="203.0.113.9")
    assert (answer.result, answer.reason) == ("refused", "no_tsig")
    assert dns.message.from_wire(msgs[0]).rcode() == dns.rcode.REFUSED
    answer, msgs = ask(d, q, peer="198.51.100.7")
    assert answer.result == "ok"
    assert answer.isp is not None
    assert answer.isp.name == "resolver"
    assert receive(q, msgs)[0] == set(zone.snapshot.names())


def test_an_address_acl_applies_on_top_of_a_valid_key_and_the_refusal_is_signed() -> None:
    d = Dispatcher(INFO, zone_of(["a.example"]), Access.from_isps([isp(allow_from=["192.0.2.0/28"])]))
    q = query("AXFR")
    assert ask(d, q, peer="192.0.2.3")[0].result == "ok"
    answer, msgs = ask(d, q, peer="192.0.2.200")
    assert (answer.result, answer.reason) == ("refused", "acl")
    r = dns.message.from_wire(msgs[0], keyring=KEY, request_mac=q.mac)
    assert r.rcode() == dns.rcode.REFUSED


def test_a_signed_transfer_request_is_served_once_but_a_retried_soa_query_is_answered_again() -> None:
    d = Dispatcher(INFO, zone_of(["a.example"]), Access.from_isps([isp()]))
    axfr = query("AXFR").to_wire()
    assert d.handle(axfr, "192.0.2.1", True).result == "ok"
    again = d.handle(axfr, "192.0.2.1", True)
    assert (again.result, again.reason) == ("refused", "replay")
    soa = query("SOA").to_wire()
    for _ in range(2):  # a secondary's UDP retry resends the same bytes
        answer = d.handle(soa, "192.0.2.1", False)
        assert answer.result == "ok"
        assert dns.message.from_wire(next(iter(answer.messages)), keyring=False).answer


def test_the_replay_memory_is_bounded_and_forgets_after_the_window() -> None:
    guard = xfr.ReplayGuard(window=600, limit=3)
    assert all(guard.first_use(bytes([i]), 1000.0) for i in range(3))
    assert not guard.first_use(b"\x00", 1000.0)
    assert guard.first_use(b"\x09", 1001.0)
    assert len(guard.seen) == 3, "the oldest MAC went first"
    assert guard.first_use(b"\x01", 1700.0), "after the window a MAC is forgotten (and its time is BADTIME anyway)"
    assert len(guard.seen) == 1


def test_a_revoked_isps_key_is_refused() -> None:
    d = Dispatcher(INFO, zone_of(["a.example"]), Access.from_isps([isp(active=False)]))
    answer, _ = ask(d, query("AXFR"))
    assert (answer.result, answer.reason) == ("refused", "revoked")


def test_soa_is_answered_to_anyone_over_tcp_and_over_udp_truncated_to_the_query_size(
        dispatcher: Dispatcher) -> None:
    q = query("SOA", key=None)
    answer, msgs = ask(dispatcher, q, peer="203.0.113.50", tcp=True)
    assert answer.result == "ok"
    r = dns.message.from_wire(msgs[0])
    assert r.answer[0][0].serial == 5
    assert r.flags & dns.flags.AA
    answer, msgs = ask(dispatcher, q, peer="203.0.113.50", tcp=False)
    r = dns.message.from_wire(msgs[0])
    assert r.flags & dns.flags.TC
    assert not r.answer
    assert len(msgs[0]) <= len(q.to_wire())


def test_a_signed_soa_query_gets_a_signed_answer(dispatcher: Dispatcher) -> None:
    q = query("SOA")
    _, msgs = ask(dispatcher, q, tcp=False)
    r = dns.message.from_wire(msgs[0], keyring=KEY, request_mac=q.mac)
    assert r.had_tsig


# --------------------------------------------------------------------------- bad and other input


@pytest.mark.parametrize(("make", "kind", "rcode"), [
    (lambda: query("A", key=None), "other", dns.rcode.REFUSED),
    (lambda: query("SOA", key=None, name="example.com."), "soa", dns.rcode.REFUSED),
    (lambda: query("AXFR", name="other.rpz."), "axfr", dns.rcode.REFUSED),
    (lambda: dns.message.make_query("blocklist.rpz.", "SOA", rdclass="CH"), "soa", dns.rcode.REFUSED),
    (lambda: query("IXFR"), "ixfr", dns.rcode.FORMERR),
])
def test_anything_not_served_is_refused_and_bad_queries_get_formerr(
        dispatcher: Dispatcher, make: object, kind: str, rcode: int) -> None:
    q = make()  # type: ignore[operator]
    answer, msgs = ask(dispatcher, q)
    assert answer.kind == kind
    assert dns.message.from_wire(msgs[0], keyring=False).rcode() == rcode


def test_axfr_over_udp_is_formerr(dispatcher: Dispatcher) -> None:
    answer, msgs = ask(dispatcher, query("AXFR", key=None), tcp=False)
    assert answer.result == "formerr"
    assert dns.message.from_wire(msgs[0]).rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS])
def test_other_opcodes_are_not_implemented(dispatcher: Dispatcher, opcode: dns.opcode.Opcode) -> None:
    q = query("SOA", key=None)
    q.set_opcode(opcode)
    answer, msgs = ask(dispatcher, q, tcp=False)
    assert answer.result == "notimp"
    r = dns.message.from_wire(msgs[0])
    assert (r.rcode(), r.opcode()) == (dns.rcode.NOTIMP, opcode)


def test_an_unknown_edns_version_is_badvers(dispatcher: Dispatcher) -> None:
    q = query("SOA", key=None, edns=1)
    _, msgs = ask(dispatcher, q, tcp=False)
    assert dns.message.from_wire(msgs[0]).rcode() == dns.rcode.BADVERS


def test_edns_queries_get_an_opt_record_back(dispatcher: Dispatcher) -> None:
    _, msgs = ask(dispatcher, query("SOA", key=None, edns=0), tcp=False)
    r = dns.message.from_wire(msgs[0])
    assert r.edns == 0
    assert r.payload == 1232


@pytest.mark.parametrize("wire", [
    b"", b"\x00", b"\x12\x34\x00\x00\x00\x01",  # shorter than a header: dropped
    b"\x12\x34\x81\x80" + b"\x00" * 8,  # a response: dropped, never answered
])
def test_packets_without_a_usable_header_or_responses_are_dropped(dispatcher: Dispatcher, wire: bytes) -> None:
    answer = dispatcher.handle(wire, "192.0.2.1", False)
    assert list(answer.messages) == []


@pytest.mark.parametrize("wire", [
    b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",  # question count 1, no question
    b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",  # truncated name
    b"\x12\x34\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x01\x00\x00\x06\x00\x01",  # two questions
    b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x06\x00\x01",  # pointer loop
])
def test_malformed_queries_get_formerr_with_their_id(dispatcher: Dispatcher, wire: bytes) -> None:
    answer = dispatcher.handle(wire, "192.0.2.1", False)
    assert answer.result == "formerr"
    (msg,) = list(answer.messages)
    assert msg[:2] == b"\x12\x34"
    assert msg[3] & 0x0F == dns.rcode.FORMERR


def test_an_internal_error_is_servfail_with_the_error_kept_for_the_log() -> None:
    class Broken(Zone):
        def axfr_bodies(self) -> list[tuple[bytes, int]]:
            raise RuntimeError("a bug")

    snap = build_snapshot(INFO, 1, ["a.example"])
    d = Dispatcher(INFO, Broken(INFO, snap), Access.from_isps([isp()]))
    answer, msgs = ask(d, query("AXFR"))
    assert answer.result == "servfail"
    assert isinstance(answer.error, RuntimeError)
    assert dns.message.from_wire(msgs[0], keyring=False).rcode() == dns.rcode.SERVFAIL


def test_before_the_first_publication_queries_get_servfail() -> None:
    d = Dispatcher(INFO, None, Access.from_isps([isp()]))
    answer, _ = ask(d, query("SOA", key=None), tcp=False)
    assert (answer.result, answer.reason) == ("servfail", "no_version")


@st.composite
def mutated(draw: st.DrawFn, wire: bytes) -> bytes:
    """A valid packet with a few bytes changed, cut, inserted, or a count rewritten."""
    b = bytearray(wire)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "count"]))
        if op == "flip" and b:
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        elif op == "cut" and b:
            del b[draw(st.integers(0, len(b) - 1)):]
        elif op == "insert":
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(max_size=8))
        elif op == "count" and len(b) >= 12:
            i = draw(st.sampled_from([4, 6, 8, 10]))
            b[i:i + 2] = struct.pack("!H", draw(st.integers(0, 65535)))
    return bytes(b)


SEEDS = [query("AXFR").to_wire(), query("IXFR", serial=3).to_wire(), query("SOA", key=None, edns=0).to_wire()]


@settings(max_examples=400, deadline=None)
@given(packet=st.one_of(st.binary(max_size=600), *[mutated(w) for w in SEEDS]), tcp=st.booleans())
def test_random_and_mutated_packets_never_break_the_dispatcher(packet: bytes, tcp: bool) -> None:
    d = Dispatcher(INFO, zone_of(["a.example", "*.a.example"]), Access.from_isps([isp()]))
    answer = d.handle(packet, "192.0.2.1", tcp)
    assert answer.result != "servfail", answer.error
    for m in answer.messages:
        wire = m[2:] if tcp else m
        assert wire[:2] == packet[:2]
        assert wire[2] & 0x80
    q = query("SOA", key=None)
    _, msgs = ask(d, q, tcp=True)
    assert dns.message.from_wire(msgs[0]).answer[0][0].serial == 5
