"""Attacks on what the served zones say, and what withstands them.

* A copy of a zone altered on the way (or on disk at a secondary) is told
  apart by its ZONEMD digest (RFC 8976).
* An entry whose name is the canary's cannot fake the canary nor make the
  zone unloadable (a CNAME next to the canary's TXT would make resolvers
  refuse the whole zone, ending all blocking).
* Damaged zone metadata in Redis is refused: the previous version stays served.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.versioned
import dns.zone
import pytest

from app.config import Settings
from app.core import Core
from app.embedded import free_port
from tests.conftest import Personas, publish, require_binary
from tests.test_xfr_peers import blocked, named
from tests.test_xfr_server import listed, wait_for
from tests.test_zones import OVERLAY, ZONE, serial_of
from workers.xfrd import ServerThread


@pytest.fixture
def dns_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None,
                   # The test, the resolvers and the transfers all come from 127.0.0.1.
                   dns_queries_per_second=10_000.0, dns_query_burst=10_000, notify_retries=0)


@pytest.fixture
def resolver(core: Core, personas: Personas) -> dict[str, Any]:
    return core.isps.add(personas.ada.actor, "resolver", allow_from=["127.0.0.1/32"], address_only=True)


def test_a_zone_copy_with_a_listed_name_removed_fails_its_zonemd_check(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas, resolver: dict[str, Any]) -> None:
    listed(core, personas, {"csam-forum.example": True, "other.example": False})
    version = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: serial_of(xfrd.port, ZONE) == version)
        zone = dns.zone.Zone(ZONE, relativize=False)
        dns.query.inbound_xfr("127.0.0.1", zone, port=xfrd.port, timeout=5)
    zone.verify_digest()
    zone.delete_node(dns.name.from_text("csam-forum.example." + ZONE))
    with pytest.raises(dns.zone.DigestVerificationFailure):
        zone.verify_digest()
    path = tmp_path / "altered.zone"
    path.write_text(zone.to_text(relativize=False))
    out = subprocess.run([require_binary("ldns-verify-zone"), "-Z", str(path)], capture_output=True, text=True,
                         check=False)
    assert out.returncode != 0


def test_an_entry_named_like_the_canary_neither_fakes_it_nor_breaks_the_zone_at_bind(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    listed(core, personas, {"version.canary": True, "csam-forum.example": False})
    version = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd, named(tmp_path, xfrd.port, acme, port=named_port) as bind:
        wait_for(lambda: blocked(bind.ask("csam-forum.example")), timeout=20, step=0.1)
        r = bind.ask("version.canary", rdtype="TXT")
        assert r is not None
        assert [rr[0].strings for rr in r.answer] == [(str(version).encode(),)]
        for zone in (ZONE, OVERLAY):
            z = dns.versioned.Zone(zone)
            dns.query.inbound_xfr("127.0.0.1", z, port=xfrd.port, timeout=5,
                                  query=_signed_axfr(zone, acme))
            node = z.get_node("version.canary")
            assert node is not None
            assert [rds.rdtype for rds in node] == [dns.rdatatype.TXT], "no CNAME beside the canary's TXT"
            z.verify_digest()


def _signed_axfr(zone: str, isp: dict[str, Any]) -> dns.message.QueryMessage:
    import dns.tsig

    q = dns.message.make_query(zone, "AXFR")
    q.use_tsig(dns.tsig.Key(isp["tsig_key_name"], isp["tsig_secret"], dns.tsig.HMAC_SHA256))
    return q


def test_damaged_zone_metadata_in_redis_is_refused_and_the_served_version_stays(
        dns_settings: Settings, core: Core, personas: Personas, resolver: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    ids = listed(core, personas, {"csam-forum.example": True})
    v1 = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: serial_of(xfrd.port, OVERLAY) == v1)
        core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "gone")
        # The next version's metadata claims a base from the future.
        core.publisher._zone_layout = lambda version, *a: {  # type: ignore[method-assign]
            "base": version + 5, "covers": [version + 5], "since": 0}
        publish(core)
        wait_for(lambda: any("inconsistent zone layout" in r.getMessage() for r in caplog.records), timeout=5)
        assert serial_of(xfrd.port, OVERLAY) == v1
        assert serial_of(xfrd.port, ZONE) == v1


def test_the_overlay_zone_is_refused_without_tsig_and_with_a_wrong_key_like_the_base(
        dns_settings: Settings, core: Core, personas: Personas) -> None:
    import base64
    import os

    import dns.tsig

    core.publisher.settings = replace(core.publisher.settings, rpz_fold_grace=300)  # the overlay on
    acme = core.isps.add(personas.ada.actor, "acme")
    ids = listed(core, personas, {"csam-forum.example": True, "recent.example": False})
    publish(core)
    core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "gone")
    listed(core, personas, {"newest.example": False})
    version = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: serial_of(xfrd.port, OVERLAY) == version)
        for key in (None, dns.tsig.Key(acme["tsig_key_name"], base64.b64encode(os.urandom(32)).decode(),
                                       dns.tsig.HMAC_SHA256)):
            q = dns.message.make_query(OVERLAY, "AXFR")
            if key is not None:
                q.use_tsig(key)
            # REFUSED (no key) or a TSIG error (wrong key): both end the transfer before any record.
            with pytest.raises(dns.exception.DNSException) as refused:
                dns.query.inbound_xfr("127.0.0.1", dns.versioned.Zone(OVERLAY), q, port=xfrd.port, timeout=5)
            assert "newest" not in str(refused.value)
        good = dns.versioned.Zone(OVERLAY)
        dns.query.inbound_xfr("127.0.0.1", good, _signed_axfr(OVERLAY, acme), port=xfrd.port, timeout=5)
    assert good.get_node("newest.example") is not None, "with the ISP's key the overlay transfers"
