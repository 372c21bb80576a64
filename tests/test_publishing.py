"""Signed, versioned publication: artifacts, signatures, versions, guard, workers, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from app import audit
from app.config import Settings
from app.core import Core
from app.domain import SYSTEM, Entry, EntryType, Status
from app.embedded import EmbeddedRedis, free_port
from app.rpz import parse_zone_names
from app.signing import ensure_key
from app.store import Txn
from client.minisign import PublicKey, Signature, parse_trusted_comment
from tests.conftest import Personas, publish, record_key, require_binary
from tests.feed_builder import entries_digest as reference_digest

SCHEMA = json.loads((Path(__file__).parent.parent / "blocklist_schema.json").read_text())


def validate(kind: str, data: dict) -> None:
    jsonschema.validate(data, {"$ref": f"#/$defs/{kind}", "$defs": SCHEMA["$defs"]},
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def activate(core: Core, p: Personas, *values: str, subdomains: bool = True) -> list[int]:
    ids = []
    for v in values:
        etype = "url" if "://" in v else "domain"
        e = core.curation.submit(p.alice.actor, v, etype, subdomains=subdomains if etype == "domain" else None)
        core.curation.act(p.bruno.actor, e.id, "approve")
        ids.append(e.id)
    return ids


def bulk_active(core: Core, n: int, prefix: str = "bulk") -> list[int]:
    """Many active entries written straight into the store (fast set-up for big lists)."""
    now = int(core.clock())
    first = core.store.entries.allocate_ids(n)
    for start in range(0, n, 2000):
        txn = Txn()
        items = []
        for i in range(first + start, first + min(start + 2000, n)):
            e = Entry(id=i, type=EntryType.DOMAIN, value=f"{prefix}{i}.example.test", subdomains=True,
                      category="csam", status=Status.ACTIVE, reason="", evidence_ref="", submitted_by="alice",
                      agency="A", submitted_at=now, updated_at=now, approved_by="bruno", approved_agency="B",
                      approved_at=now, listed_since=now, verified_at=now, verified_by="bruno")
            items.append((i, e.key, e.to_json(), None))
        core.store.entries.put_new(txn, items, "active", now)
        core.store.commit(txn)
    return list(range(first, first + n))


def minisign_ok(path: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("minisign"), "-Vm", str(path), "-p", str(pub)], capture_output=True,
                          text=True, timeout=30)


def keys_show(settings: Settings, tmp_path: Path) -> Path:
    env = {**os.environ, "BLOCKLIST_REDIS_URL": settings.redis_url or "",
           "BLOCKLIST_SIGNING_KEY_FILE": str(settings.signing_key_file)}
    out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "show"], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    pub = tmp_path / "isp-pinned.pub"
    pub.write_text(out)
    return pub


def test_stock_minisign_verifies_every_artifact_and_refuses_a_changed_byte(core: Core, personas: Personas,
                                                                          settings: Settings, tmp_path: Path) -> None:
    activate(core, personas, "one.example.test", "two.example.test", "https://files.example.test/x")
    publish(core)
    ids = activate(core, personas, "three.example.test")
    core.curation.act(personas.bruno.actor, 1, "delist", "gone")
    v2 = publish(core).version
    pub = keys_show(settings, tmp_path)
    root = core.artifacts.root
    for rel in ("manifest.json", f"snapshots/{v2}.json", f"deltas/1/{v2}.json", f"rpz/{v2}.zone"):
        r = minisign_ok(root / rel, pub)
        assert r.returncode == 0, (rel, r.stderr)
        assert f"file:{rel}" in r.stdout and f"version:{v2}" in r.stdout and "list:worst-of" in r.stdout
        tampered = tmp_path / "tampered"
        data = bytearray((root / rel).read_bytes())
        data[len(data) // 2] ^= 0x01
        tampered.write_bytes(bytes(data))
        (tmp_path / "tampered.minisig").write_bytes((root / f"{rel}.minisig").read_bytes())
        bad = minisign_ok(tampered, pub)
        assert bad.returncode != 0, rel
        assert "verification failed" in (bad.stderr + bad.stdout).lower()
    assert ids


def test_every_artifact_matches_the_schema_and_the_manifest(core: Core, personas: Personas) -> None:
    activate(core, personas, "a.example.test", "b.example.test", "http://c.example.test/p?q=1")
    activate(core, personas, "exact.example.test", subdomains=False)
    publish(core)
    activate(core, personas, "d.example.test")
    v = publish(core).version
    root = core.artifacts.root
    manifest = json.loads((root / "manifest.json").read_text())
    validate("manifest", manifest)
    assert manifest["version"] == v
    for art in manifest["artifacts"]:
        data = (root / art["path"]).read_bytes()
        assert len(data) == art["size"]
        assert __import__("hashlib").sha256(data).hexdigest() == art["sha256"]
        if art["kind"] == "snapshot":
            validate("snapshot", json.loads(data))
        elif art["kind"] == "delta":
            validate("delta", json.loads(data))
    snap = json.loads((root / f"snapshots/{v}.json").read_text())
    assert [e["value"] for e in snap["entries"]] == [
        "a.example.test", "b.example.test", "d.example.test", "exact.example.test", "http://c.example.test/p?q=1"]
    assert snap["count"] == 5
    leaked = json.dumps(snap)
    assert "alice" not in leaked and "bruno" not in leaked and "Agency" not in leaked
    delta = json.loads((root / f"deltas/1/{v}.json").read_text())
    assert [e["value"] for e in delta["added"]] == ["d.example.test"] and delta["removed"] == []
    first = json.loads((root / "snapshots/1.json").read_text())
    assert snap["previous_sha256"] == __import__("hashlib").sha256((root / "snapshots/1.json").read_bytes()).hexdigest()
    assert first["previous_sha256"] is None
    serial, names = parse_zone_names((root / f"rpz/{v}.zone").read_text())
    assert serial == v
    assert sorted(names) == sorted(["a.example.test", "*.a.example.test", "b.example.test", "*.b.example.test",
                                    "d.example.test", "*.d.example.test", "exact.example.test"])


def test_the_entries_digest_lets_a_client_check_the_list_it_rebuilt(core: Core, personas: Personas) -> None:
    activate(core, personas, "a.example.test", "b.example.test")
    v = publish(core).version
    snap = json.loads(core.artifacts.read(f"snapshots/{v}.json"))
    lines = [json.dumps(e, separators=(",", ":")).encode() for e in snap["entries"]]
    assert reference_digest(lines) == snap["entries_digest"]


def test_an_unchanged_list_makes_no_new_version_but_a_later_manifest(core: Core, personas: Personas, clock) -> None:
    activate(core, personas, "quiet.example.test")
    publish(core)
    before = json.loads(core.publisher.manifest()[0])
    outcome = core.publisher.publish()
    assert outcome.status == "unchanged" and outcome.version == 1
    clock.advance(core.settings.manifest_refresh + 1)
    outcome = core.publisher.publish()
    assert outcome.status == "refreshed" and outcome.version == 1
    after = json.loads(core.publisher.manifest()[0])
    assert after["version"] == 1 and after["expires_at"] > before["expires_at"]
    body, sig = core.publisher.manifest()
    trusted = core.publisher.key.public.verify_bytes(Signature.parse(sig), body.encode())
    assert parse_trusted_comment(trusted)["expires"] == after["expires_at"]
    assert core.publisher.versions()[0]["version"] == 1 and len(core.publisher.versions()) == 1


def test_reverification_changes_the_published_record(core: Core, personas: Personas, clock) -> None:
    [eid] = activate(core, personas, "re.example.test")
    publish(core)
    clock.advance(86400)
    core.curation.act(personas.alice.actor, eid, "reverify")
    out = publish(core)
    assert out.diff == {"added": 0, "removed": 0, "changed": 1}
    delta = json.loads(core.artifacts.read(f"deltas/1/{out.version}.json"))
    assert delta["removed"][0]["verified_at"] < delta["added"][0]["verified_at"]


def test_the_guard_holds_a_publication_that_removes_half_the_list(core: Core, personas: Personas) -> None:
    ids = bulk_active(core, 40)
    core.curation.set_policy(personas.ada.actor, {"guard_add_max": 100000})
    publish(core)
    for i in ids[:20]:
        core.curation.act(personas.bruno.actor, i, "delist", "mass mistake")
    held = core.publisher.publish()
    assert held.status == "held" and "removes 20 of 40" in held.message
    assert core.publisher.latest()["version"] == 1
    assert core.publisher.held()["removed"] == 20
    records, _ = audit.search(core.store, action="publication.hold")
    assert records
    with pytest.raises(Exception, match="may not"):
        core.publisher.release(personas.bruno.actor, "looks fine")
    core.publisher.release(personas.ada.actor, "confirmed: the sites are gone")
    released = core.publisher.serve_request()
    assert released is not None and released.status == "published" and released.version == 2
    assert core.publisher.held() is None
    assert core.publisher.version_meta(2)["count"] == 20
    actions = [r.action for r in audit.search(core.store, action="publication.")[0]]
    assert actions[:3] == ["publication.publish", "publication.release", "publication.hold"]


def test_the_guard_holds_a_large_first_publication_until_released(core: Core, personas: Personas) -> None:
    core.curation.set_policy(personas.ada.actor, {"guard_add_max": 30})
    bulk_active(core, 40)
    assert core.publisher.publish().status == "held"
    core.publisher.discard(personas.ada.actor, "not yet")
    assert core.publisher.held() is None
    assert core.publisher.publish().status == "held"


def test_publication_refuses_an_entry_that_conflicts_with_the_allowlist(core: Core, personas: Personas) -> None:
    [eid] = activate(core, personas, "portal.example.test")
    # An allowlist entry written behind the curation layer's back (e.g. a
    # restore): the publisher must not publish the conflicting entry.
    core.store.r.hset("bl:allowlist", "www.portal.example.test", json.dumps({"subdomains": False}))
    out = core.publisher.publish()
    assert out.status == "held" and "allowlist" in out.message
    assert core.publisher.latest() is None
    assert eid


def own_redis_core(tmp_path: Path, clock) -> tuple[EmbeddedRedis, Settings, Core]:
    """A Redis of the test's own (to stop, kill or restore it) with two curators."""
    srv = EmbeddedRedis(tmp_path / "redis", port=free_port())
    srv.start()
    settings = Settings(redis_url=srv.url, data_dir=tmp_path, artifact_dir=tmp_path / "artifacts",
                        signing_key_file=tmp_path / "keys" / "k")
    core = Core.from_settings(settings, clock=clock)
    core.publisher._key = ensure_key(settings.signing_key_file)
    record_key(core, core.publisher._key)
    core.users.add(SYSTEM, "alice", "curator", "A")
    core.users.add(SYSTEM, "bruno", "vetter", "B")
    return srv, settings, core


