"""What the served zones contain: the base and overlay split, ZONEMD and the canary.

Real publications in a real Redis, the transfer server on a real socket,
transfers read with dnspython's inbound XFR (the way a secondary applies
them) and checked with ``Zone.verify_digest()`` and with the stock
``ldns-verify-zone``.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.versioned
import dns.xfr
import dns.zone
import pytest

from app.clock import FakeClock
from app.config import Settings
from app.core import Core
from app.embedded import free_port
from app.rpz import FoldPolicy, Layout, next_layout
from tests.conftest import Personas, publish, require_binary
from tests.test_xfr_server import listed, soa_serial, wait_for
from workers.xfrd import ServerThread

ZONE = "blocklist.rpz."
OVERLAY = "overlay.blocklist.rpz."
GRACE = 30


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, rpz_fold_changes=4, rpz_fold_age=10_000, rpz_fold_grace=GRACE)


@pytest.fixture
def dns_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None,
                   # The test, the resolvers and the transfers all come from 127.0.0.1.
                   dns_queries_per_second=10_000.0, dns_query_burst=10_000, notify_retries=0)


@pytest.fixture
def resolver(core: Core, personas: Personas) -> dict[str, Any]:
    """An ISP allowed by address, so that transfers need no TSIG and two
    servers can be given the very same request bytes."""
    return core.isps.add(personas.ada.actor, "resolver", allow_from=["127.0.0.1/32"], address_only=True)


def serial_of(port: int, zone: str) -> int | None:
    try:
        r, _ = dns.query.udp_with_fallback(dns.message.make_query(zone, "SOA"), "127.0.0.1", port=port, timeout=1)
    except (dns.exception.Timeout, OSError, EOFError):
        return None
    return int(r.answer[0][0].serial) if r.answer else None


def transfer(port: int, zone: dns.versioned.Zone) -> str:
    """AXFR into an empty zone, IXFR into one that has a version: as a secondary does."""
    query, serial = dns.xfr.make_query(zone)
    dns.query.inbound_xfr("127.0.0.1", zone, query, port=port, timeout=5)
    return "ixfr" if serial is not None else "axfr"


def raw_transfer(port: int, wire: bytes) -> bytes:
    """Every byte a server sends back to one TCP request."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        s.settimeout(1.0)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
    return out


def names_of(zone: dns.zone.Zone) -> dict[str, str]:
    """Owner (relative) -> CNAME target of the zone's CNAME records."""
    out = {}
    for name, rdataset in zone.iterate_rdatasets(dns.rdatatype.CNAME):
        out[name.relativize(zone.origin).to_text()] = rdataset[0].target.to_text()
    return out


def churn(core: Core, personas: Personas, clock: FakeClock, rounds: int) -> list[int]:
    """Rounds of one approval and one delisting, the clock moving 0.6 grace a round."""
    ids = listed(core, personas, {f"seed{i}.example": i % 2 == 0 for i in range(rounds + 2)})
    versions = [publish(core).version]
    for r in range(rounds):
        listed(core, personas, {f"round{r}.example": r % 2 == 0})
        core.curation.act(personas.bruno.actor, ids[f"seed{r}.example"], "delist", "gone")
        clock.advance(GRACE * 0.6)
        versions.append(publish(core).version)
    return versions


# --------------------------------------------------------------------------- layout


def test_a_fold_announces_the_new_base_switches_to_it_and_only_then_drops_the_old_one() -> None:
    policy = FoldPolicy(changes=3, age=1000, grace=10, span=50)
    steps = [next_layout(None, 1, 0.0, 5, False, policy)]
    for v, t in ((2, 1.0), (3, 2.0), (4, 5.0), (5, 16.0), (6, 20.0), (7, 30.0)):
        steps.append(next_layout(steps[-1], v, t, 1, True, policy))
    assert [(s.base, s.covers, s.phase) for s in steps] == [
        (1, (1,), "steady"),
        (1, (1,), "steady"),
        (1, (1,), "steady"),
        (1, (1, 4), "announced"),  # three changes: the overlay now also covers version 4
        (4, (1, 4), "switched"),  # a grace later the base zone holds version 4
        (4, (1, 4), "switched"),  # not a grace yet: the overlay still covers version 1
        (4, (4,), "steady"),
    ]


