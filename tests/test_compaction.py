"""Publication follows the change: a version of a large list publishes its
delta and the manifest, not the whole list again; full snapshots and zone
files are written by compaction, and every reader (publisher on another
host, transfer server, ISP client) rebuilds the exact list from the newest
full snapshot plus the chain of deltas the manifest names."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.rdatatype
import pytest

from app.config import Settings
from app.core import Core
from app.embedded import free_port
from app.rpz import parse_zone_names
from tests.conftest import Personas, publish
from tests.feed_builder import entries_digest as reference_digest
from tests.test_publishing import activate, minisign_ok, validate
from tests.test_xfr_server import ZONE, kdig, records, soa_serial, tsig, wait_for


@pytest.fixture
def large(core: Core, settings: Settings) -> Core:
    """Every list counts as large (no full files with each version), and
    compaction only when asked."""
    core.settings = replace(settings, compact_small_bytes=0, compact_ratio=100.0, compact_age=10**9)
    core.publisher.settings = core.settings
    return core


def manifest(core: Core) -> dict[str, Any]:
    m = core.publisher.manifest()
    assert m is not None
    return dict(json.loads(m[0]))


def rebuild(core: Core, m: dict[str, Any]) -> list[dict[str, Any]]:
    """What an ISP client does: the full snapshot, then each delta after it, in order."""
    snap = json.loads(core.artifacts.read(m["snapshot"]))
    assert snap["version"] == m["snapshot_version"]
    entries = {(e["type"], e["value"]): e for e in snap["entries"]}
    deltas = {a["from"]: a for a in m["artifacts"] if a["kind"] == "delta"}
    v = m["snapshot_version"]
    while v < m["version"]:
        ref = deltas[v]
        data = core.artifacts.read(ref["path"])
        assert hashlib.sha256(data).hexdigest() == ref["sha256"] and len(data) == ref["size"]
        d = json.loads(data)
        validate("delta", d)
        for e in d["removed"]:
            del entries[(e["type"], e["value"])]
        for e in d["added"]:
            entries[(e["type"], e["value"])] = e
        v = d["to"]
    out = [entries[k] for k in sorted(entries)]
    lines = [json.dumps(e, separators=(",", ":")).encode() for e in out]
    assert reference_digest(lines) == m["entries_digest"]
    return out


def test_a_version_of_a_large_list_publishes_only_its_delta_and_the_manifest(
        large: Core, personas: Personas, tmp_path: Path) -> None:
    core = large
    activate(core, personas, "a.example.test", "b.example.test", "https://c.example.test/p")
    assert publish(core).version == 1
    [gone] = activate(core, personas, "d.example.test")
    v2 = publish(core).version
    core.curation.act(personas.bruno.actor, gone, "delist", "site gone")
    activate(core, personas, "e.example.test")
    v3 = publish(core).version

    # No new full files: only deltas (and signatures) were stored.
    for v in (v2, v3):
        assert not core.artifacts.exists(f"snapshots/{v}.json")
        assert not core.artifacts.exists(f"rpz/{v}.zone")
    assert core.artifacts.exists(f"deltas/{v2}/{v3}.json")
    m = manifest(core)
    validate("manifest", m)
    assert (m["version"], m["snapshot_version"], m["snapshot"], m["rpz"]) == (v3, 1, "snapshots/1.json", "rpz/1.zone")
    assert [a["path"] for a in m["artifacts"] if a["kind"] == "delta"] == [f"deltas/{v2}/{v3}.json",
                                                                         f"deltas/1/{v2}.json"]
    assert [e["value"] for e in rebuild(core, m)] == ["a.example.test", "b.example.test", "e.example.test",
                                                      "https://c.example.test/p"]
    delta = json.loads(core.artifacts.read(f"deltas/{v2}/{v3}.json"))
    assert delta["to_sha256"] is None and delta["to_count"] == 4

    # Stock minisign accepts the manifest and the deltas as served.
    pub = tmp_path / "k.pub"
    pub.write_text(core.publisher.key.public.text())
    for rel in ("manifest.json", f"deltas/1/{v2}.json", f"deltas/{v2}/{v3}.json"):
        path = core.artifacts.path(rel)
        assert minisign_ok(path, pub).returncode == 0, rel


def test_compaction_writes_the_full_files_and_the_manifest_moves_to_them(
        large: Core, personas: Personas, tmp_path: Path) -> None:
    core = large
    activate(core, personas, "a.example.test", "b.example.test")
    publish(core)
    activate(core, personas, "c.example.test")
    v2 = publish(core).version
    assert core.publisher.compact().status == "unchanged", "not due: ratio, length and age are far off"
    core.settings = replace(core.settings, compact_ratio=0.0)
    core.publisher.settings = core.settings
    out = core.publisher.compact()
    assert out.status == "compacted" and out.version == v2
    m = manifest(core)
    validate("manifest", m)
    assert (m["version"], m["snapshot_version"], m["snapshot"]) == (v2, v2, f"snapshots/{v2}.json")
    snap = json.loads(core.artifacts.read(f"snapshots/{v2}.json"))
    validate("snapshot", snap)
    assert [e["value"] for e in snap["entries"]] == ["a.example.test", "b.example.test", "c.example.test"]
    assert snap["previous_version"] == 1
    assert snap["previous_sha256"] == hashlib.sha256(core.artifacts.read("snapshots/1.json")).hexdigest()
    assert snap["entries_digest"] == m["entries_digest"]
    serial, names = parse_zone_names(core.artifacts.read(f"rpz/{v2}.zone").decode())
    assert serial == v2 and "c.example.test" in names
    pub = tmp_path / "k.pub"
    pub.write_text(core.publisher.key.public.text())
    for rel in (f"snapshots/{v2}.json", f"rpz/{v2}.zone", "manifest.json"):
        assert minisign_ok(core.artifacts.path(rel), pub).returncode == 0, rel
    # Published once: compaction made no new version, and says what it wrote in the audit log.
    assert core.publisher.latest()["version"] == v2  # type: ignore[index]
    from app import audit

    [record] = audit.search(core.store, action="publication.compact")[0]
    assert record.target == f"version:{v2}" and record.after["snapshot_sha256"] == m["artifacts"][0]["sha256"]
    assert len(audit.search(core.store, action="publication.publish")[0]) == 2
    assert audit.verify(core.store).ok


def test_a_publisher_on_another_host_rebuilds_the_list_from_the_snapshot_and_the_deltas(
        large: Core, personas: Personas, tmp_path: Path) -> None:
    core = large
    activate(core, personas, "a.example.test", "b.example.test")
    publish(core)
    [changed] = activate(core, personas, "c.example.test")
    publish(core)
    core.curation.act(personas.bruno.actor, changed, "delist", "gone")
    publish(core)
    # A standby with an empty cache and no list in memory takes over.
    other = Core(settings=replace(core.settings, artifact_dir=tmp_path / "standby-cache"), store=core.store,
                 clock=core.clock)
    other.publisher._key = core.publisher._key
    activate(core, personas, "d.example.test")
    out = other.publisher.publish()
    assert out.status == "published" and out.diff == {"added": 1, "removed": 0, "changed": 0}
    m = manifest(core)
    assert m["snapshot_version"] == 1 and m["version"] == out.version
    assert [e["value"] for e in rebuild(core, m)] == ["a.example.test", "b.example.test", "d.example.test"]


def test_the_feed_serves_the_newest_full_files_as_latest_and_no_snapshot_for_a_delta_only_version(
        large: Core, personas: Personas, client: Any) -> None:
    core = large
    token = core.isps.add(personas.ada.actor, "acme")["feed_token"]
    headers = {"Authorization": f"Bearer {token}"}
    activate(core, personas, "a.example.test")
    publish(core)
    activate(core, personas, "b.example.test")
    v2 = publish(core).version
    r = client.get(f"/feed/v1/snapshots/{v2}.json", headers=headers)
    assert r.status_code == 404 and "fetch the latest snapshot" in r.get_json()["error"]
    latest = client.get("/feed/v1/rpz/latest.zone", headers=headers)
    assert latest.status_code == 200
    assert latest.data == core.artifacts.read("rpz/1.zone")
    assert client.get(f"/feed/v1/deltas/1/{v2}.json", headers=headers).status_code == 200


def test_the_transfer_server_serves_a_delta_only_version_from_the_full_zone_and_the_deltas(
        large: Core, personas: Personas, settings: Settings) -> None:
    from workers.xfrd import ServerThread

    core = large
    isp = core.isps.add(personas.ada.actor, "acme")
    activate(core, personas, "a.example.test", "b.example.test")
    v1 = publish(core).version
    [gone] = activate(core, personas, "c.example.test")
    publish(core)
    core.curation.act(personas.bruno.actor, gone, "delist", "gone")
    activate(core, personas, "d.example.test")
    v3 = publish(core).version
    dns_settings = replace(core.settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None)
    # Started after the publications: it must build version 3 from zone file 1 and two deltas.
    with ServerThread(dns_settings, core.store) as t:
        wait_for(lambda: soa_serial(t.port) == v3, timeout=15, step=0.1)
        out = kdig(t.port, "-y", tsig(isp), "AXFR", ZONE)
        assert out.returncode == 0, out.stderr
        owners = sorted({o for o, typ, _ in records(out.stdout) if typ == dns.rdatatype.to_text(dns.rdatatype.CNAME)})
        # The entries and the blocked canary every served zone carries.
        assert owners == sorted([f"{p}{n}.example.test.{ZONE}" for n in ("a", "b", "d") for p in ("", "*.")]
                                + [f"blocked.canary.{ZONE}"])
        ixfr = kdig(t.port, "-y", tsig(isp), f"IXFR={v1}", ZONE)
        assert ixfr.returncode == 0, ixfr.stderr
        got = records(ixfr.stdout)
        # An incremental answer (condensed: c came and went), not the whole zone again.
        assert any(o == f"d.example.test.{ZONE}" for o, _, _ in got)
        assert not any(o.startswith("c.example.test") for o, _, _ in got)
        assert len(got) < len(records(out.stdout))


def test_the_admin_pages_show_a_delta_only_version_and_what_it_builds_on(large: Core, personas: Personas,
                                                                        app: Any) -> None:
    from tests.test_web_helpers import signed_in, text

    core = large
    activate(core, personas, "a.example.test")
    publish(core)
    activate(core, personas, "b.example.test")
    v2 = publish(core).version
    client = signed_in(app.test_client(), personas.ada)
    listing = client.get("/publications")
    assert listing.status_code == 200
    page = client.get(f"/publications/{v2}")
    assert page.status_code == 200
    shown = text(page)
    assert "published as a delta on the full snapshot and zone file of" in shown
    assert 'href="/publications/1">version 1</a>' in shown
    assert "b.example.test" in shown
