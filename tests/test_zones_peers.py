"""The two policy zones at real resolvers configured from deploy/isp/.

BIND 9 lists the overlay first and the base after it, as the ISP guide
says; these tests check what a user of the ISP would notice: a newly
approved name is blocked within seconds and a delisted one answered
within seconds, whatever the base zone is doing, and through a run of
changes and folds a listed name is never answered and a delisted one never
blocked again. The canary answers with the version in force.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.zone
import pytest

from app.clock import FakeClock
from app.config import Settings
from app.core import Core
from app.embedded import free_port
from tests.conftest import Personas, publish, require_binary
from tests.test_publishing import worker_env
from tests.test_xfr_peers import DEPLOY, OVERLAY, Peer, answered_not_blocked, blocked, named, render, unbound
from tests.test_xfr_server import bulk_listed, listed, soa_serial, wait_for
from workers.xfrd import ServerThread

GRACE = 30


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The overlay on, folds after a few changes, each step served GRACE seconds (of the fake clock)."""
    return replace(settings, rpz_fold_changes=6, rpz_fold_age=10_000, rpz_fold_grace=GRACE)


@pytest.fixture
def dns_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None,
                   # The test, the resolvers and the transfers all come from 127.0.0.1.
                   dns_queries_per_second=10_000.0, dns_query_burst=10_000,
                   notify_timeout=0.5, notify_retries=6)


def overlay_serial(port: int) -> int | None:
    try:
        # Unsigned, over UDP, the answer is truncated: the client retries over TCP.
        r, _ = dns.query.udp_with_fallback(dns.message.make_query(OVERLAY, "SOA"), "127.0.0.1", port=port,
                                           timeout=1)
    except (dns.exception.Timeout, OSError, EOFError):
        return None
    return int(r.answer[0][0].serial) if r.answer else None


def canary(peer: Peer) -> str | None:
    r = peer.ask("version.canary", 1.0, "TXT")
    if r is None or not r.answer:
        return None
    return b"".join(r.answer[0][0].strings).decode()


ENTRIES = {"csam-forum.example": True, "exact-only.example": False}
FILLER = {f"filler{i:05d}.example": i % 2 == 0 for i in range(300)}


def test_bind_applies_an_approval_and_a_delisting_within_seconds_through_the_overlay(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, ENTRIES)
    bulk_listed(core, personas, FILLER)
    v1 = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd, named(tmp_path, xfrd.port, acme, port=named_port) as bind:
        wait_for(lambda: blocked(bind.ask("csam-forum.example")), timeout=20, step=0.1)
        assert answered_not_blocked(bind.ask("new-site.example"))

        listed(core, personas, {"new-site.example": True})
        t0 = time.monotonic()
        v2 = publish(core).version
        wait_for(lambda: blocked(bind.ask("www.new-site.example", 0.5)), timeout=10, step=0.02)
        approval = time.monotonic() - t0

        core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
        t0 = time.monotonic()
        v3 = publish(core).version
        wait_for(lambda: answered_not_blocked(bind.ask("csam-forum.example", 0.5)), timeout=10, step=0.02)
        delisting = time.monotonic() - t0

        assert blocked(bind.ask("exact-only.example")), "the base still applies under the overlay"
        assert blocked(bind.ask("new-site.example"))
        assert answered_not_blocked(bind.ask("www.csam-forum.example")), "the delisting covers the subdomains"
        # The base zone did not move: the overlay carried both changes.
        assert soa_serial(xfrd.port) == v1
        assert overlay_serial(xfrd.port) == v3
        wait_for(lambda: canary(bind) == str(v3), timeout=5)
        assert blocked(bind.ask("blocked.canary"))
        log = bind.log
    assert v2 == v1 + 1
    assert approval < 2.0, approval
    assert delisting < 2.0, delisting
    assert re.search(rf"zone {re.escape(OVERLAY.rstrip('.'))}/IN: notify from 127\.0\.0\.1#\d+: serial {v3}", log), \
        log[-3000:]


