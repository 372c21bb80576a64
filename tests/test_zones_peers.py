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
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from app.clock import FakeClock
from app.config import Settings
from app.core import Core
from app.embedded import free_port
from tests.conftest import Personas, publish
from tests.test_xfr_peers import OVERLAY, Peer, answered_not_blocked, blocked, named, unbound
from tests.test_xfr_server import ZONE, bulk_listed, listed, soa_serial, wait_for
from workers.xfrd import ServerThread

GRACE = 30


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The overlay on, folds after a few changes, each step served GRACE seconds (of the fake clock)."""
    return replace(settings, rpz_fold_changes=6, rpz_fold_age=10_000, rpz_fold_grace=GRACE)


@pytest.fixture
def dns_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None,
                   notify_timeout=0.5, notify_retries=6)


def overlay_serial(port: int) -> int | None:
    try:
        r = dns.query.udp(dns.message.make_query(OVERLAY, "SOA"), "127.0.0.1", port=port, timeout=1)
    except (dns.exception.Timeout, OSError):
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