def test_a_version_without_a_delta_or_with_the_overlay_off_is_its_own_base() -> None:
    policy = FoldPolicy(changes=3, age=1000, grace=10, span=50)
    announced = Layout(1, (1, 4), 5.0, 0)
    assert next_layout(announced, 5, 6.0, 1, False, policy) == Layout(5, (5,), 6.0, 0, 5)
    assert next_layout(announced, 5, 6.0, 1, True, replace(policy, grace=0)) == Layout(5, (5,), 6.0, 0, 5)


def test_a_damaged_layout_is_refused_not_served() -> None:
    with pytest.raises(ValueError, match="inconsistent zone layout"):
        Layout.from_json({"base": 9, "covers": [3], "since": 0}, 9)
    with pytest.raises(ValueError, match="inconsistent zone layout"):
        Layout.from_json({"base": 3, "covers": [3, 12], "since": 0}, 9)


# --------------------------------------------------------------------------- ZONEMD


def test_every_version_of_both_zones_verifies_by_zonemd_after_axfr_and_after_ixfr(
        dns_settings: Settings, core: Core, personas: Personas, clock: FakeClock, resolver: dict[str, Any]) -> None:
    with ServerThread(dns_settings, core.store) as xfrd:
        base = dns.versioned.Zone(ZONE)
        overlay = dns.versioned.Zone(OVERLAY)
        ids = listed(core, personas, {f"seed{i}.example": i % 2 == 0 for i in range(14)})
        kinds: dict[str, set[str]] = {ZONE: set(), OVERLAY: set()}
        bases = set()
        base_serials: list[int] = []
        for r in range(12):
            if r:
                listed(core, personas, {f"round{r}.example": r % 2 == 0})
                core.curation.act(personas.bruno.actor, ids[f"seed{r}.example"], "delist", "gone")
                clock.advance(GRACE * 0.6)
            version = publish(core).version
            wait_for(lambda v=version: serial_of(xfrd.port, OVERLAY) == v)
            for zone in (base, overlay):
                kinds[zone.origin.to_text()].add(transfer(xfrd.port, zone))
                zone.verify_digest()  # raises when the digest does not match
                fresh = dns.versioned.Zone(zone.origin)
                transfer(xfrd.port, fresh)
                fresh.verify_digest()
                assert names_of(fresh) == names_of(zone), "IXFR and AXFR lead to the same zone"
            bases.add(base.get_soa().serial)
            base_serials.append(base.get_soa().serial)
            txt = overlay.get_rdataset("version.canary", "TXT")
            assert txt is not None
            assert txt[0].strings == (str(version).encode(),)
            # The overlay and the base together say exactly what this version lists.
            over, under = names_of(overlay), names_of(base)
            for name in [f"seed{i}.example" for i in range(14)] + [f"round{i}.example" for i in range(1, r + 1)]:
                effective = over.get(name, under.get(name))
                expect_listed = name.startswith("round") or not 1 <= int(name[4:].split(".")[0]) <= r
                assert (effective == ".") == expect_listed, (version, name, effective)
    assert kinds[ZONE] == {"axfr", "ixfr"} and kinds[OVERLAY] == {"axfr", "ixfr"}
    assert len(bases) >= 3, f"the base moved: {bases}"
    assert base_serials == sorted(base_serials), "the base zone's serial only goes up"


def _axfr_text(port: int, zone: str) -> str:
    z = dns.zone.Zone(zone, relativize=False)
    dns.query.inbound_xfr("127.0.0.1", z, port=port, timeout=5)
    return z.to_text(relativize=False)