def add_active(core: Core, value: str) -> None:
    e = core.curation.submit(core.users.get("alice").actor, value)
    core.curation.act(core.users.get("bruno").actor, e.id, "approve")


def test_versions_never_go_down_after_redis_is_restored(tmp_path: Path, clock) -> None:
    srv, settings, core = own_redis_core(tmp_path, clock)
    try:
        def add(v: str) -> None:
            add_active(core, v)

        add("r1.example.test")
        assert core.publisher.publish().version == 1
        core.store.r.save()
        backup = (tmp_path / "redis" / "dump.rdb").read_bytes()
        add("r2.example.test")
        assert core.publisher.publish().version == 2
        add("r3.example.test")
        assert core.publisher.publish().version == 3
        # Disaster: Redis comes back from the older backup.
        srv.stop()
        for f in (tmp_path / "redis").glob("appendonly.aof*"):
            f.unlink()
        (tmp_path / "redis" / "dump.rdb").write_bytes(backup)
        srv.extra_config = {"appendonly": "no"}
        srv.start()
        core = Core.from_settings(settings, clock=clock)
        core.publisher._key = ensure_key(settings.signing_key_file)
        assert core.publisher.latest()["version"] == 1
        add_active(core, "r4.example.test")
        out = core.publisher.publish()
        assert out.status == "published" and out.version == 4
        snap = json.loads(core.artifacts.read("snapshots/4.json"))
        assert [e["value"] for e in snap["entries"]] == ["r1.example.test", "r4.example.test"]
        assert core.artifacts.highwater() == 4
    finally:
        srv.stop()