def test_with_the_default_worker_an_approval_and_a_delisting_reach_bind_within_seconds(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas,
        processes: list[subprocess.Popen[bytes]]) -> None:
    """No "publish now": the running worker, with its default settings, publishes
    the decision, and BIND (configured from deploy/isp/) follows NOTIFY."""
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, ENTRIES)
    bulk_listed(core, personas, FILLER)
    publish(core)
    log = tmp_path / "worker.log"
    # The safety-net interval is an hour: only the change follower can publish in time.
    processes.append(subprocess.Popen([sys.executable, "-m", "app.cli", "worker"],
                                      env=worker_env(dns_settings, BLOCKLIST_PUBLISH_INTERVAL="3600"),
                                      stdout=log.open("wb"), stderr=subprocess.STDOUT))
    with ServerThread(dns_settings, core.store) as xfrd, named(tmp_path, xfrd.port, acme, port=named_port) as bind:
        wait_for(lambda: blocked(bind.ask("csam-forum.example")), timeout=20, step=0.1)
        wait_for(lambda: bool(core.store.health.workers_alive()), timeout=30, step=0.1)
        time.sleep(1)  # the worker's first steps (its start-up publication check) are done

        listed(core, personas, {"new-site.example": True})
        t0 = time.monotonic()
        wait_for(lambda: blocked(bind.ask("www.new-site.example", 0.5)), timeout=15, step=0.02)
        approval = time.monotonic() - t0

        core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
        t0 = time.monotonic()
        wait_for(lambda: answered_not_blocked(bind.ask("csam-forum.example", 0.5)), timeout=15, step=0.02)
        delisting = time.monotonic() - t0
    # Within a few seconds (about 1 s here: 0.5 s of quiet, the publication, NOTIFY and IXFR).
    assert approval < 3.0, (approval, log.read_text()[-2000:])
    assert delisting < 3.0, (delisting, log.read_text()[-2000:])


def test_with_the_isps_stop_page_a_delisted_name_is_answered_and_a_new_one_blocked(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, ENTRIES)
    publish(core)
    stop_zone = tmp_path / "isp.example.db"
    stop_zone.write_text("$TTL 60\n@ SOA ns.isp.example. hostmaster.isp.example. 1 60 60 600 60\n"
                         "@ NS ns.isp.example.\nns A 192.0.2.53\nstop A 192.0.2.80\n")
    extra = f'zone "isp.example" {{ type primary; file "{stop_zone}"; }};'
    with ServerThread(dns_settings, core.store) as xfrd, \
            named(tmp_path, xfrd.port, acme, policy="cname stop.isp.example", extra=extra, port=named_port) as bind:
        wait_for(lambda: stop_page(bind.ask("csam-forum.example")), timeout=20, step=0.1)
        core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
        listed(core, personas, {"new-site.example": False})
        v2 = publish(core).version
        wait_for(lambda: overlay_serial(xfrd.port) == v2)
        # Added since the last fold: the overlay's own NXDOMAIN (it is listed "policy given").
        wait_for(lambda: blocked(bind.ask("new-site.example", 0.5)), timeout=10, step=0.05)
        assert stop_page(bind.ask("exact-only.example")), "the base zone takes the ISP's policy"
        r = bind.ask("csam-forum.example")
        assert not stop_page(r), "a delisted name must not land on the stop page"
        assert answered_not_blocked(r)
        assert canary(bind) == str(v2), "the canary is local data, never the stop page"


def stop_page(r: dns.message.Message | None) -> bool:
    return r is not None and any(rr.rdtype == dns.rdatatype.A and rr[0].to_text() == "192.0.2.80" for rr in r.answer)


class Watch(threading.Thread):
    """Asks BIND about every tracked name, over and over, and records each
    name whose answer goes back: a newly listed name answered again after
    it was blocked, or a delisted name blocked again after it was answered."""

    def __init__(self, peer: Peer, added: list[str], removed: list[str], kept: list[str]) -> None:
        super().__init__(daemon=True)
        self.peer = peer
        self.added, self.removed, self.kept = added, removed, kept
        self.seen_blocked: set[str] = set()
        self.seen_answered: set[str] = set()
        self.violations: list[str] = []
        self.queries = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for name in [*self.kept, *self.added, *self.removed]:
                r = self.peer.ask(name, 0.5)
                if r is None:
                    continue
                self.queries += 1
                if blocked(r):
                    if name in self.removed and name in self.seen_answered:
                        self.violations.append(f"{name} blocked again after its delisting took effect")
                    self.seen_blocked.add(name)
                elif answered_not_blocked(r):
                    if name in self.kept or (name in self.added and name in self.seen_blocked):
                        self.violations.append(f"{name} answered while listed")
                    self.seen_answered.add(name)