def test_ldns_verify_zone_accepts_both_zones_and_refuses_either_altered_by_one_record(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas, clock: FakeClock,
        resolver: dict[str, Any]) -> None:
    ldns = require_binary("ldns-verify-zone")
    churn(core, personas, clock, 3)
    with ServerThread(dns_settings, core.store) as xfrd:
        latest = core.publisher.latest()
        assert latest is not None
        wait_for(lambda: serial_of(xfrd.port, OVERLAY) == int(latest["version"]))
        for zone in (ZONE, OVERLAY):
            text = _axfr_text(xfrd.port, zone)
            good = tmp_path / f"{zone}zone"
            good.write_text(text)
            ok = subprocess.run([ldns, "-Z", str(good)], capture_output=True, text=True, check=False)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert "ZONEMD" in text
            # One listed name quietly dropped, as a tampering middlebox or a bad copy would.
            lines = text.splitlines()
            victim = next(i for i, line in enumerate(lines) if "CNAME" in line and "canary" not in line)
            bad = tmp_path / f"{zone}altered"
            bad.write_text("\n".join(lines[:victim] + lines[victim + 1:]) + "\n")
            refused = subprocess.run([ldns, "-Z", str(bad)], capture_output=True, text=True, check=False)
            assert refused.returncode != 0, refused.stdout
            assert "ZONEMD" in refused.stdout + refused.stderr


# --------------------------------------------------------------------------- byte-identical hosts


def test_two_transfer_servers_send_the_same_bytes_for_both_zones_even_one_started_later(
        dns_settings: Settings, core: Core, personas: Personas, clock: FakeClock, resolver: dict[str, Any]) -> None:
    versions = churn(core, personas, clock, 2)
    other = replace(dns_settings, dns_listen=("127.0.0.1", free_port()))
    with ServerThread(dns_settings, core.store) as a:
        wait_for(lambda: serial_of(a.port, OVERLAY) == versions[-1])
        # Versions published while server a runs, then b starts from scratch.
        more = churn_more(core, personas, clock, 5)
        wait_for(lambda: serial_of(a.port, OVERLAY) == more[-1])
        with ServerThread(other, core.store) as b:
            wait_for(lambda: serial_of(b.port, OVERLAY) == more[-1])
            base_serial = soa_serial(a.port)
            assert base_serial == soa_serial(b.port)
            assert base_serial is not None and base_serial > versions[0], "a fold happened"
            compared = 0
            for zone, serials in ((ZONE, [None, versions[0], *more[:-1]]), (OVERLAY, [None, *more[:-1]])):
                for serial in serials:
                    q = dns.message.make_query(zone, "AXFR" if serial is None else "IXFR")
                    if serial is not None:
                        q.authority.append(dns.rrset.from_text(
                            zone, 60, "IN", "SOA", f"localhost. hostmaster.localhost. {serial} 1 1 1 1"))
                    q.id = 4242
                    wire = q.to_wire()
                    got_a, got_b = raw_transfer(a.port, wire), raw_transfer(b.port, wire)
                    assert got_a, (zone, serial)
                    assert got_a == got_b, f"{zone} from {serial}: the servers differ"
                    compared += 1
    assert compared > 8


def churn_more(core: Core, personas: Personas, clock: FakeClock, rounds: int) -> list[int]:
    out = []
    for r in range(rounds):
        listed(core, personas, {f"later{r}.example": True})
        clock.advance(GRACE * 0.6)
        out.append(publish(core).version)
    return out