def test_the_version_keeps_rising_across_a_redis_restart_from_its_aof(tmp_path: Path, clock) -> None:
    srv, settings, core = own_redis_core(tmp_path, clock)
    try:
        for i in range(2):
            add_active(core, f"aof{i}.example.test")
            core.publisher.publish()
        srv.kill()  # no clean shutdown: the AOF is all there is
        srv.start()
        core = Core.from_settings(settings, clock=clock)
        core.publisher._key = ensure_key(settings.signing_key_file)
        assert core.publisher.latest()["version"] == 2
        add_active(core, "aof9.example.test")
        assert core.publisher.publish().version == 3
        assert audit.verify(core.store).ok
    finally:
        srv.stop()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "BLOCKLIST_REDIS_URL": settings.redis_url or "",
            "BLOCKLIST_DATA_DIR": str(settings.data_dir), "BLOCKLIST_ARTIFACT_DIR": str(settings.artifact_dir),
            "BLOCKLIST_SIGNING_KEY_FILE": str(settings.signing_key_file), "BLOCKLIST_LOG_FORMAT": "text",
            **extra}


def test_two_workers_started_together_publish_each_version_once(core: Core, personas: Personas,
                                                                settings: Settings) -> None:
    env = worker_env(settings, BLOCKLIST_PUBLISH_INTERVAL="1")
    procs = [subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        for round_ in range(4):
            activate(core, personas, f"w{round_}.example.test")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                latest = core.publisher.latest()
                if latest and latest["count"] == round_ + 1:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the workers did not publish")
        time.sleep(2.5)  # give both workers time to (wrongly) publish again
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=30)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    published = audit.search(core.store, action="publication.publish", limit=100)[0]
    versions = sorted(int(r.target.split(":")[1]) for r in published)
    assert versions == list(range(1, len(versions) + 1)), versions
    counts = [core.publisher.version_meta(v)["count"] for v in versions]
    assert counts == sorted(set(counts)), "a version was published twice with the same content"
    assert counts[-1] == 4


