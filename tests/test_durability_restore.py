"""Restoring Redis from an older backup never makes a version number go back.

Real Redis with the shipped configuration: publish, take a backup (the
``redis-cli --rdb`` snapshot, or a copy of the AOF directory), publish more,
stop Redis, restore the backup as docs/operations.md says, restart the
publisher with no memory of the later versions, publish. The new version is
above every version ever published (the publisher's high-water mark lives
with the artifacts), so a resolver that transferred zone serial N never
sees a serial below N, and a feed client that holds version N never sees a
manifest below it once the publisher has run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.clock import FakeClock
from app.core import Core
from app.rpz import parse_zone_names
from tests.test_deploy_redis import People, ShippedRedis, list_domain, make_core


def zone_serial(core: Core, version: int) -> int:
    serial, _ = parse_zone_names(core.artifacts.read(f"rpz/{version}.zone").decode())
    return int(serial)


def published(core: Core) -> int:
    outcome = core.publisher.publish(reason="test")
    assert outcome.status == "published", outcome
    assert outcome.version is not None
    return outcome.version


@pytest.mark.parametrize("backup_kind", ["rdb", "aof"])
def test_a_restored_older_backup_never_lowers_or_reuses_a_version(tmp_path: Path, backup_kind: str) -> None:
    server = ShippedRedis(tmp_path / "redis").start()
    try:
        core = make_core(server.url("app"), tmp_path / "data")
        people = People(core)
        list_domain(core, people, "one.test")
        v1 = published(core)
        backup = (server.backup_rdb(tmp_path / "backup.rdb") if backup_kind == "rdb"
                  else server.backup_aof(tmp_path / "backup-aof"))
        list_domain(core, people, "two.test")
        v2 = published(core)
        list_domain(core, people, "three.test")
        v3 = published(core)
        assert v1 < v2 < v3
        serials = [zone_serial(core, v) for v in (v1, v2, v3)]
        assert serials == [v1, v2, v3]
        core.store.r.close()

        server.stop()
        if backup_kind == "rdb":
            server.restore_rdb(backup)
        else:
            server.restore_aof(backup)

        # A fresh process: no list in memory, only Redis (restored) and the artifact directory.
        restored = make_core(server.url("app"), tmp_path / "data")
        latest = restored.publisher.latest()
        assert latest is not None
        assert latest["version"] == v1, "the backup holds the state of the first publication"

        # Nothing changed since the backup, and still the next publication
        # must move every client forward, not leave them on a lower version.
        v4 = published(restored)
        assert v4 > v3
        assert zone_serial(restored, v4) == v4 > max(serials)
        body, _sig = restored.publisher.manifest() or ("{}", "")
        assert json.loads(body)["version"] == v4

        # And a curator's change after the restore publishes above it again.
        list_domain(restored, People.existing(restored), "four.test")
        v5 = published(restored)
        assert v5 > v4
        names = parse_zone_names(restored.artifacts.read(f"rpz/{v5}.zone").decode())[1]
        assert {"one.test", "four.test"} <= set(names)
        assert "two.test" not in names, "entries made after the backup are gone with it"
        assert restored.artifacts.highwater() == v5
        restored.store.r.close()
    finally:
        server.stop()


def test_the_manifest_is_never_re_signed_below_a_published_version(tmp_path: Path) -> None:
    """Between the restore and the next publication, the worker's manifest
    refresh must not sign the restored (older) version as the current one."""
    clock = FakeClock(1_800_000_000.0)
    server = ShippedRedis(tmp_path / "redis").start()
    try:
        core = make_core(server.url("app"), tmp_path / "data", clock)
        people = People(core)
        list_domain(core, people, "one.test")
        v1 = published(core)
        backup = server.backup_rdb(tmp_path / "backup.rdb")
        clock.advance(600)
        list_domain(core, people, "two.test")
        v2 = published(core)
        core.store.r.close()
        server.stop()
        server.restore_rdb(backup)
        clock.advance(600)  # the restore takes a while; a manifest signed now differs from the old one

        restored = make_core(server.url("app"), tmp_path / "data", clock)
        from_backup = restored.publisher.manifest()
        assert from_backup is not None
        assert json.loads(from_backup[0])["version"] == v1
        restored.publisher.refresh_manifest(force=True)
        manifest = restored.publisher.manifest()
        assert manifest is not None
        version = json.loads(manifest[0])["version"]
        assert version >= v2 or manifest == from_backup, (
            f"the manifest was signed anew for version {version}, below the published version {v2}"
        )
        restored.store.r.close()
    finally:
        server.stop()


def test_the_documented_restore_procedure_publishes_above_every_version(tmp_path: Path) -> None:
    """docs/operations.md: restore with the worker stopped, then `blocklist publish --force`."""
    server = ShippedRedis(tmp_path / "redis").start()
    try:
        core = make_core(server.url("app"), tmp_path / "data")
        people = People(core)
        list_domain(core, people, "one.test")
        published(core)
        backup = server.backup_rdb(tmp_path / "backup.rdb")
        list_domain(core, people, "two.test")
        v2 = published(core)
        core.store.r.close()
        server.stop()
        server.restore_rdb(backup)

        restored = make_core(server.url("app"), tmp_path / "data")
        outcome = restored.publisher.publish(force=True, reason="restored from backup")
        assert outcome.status == "published"
        assert outcome.version is not None
        assert outcome.version > v2
        assert zone_serial(restored, outcome.version) > v2
        manifest = restored.publisher.manifest()
        assert manifest is not None
        assert json.loads(manifest[0])["version"] == outcome.version
        restored.store.r.close()
    finally:
        server.stop()