def test_the_zone_file_in_the_feed_carries_the_canary_and_loads_in_named_checkzone(
        tmp_path: Path, core: Core, personas: Personas) -> None:
    listed(core, personas, {"csam-forum.example": True, "version.canary": True})
    version = publish(core).version
    latest = core.publisher.latest()
    assert latest is not None
    text = core.artifacts.read(latest["rpz"]["path"]).decode()
    path = tmp_path / "blocklist.rpz.zone"
    path.write_text(text)
    out = subprocess.run([require_binary("named-checkzone"), "-i", "full", ZONE, str(path)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    zone = dns.zone.from_text(text, ZONE, relativize=True)
    txt = zone.get_rdataset("version.canary", "TXT")
    assert txt is not None and txt[0].strings == (str(version).encode(),)
    assert zone.get_rdataset("version.canary", "CNAME") is None, "an entry cannot take the canary's name"
    assert names_of(zone)["blocked.canary"] == "."
    assert names_of(zone)["*.csam-forum.example"] == "."


def test_a_quiet_list_still_gets_its_base_moved_and_then_publishing_stops(
        core: Core, personas: Personas, clock: FakeClock) -> None:
    ids = listed(core, personas, {"csam-forum.example": True})
    v1 = publish(core).version
    core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "gone")
    v2 = publish(core).version
    assert core.publisher.publish().status == "unchanged", "nothing due yet"
    clock.advance(10_000)  # the fold age
    steps = []
    for _ in range(3):
        outcome = core.publisher.publish()
        assert outcome.status == "published", outcome
        latest = core.publisher.latest()
        assert latest is not None
        steps.append(Layout.from_json(latest["zones"], int(latest["version"])))
        clock.advance(GRACE)
    assert [(s.base, s.covers, s.phase) for s in steps] == [
        (v1, (v1, v2 + 1), "announced"), (v2 + 1, (v1, v2 + 1), "switched"), (v2 + 1, (v2 + 1,), "steady")]
    assert core.publisher.publish().status == "unchanged", "the fold is over: no more versions"
    meta = core.publisher.version_meta(int(latest["version"]))
    assert meta is not None
    assert meta["changes"] == {"added": 0, "removed": 0, "changed": 0}
    assert meta["count"] == 0


def test_the_layout_is_kept_in_the_version_and_latest_records_of_delta_only_versions_and_through_compaction(
        core: Core, personas: Personas, clock: FakeClock, settings: Settings) -> None:
    # Every list counts as large: versions are delta-only until compacted.
    core.settings = replace(settings, compact_small_bytes=0, compact_ratio=100.0, compact_age=10**9)
    core.publisher.settings = core.settings
    listed(core, personas, {f"seed{i}.example": True for i in range(3)})
    v1 = publish(core).version
    for r in range(5):  # five names changed: past rpz_fold_changes, a fold is announced
        listed(core, personas, {f"round{r}.example": True})
        clock.advance(1)
        publish(core, compact=False)
    latest = core.publisher.latest()
    assert latest is not None
    version = int(latest["version"])
    record = core.publisher.record(version)
    assert record is not None and not record.has_full_files, "a delta-only version"
    layout = Layout.from_json(latest["zones"], version)
    assert layout.phase == "announced" and layout.base == v1
    assert record.zones == latest["zones"]
    core.settings = core.publisher.settings = replace(core.settings, compact_ratio=0.0)  # compaction due now
    assert core.publisher.compact().status == "compacted"
    compacted = core.publisher.record(version)
    assert compacted is not None and compacted.has_full_files
    assert compacted.zones == record.zones
    after = core.publisher.latest()
    assert after is not None and after["base"] == version and after["zones"] == latest["zones"]
    # The fold goes on from the stored layout: a grace later the base switches.
    clock.advance(GRACE)
    assert core.publisher.publish().status == "published"
    latest = core.publisher.latest()
    assert latest is not None
    assert Layout.from_json(latest["zones"], int(latest["version"])).phase == "switched"


def test_publications_faster_than_the_grace_force_fold_steps_while_the_needed_deltas_are_kept() -> None:
    policy = FoldPolicy(changes=10**6, age=10**6, grace=300, span=100)
    layouts = [next_layout(None, 1, 0.0, 1, False, policy)]
    for v in range(2, 400):  # one publication a second: no grace ever passes
        layouts.append(next_layout(layouts[-1], v, float(v), 1, True, policy))
    moves = [(v, lay.phase) for v, (before, lay) in enumerate(pairwise(layouts), start=2)
             if lay.phase != before.phase]
    assert moves[:4] == [(41, "announced"), (61, "switched"), (81, "steady"), (82, "announced")]
    # A new base is served 20 versions after the overlay covers it, and the
    # old one forgotten 20 versions after that.
    assert all(b - a >= 20 for (a, _), (b, phase) in pairwise(moves) if phase != "announced")
    assert max(v - lay.covers[0] for v, lay in enumerate(layouts, start=1)) < 90, "the deltas it needs are kept"


def test_unbound_loads_a_served_zone_with_zonemd_check_and_refuses_an_altered_copy(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas, clock: FakeClock,
        resolver: dict[str, Any]) -> None:
    unbound, checkconf = require_binary("unbound"), require_binary("unbound-checkconf")
    churn(core, personas, clock, 2)
    latest = core.publisher.latest()
    assert latest is not None
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: serial_of(xfrd.port, OVERLAY) == int(latest["version"]))
        text = _axfr_text(xfrd.port, OVERLAY)
    lines = text.splitlines()
    victim = next(i for i, line in enumerate(lines) if "CNAME" in line and "canary" not in line)
    altered = "\n".join(lines[:victim] + lines[victim + 1:]) + "\n"
    for name, content, loads in (("good", text, True), ("altered", altered, False)):
        d = tmp_path / name
        d.mkdir()
        (d / "zone").write_text(content)
        port = free_port()
        conf = d / "unbound.conf"
        conf.write_text(f"""
server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    chroot: ""
    username: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    access-control: 127.0.0.0/8 allow
auth-zone:
    name: "{OVERLAY}"
    zonefile: "{d}/zone"
    zonemd-check: yes
    zonemd-reject-absence: yes
    for-upstream: yes
    for-downstream: yes
remote-control:
    control-enable: no
""")
        check = subprocess.run([checkconf, str(conf)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        log = d / "unbound.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([unbound, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
            try:
                def answer(port: int = port) -> dns.message.Message | None:
                    try:
                        return dns.query.udp(dns.message.make_query(f"version.canary.{OVERLAY}", "TXT"),
                                             "127.0.0.1", port=port, timeout=0.5)
                    except (dns.exception.Timeout, OSError):
                        return None
                r = wait_for(answer, timeout=10, step=0.1)
            finally:
                proc.terminate()
                proc.wait(10)
        served = bool(r.answer)
        assert served == loads, (name, r, log.read_text()[-1500:])
        if not loads:
            assert "ZONEMD" in log.read_text(), log.read_text()[-1500:]


def test_a_knot_secondary_with_zonemd_verify_takes_every_version_of_both_zones_by_axfr_then_ixfr(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas, clock: FakeClock) -> None:
    knotd = require_binary("knotd")
    port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{port}"])
    ids = listed(core, personas, {f"seed{i}.example": i % 2 == 0 for i in range(8)})
    v1 = publish(core).version
    with ServerThread(replace(dns_settings, notify_retries=6, notify_timeout=0.5), core.store) as xfrd:
        zones = "".join(f"""
  - domain: {zone}
    master: primary
    acl: [notify]
    zonemd-verify: on
""" for zone in (OVERLAY, ZONE))
        conf = tmp_path / "knot.conf"
        conf.write_text(f"""
server:
    rundir: "{tmp_path}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{tmp_path}/db"
key:
  - id: {acme['tsig_key_name']}
    algorithm: hmac-sha256
    secret: {acme['tsig_secret']}
remote:
  - id: primary
    address: 127.0.0.1@{xfrd.port}
    key: {acme['tsig_key_name']}
acl:
  - id: notify
    address: 127.0.0.1
    key: {acme['tsig_key_name']}
    action: notify
template:
  - id: default
    storage: "{tmp_path}/zones"
zone:{zones}""")
        (tmp_path / "zones").mkdir()
        log = tmp_path / "knot.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([knotd, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
            try:
                def knot_serial(zone: str) -> int | None:
                    return serial_of(port, zone)

                wait_for(lambda: knot_serial(OVERLAY) == v1 and knot_serial(ZONE) == v1, timeout=20, step=0.1)
                version = v1
                for r in range(6):
                    listed(core, personas, {f"round{r}.example": True})
                    core.curation.act(personas.bruno.actor, ids[f"seed{r}.example"], "delist", "gone")
                    clock.advance(GRACE * 0.6)
                    version = publish(core).version
                    wait_for(lambda v=version: knot_serial(OVERLAY) == v, timeout=10, step=0.05)
                base = soa_serial(xfrd.port)
                wait_for(lambda: knot_serial(ZONE) == base, timeout=10, step=0.05)
            finally:
                proc.terminate()
                proc.wait(10)
    text = log.read_text()
    assert base is not None and base > v1, "a fold moved the base"
    ixfrs = re.findall(r"\[(\S+)\] IXFR, incoming, remote \S+, finished", text)
    assert {OVERLAY, ZONE} <= set(ixfrs), text[-3000:]
    checked = re.findall(r"\[(\S+)\] ZONEMD, verification successful", text)
    assert checked.count(OVERLAY) >= 7, "the first version and every later one, each verified"
    assert checked.count(ZONE) >= 2
    assert not re.search(r"ZONEMD, verification failed|ZONEMD.*(mismatch|invalid)", text), text[-3000:]