def test_a_publisher_killed_mid_publication_leaves_the_previous_version_served(core: Core, personas: Personas,
                                                                              settings: Settings,
                                                                              tmp_path: Path) -> None:
    core.curation.set_policy(personas.ada.actor, {"guard_add_max": 10**7, "guard_add_pct": 100000})
    bulk_active(core, 1000, prefix="base")
    publish(core)
    manifest_before = core.publisher.manifest()
    bulk_active(core, 120_000, prefix="more")
    env = worker_env(settings, BLOCKLIST_PUBLISH_INTERVAL="3600")
    killed_during_work = 0
    for delay in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5):
        # A full rebuild asked of the real publisher, killed while it works on it.
        request_id = core.publisher.request(personas.ada.actor, "rebuild", full=True)
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while (core.publisher.answer(request_id) or {}).get("status") == "requested" \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None and (core.publisher.answer(request_id) or {}).get("status") == "working":
            killed_during_work += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if core.publisher.latest()["version"] != 1:
            break
        # The previous version is still what is served, intact.
        assert core.publisher.manifest() == manifest_before
        pub = tmp_path / "k.pub"
        pub.write_text(core.publisher.key.public.text())
        assert minisign_ok(core.artifacts.root / "snapshots/1.json", pub).returncode == 0
        # The lock of the killed publisher expires; release it for the next attempt.
        core.store.r.delete("bl:pub:lock")
    assert killed_during_work >= 1
    # A publisher killed after its commit still held the lock; it would expire.
    core.store.r.delete("bl:pub:lock")
    # bulk_active wrote behind the change feed's back, so rebuild in full.
    out = core.publisher.publish(full=True)
    latest = core.publisher.latest()
    assert latest["count"] == 121_000
    assert out.status in ("published", "unchanged", "refreshed")
    v = latest["version"]
    pub = tmp_path / "k.pub"
    pub.write_text(core.publisher.key.public.text())
    for rel in (f"snapshots/{v}.json", f"rpz/{v}.zone", "manifest.json"):
        # A worker killed right after its commit never wrote its cache files: they come from Redis.
        core.artifacts.path(rel + ".minisig")
        assert minisign_ok(core.artifacts.path(rel), pub).returncode == 0, rel
    assert v >= 2 and v <= core.artifacts.highwater() + 0