def test_through_changes_and_folds_a_listed_name_is_never_answered_nor_a_delisted_one_blocked_again(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas, clock: FakeClock) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    kept = [f"kept{i}.example" for i in range(4)]
    doomed = [f"doomed{i}.example" for i in range(12)]
    ids = listed(core, personas, dict.fromkeys(kept + doomed, False))
    fresh = [f"fresh{i}.example" for i in range(24)]
    v1 = publish(core).version
    bases = {v1}
    with ServerThread(dns_settings, core.store) as xfrd, named(tmp_path, xfrd.port, acme, port=named_port) as bind:
        wait_for(lambda: canary(bind) == str(v1), timeout=20, step=0.1)
        watch = Watch(bind, fresh, doomed, kept)
        watch.start()
        try:
            version = v1
            for round_ in range(12):
                listed(core, personas, dict.fromkeys(fresh[2 * round_:2 * round_ + 2], False))
                core.curation.act(personas.bruno.actor, ids[doomed[round_]], "delist", "gone")
                clock.advance(GRACE * 0.6)
                version = publish(core).version
                wait_for(lambda v=version: overlay_serial(xfrd.port) == v)
                bases.add(soa_serial(xfrd.port) or 0)
                time.sleep(0.25)
            wait_for(lambda: canary(bind) == str(version), timeout=10, step=0.05)
            time.sleep(0.5)
        finally:
            watch.stopping.set()
            watch.join(5)
        final = {n: bind.ask(n) for n in kept + fresh + doomed}
        log = bind.log
    assert not watch.violations, watch.violations[:10]
    assert watch.queries > 500, watch.queries
    assert all(blocked(final[n]) for n in kept + fresh), "every listed name is blocked at the end"
    assert all(answered_not_blocked(final[n]) for n in doomed), "every delisted name is answered at the end"
    # The base moved several times while this ran, and BIND followed it.
    assert len(bases - {v1, 0}) >= 2, bases
    base_transfers = re.findall(r"zone blocklist\.rpz/IN: transferred serial (\d+)", log)
    assert len(set(base_transfers)) >= 3, base_transfers


def test_unbound_answers_the_canary_with_the_version_in_force_and_blocks_the_blocked_canary(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    ub_port = free_port()
    core.isps.add(personas.ada.actor, "resolver", allow_from=["127.0.0.1/32"], address_only=True,
                  notify=[f"127.0.0.1:{ub_port}"])
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: xfrd.server is not None and xfrd.server.access.address_only)
        with unbound(tmp_path, xfrd.port, port=ub_port) as ub:
            wait_for(lambda: canary(ub) == str(v1), timeout=20, step=0.1)
            r = ub.ask("blocked.canary")
            assert r is not None
            assert r.rcode() == dns.rcode.NXDOMAIN
            core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
            v2 = publish(core).version
            wait_for(lambda: canary(ub) == str(v2), timeout=10, step=0.05)
            # Through the overlay: the delisting is in force, the base is still version 1.
            # Unanswered offline (recursion fails slowly), but passed by the overlay, not blocked.
            ub.ask("csam-forum.example", 0.3)
            wait_for(lambda: "[blocklist-overlay] csam-forum.example. rpz-passthru" in ub.log, timeout=5)
            assert soa_serial(xfrd.port) == v1
            r = ub.ask("exact-only.example")
            assert r is not None
            assert r.rcode() == dns.rcode.NXDOMAIN
            log = ub.log
    assert "rpz: applied [blocklist] exact-only.example. rpz-nxdomain" in log, log[-2000:]



