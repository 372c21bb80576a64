"""Door: a host's artifact cache. What an ISP receives comes from Redis, the
system of record, checked against the sha256 recorded at publication; a
file changed in a web host's cache directory is never served."""

from __future__ import annotations

from typing import Any

from app.core import Core
from tests.conftest import Personas, publish
from tests.test_publishing import activate


def test_a_tampered_snapshot_in_a_hosts_cache_is_never_served_to_an_isp(core: Core, personas: Personas,
                                                                        client: Any) -> None:
    token = core.isps.add(personas.ada.actor, "acme")["feed_token"]
    activate(core, personas, "listed.example.test", "other.example.test")
    v = publish(core).version
    rel = f"snapshots/{v}.json"
    good = core.artifacts.read(rel)
    cached = core.artifacts.root / rel
    assert cached.read_bytes() == good
    # Someone with write access to the web host's disk removes an entry.
    cached.write_bytes(good.replace(b"listed.example.test", b"lisxed.example.test"))
    r = client.get(f"/feed/v1/{rel}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.data == good
    assert cached.read_bytes() == good, "the cache was refilled from Redis"


def test_a_tampered_zone_file_in_a_hosts_cache_is_never_served_to_an_isp(core: Core, personas: Personas,
                                                                   client: Any) -> None:
    token = core.isps.add(personas.ada.actor, "acme")["feed_token"]
    activate(core, personas, "listed.example.test")
    v = publish(core).version
    rel = f"rpz/{v}.zone"
    good = core.artifacts.read(rel)
    (core.artifacts.root / rel).write_bytes(good.replace(b"listed", b"lisxed"))
    r = client.get(f"/feed/v1/{rel}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.data == good