def test_the_publisher_refuses_a_tampered_previous_snapshot(core: Core, personas: Personas) -> None:
    activate(core, personas, "base.example.test")
    publish(core)
    path = core.artifacts.root / "snapshots/1.json"
    path.write_bytes(path.read_bytes().replace(b"base.example", b"evil.example"))
    core.publisher._state = None
    activate(core, personas, "next.example.test")
    out = publish(core)
    snap = json.loads(core.artifacts.read(f"snapshots/{out.version}.json"))
    assert [e["value"] for e in snap["entries"]] == ["base.example.test", "next.example.test"]


def test_retention_prunes_old_files_and_the_delta_chain(core: Core, personas: Personas, settings: Settings) -> None:
    from dataclasses import replace

    core.settings = replace(settings, retain_snapshots=2, retain_deltas=3)
    core.publisher.settings = core.settings
    for i in range(6):
        activate(core, personas, f"keep{i}.example.test")
        publish(core)
    root = core.artifacts.root
    assert sorted(p.name for p in (root / "snapshots").glob("*.json")) == ["5.json", "6.json"]
    manifest = json.loads(core.publisher.manifest()[0])
    deltas = [a["path"] for a in manifest["artifacts"] if a["kind"] == "delta"]
    assert deltas == ["deltas/5/6.json", "deltas/4/5.json", "deltas/3/4.json"]
    assert all((root / d).exists() for d in deltas)
    assert not (root / "deltas/1/2.json").exists()
    pk = PublicKey.parse(core.publisher.key.public.text())
    assert pk.id_hex == core.publisher.key.public.id_hex


def test_a_hold_that_cannot_be_recorded_is_not_reported_as_held(core: Core, personas: Personas,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from app.errors import PublicationError, RetryableConflictError

    core.curation.set_policy(personas.ada.actor, {"guard_add_max": 30})
    bulk_active(core, 40)

    def always_conflicting(txn: Txn) -> None:
        raise RetryableConflictError("the data changed while the action ran; try again")

    # Other writers win every compare-and-set: the hold is never recorded.
    monkeypatch.setattr(core.store, "commit", always_conflicting)
    with pytest.raises(PublicationError, match="could not record the held publication"):
        core.publisher.publish()
    monkeypatch.undo()
    assert core.publisher.held() is None
    assert core.publisher.latest() is None
    assert core.publisher.publish().status == "held"
    assert core.publisher.held() is not None


def test_a_latest_version_whose_files_are_not_in_redis_is_published_again_with_them(core: Core,
                                                                                   personas: Personas) -> None:
    activate(core, personas, "kept.example.test")
    assert publish(core).version == 1
    # As left by a release that kept artifacts on disk only: Redis knows the
    # version but holds none of its files.
    for key in core.store.r.scan_iter("bl:art:*"):
        core.store.r.delete(key)
    out = core.publisher.publish()
    assert out.status == "published" and out.version == 2
    snap = json.loads(core.artifacts.read("snapshots/2.json"))
    assert [e["value"] for e in snap["entries"]] == ["kept.example.test"]
    assert core.publisher.publish().status in ("unchanged", "refreshed")