def test_bind_answers_the_canary_with_the_version_in_force_and_blocks_the_blocked_canary(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd, named(tmp_path, xfrd.port, acme, port=named_port) as bind:
        wait_for(lambda: canary(bind) == str(v1), timeout=20, step=0.1)
        assert blocked(bind.ask("blocked.canary"))
        assert blocked(bind.ask("blocked.canary", rdtype="TXT"))
        core.curation.act(personas.bruno.actor, ids["exact-only.example"], "delist", "taken down")
        v2 = publish(core).version
        wait_for(lambda: canary(bind) == str(v2), timeout=5, step=0.05)
        assert blocked(bind.ask("blocked.canary"))


def test_an_isp_listing_only_the_base_zone_stays_correct_and_catches_up_at_each_fold(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas, clock: FakeClock) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    # The configuration ISPs had before the overlay: the base zone alone.
    extra_zone = re.sub(r'\nzone "overlay\.[^\n]*\{.*?\n\};\n', "\n",
                        (DEPLOY / "bind" / "blocklist-rpz.conf").read_text(), flags=re.S)
    with ServerThread(dns_settings, core.store) as xfrd, \
            named(tmp_path, xfrd.port, acme, port=named_port, base_only=extra_zone) as bind:
        wait_for(lambda: canary(bind) == str(v1), timeout=20, step=0.1)
        listed(core, personas, {"new-site.example": False})
        core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "gone")
        listed(core, personas, {f"more{i}.example": False for i in range(4)})  # enough changes to fold
        versions = [publish(core).version]
        time.sleep(1.0)
        assert answered_not_blocked(bind.ask("new-site.example")), "not in the base yet: slower, not wrong"
        assert blocked(bind.ask("csam-forum.example")), "still the whole of version 1"
        assert canary(bind) == str(v1)
        for _ in range(3):  # announce, switch, steady: one grace apart
            clock.advance(GRACE + 1)
            listed(core, personas, {f"later{len(versions)}.example": False})
            versions.append(publish(core).version)
        base = soa_serial(xfrd.port)
        assert base is not None and base > v1
        wait_for(lambda: canary(bind) == str(base), timeout=10, step=0.05)
        assert blocked(bind.ask("new-site.example"))
        assert answered_not_blocked(bind.ask("csam-forum.example"))


def test_delisting_a_parent_with_its_subdomains_leaves_its_still_listed_children_blocked(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, {"host.example": True, "bad.host.example": False, "worse.host.example": True})
    publish(core)
    with ServerThread(dns_settings, core.store) as xfrd, named(tmp_path, xfrd.port, acme, port=named_port) as bind:
        wait_for(lambda: blocked(bind.ask("other.host.example")), timeout=20, step=0.1)
        core.curation.act(personas.bruno.actor, ids["host.example"], "delist", "the host cleaned up")
        v2 = publish(core).version
        wait_for(lambda: canary(bind) == str(v2), timeout=10, step=0.05)
        assert answered_not_blocked(bind.ask("other.host.example")), "the parent's delisting took effect"
        assert answered_not_blocked(bind.ask("host.example"))
        assert blocked(bind.ask("bad.host.example")), "a child listed on its own stays blocked"
        assert blocked(bind.ask("worse.host.example"))
        assert blocked(bind.ask("deep.worse.host.example")), "and its subdomains too"
        assert answered_not_blocked(bind.ask("sub.bad.host.example")), "an exact child covers only itself"


def test_powerdns_recursor_from_the_isp_guide_applies_the_overlay_first_and_its_stop_page_on_the_base(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    pdns = require_binary("pdns_recursor")
    port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{port}"])
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    # PowerDNS keeps policy answers in its packet cache for the records' TTL: 1 s here.
    with ServerThread(replace(dns_settings, rpz_ttl=1), core.store) as xfrd:
        (tmp_path / "recursor.lua").write_text(render(
            DEPLOY / "powerdns" / "recursor.lua", OVERLAY_ZONE=OVERLAY.rstrip("."), ZONE="blocklist.rpz",
            PRIMARY=f"127.0.0.1:{xfrd.port}", TSIG_NAME=acme["tsig_key_name"], TSIG_SECRET=acme["tsig_secret"],
            STOP_PAGE="stop.isp.example", DUMP_DIR=tmp_path))
        (tmp_path / "recursor.conf").write_text(f"""
local-address=127.0.0.1
local-port={port}
socket-dir={tmp_path}
lua-config-file={tmp_path}/recursor.lua
allow-notify-for={OVERLAY.rstrip(".")},blocklist.rpz
allow-notify-from=127.0.0.1
forward-zones-recurse=.=127.0.0.1:9
dnssec=off
daemon=no
write-pid=no
loglevel=6
""")
        peer = Peer([pdns, f"--config-dir={tmp_path}"], tmp_path / "pdns.log", port)
        peer.start()
        try:
            wait_for(lambda: canary(peer) == str(v1), timeout=20, step=0.1)
            assert stop_page_cname(peer.ask("csam-forum.example")), "the base zone takes the ISP's stop page"
            core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
            listed(core, personas, {"new-site.example": False})
            v2 = publish(core).version
            # It polls the overlay every 5 s (PowerDNS Recursor 4.8 does not transfer on NOTIFY).
            wait_for(lambda: canary(peer) == str(v2), timeout=15, step=0.05)
            r = peer.ask("new-site.example")
            assert r is not None and r.rcode() == dns.rcode.NXDOMAIN, "added since the fold: the overlay's NXDOMAIN"
            assert not stop_page_cname(peer.ask("csam-forum.example")), "the overlay's passthru wins over the base"
            assert not stop_page_cname(peer.ask("www.csam-forum.example"))
            assert stop_page_cname(peer.ask("exact-only.example"))
            log = peer.log
        finally:
            peer.stop()
    assert "blocklist-overlay" in log or "overlay.blocklist.rpz" in log, log[-2000:]


def stop_page_cname(r: dns.message.Message | None) -> bool:
    return r is not None and any(rr.rdtype == dns.rdatatype.CNAME and rr[0].target.to_text() == "stop.isp.example."
                                 for rr in r.answer)


def test_knot_resolver_from_the_isp_guide_applies_the_overlay_file_first(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    kresd = require_binary("kresd")
    acme = core.isps.add(personas.ada.actor, "acme")
    ids = listed(core, personas, ENTRIES)
    publish(core)
    core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
    listed(core, personas, {"new-site.example": False})
    v2 = publish(core).version
    overlay_file, base_file = tmp_path / "overlay.blocklist.rpz.zone", tmp_path / "blocklist.rpz.zone"
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: overlay_serial(xfrd.port) == v2)
        # As the guide's timer does: a TSIG-signed transfer of each zone into its file.
        for zone, path in ((OVERLAY, overlay_file), ("blocklist.rpz.", base_file)):
            z = dns.zone.Zone(zone, relativize=False)
            q = dns.message.make_query(zone, "AXFR")
            q.use_tsig(dns.tsig.Key(acme["tsig_key_name"], acme["tsig_secret"], dns.tsig.HMAC_SHA256))
            dns.query.inbound_xfr("127.0.0.1", z, q, port=xfrd.port, timeout=5)
            path.write_text(z.to_text(relativize=False))
    port = free_port()
    rules = render(DEPLOY / "knot-resolver" / "kresd.conf", OVERLAY_ZONE_FILE=overlay_file, ZONE_FILE=base_file)
    (tmp_path / "kresd.conf").write_text(f"""
net.listen('127.0.0.1', {port}, {{ kind = 'dns' }})
{rules}
-- Offline: everything else goes to a closed port and fails.
policy.add(policy.all(policy.FORWARD('127.0.0.1@9')))
""")
    rundir = tmp_path / "run"
    rundir.mkdir()
    peer = Peer([kresd, "-n", "-c", str(tmp_path / "kresd.conf"), str(rundir)], tmp_path / "kresd.log", port)
    peer.start()
    try:
        wait_for(lambda: _rcode_of(peer.ask("exact-only.example", 0.5)) == dns.rcode.NXDOMAIN, timeout=20, step=0.2)
        assert _rcode_of(peer.ask("new-site.example")) == dns.rcode.NXDOMAIN, "added since the fold: in the overlay"
        assert _rcode_of(peer.ask("www.csam-forum.example", 0.5)) != dns.rcode.NXDOMAIN, "the overlay's passthru wins"
        assert _rcode_of(peer.ask("csam-forum.example", 0.5)) != dns.rcode.NXDOMAIN
        assert _rcode_of(peer.ask("blocked.canary")) == dns.rcode.NXDOMAIN
        assert canary(peer) == str(v2), "the overlay's canary, not the base's"
    finally:
        peer.stop()


def _rcode_of(r: dns.message.Message | None) -> int | None:
    return None if r is None else int(r.rcode())
