"""The artifact store: bytes in Redis, a disposable cache on each host."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from app.artifacts import ArtifactStore
from app.core import Core
from app.errors import NotFoundError
from tests.conftest import Personas, publish
from tests.test_publishing import activate


def test_an_artifact_not_committed_by_a_publication_is_not_served(core: Core, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache", core.store)
    staging = store.stage()
    staging.write("snapshots/9.json", b"{}")  # uploaded, never committed
    assert not store.exists("snapshots/9.json")
    with pytest.raises(NotFoundError):
        store.read("snapshots/9.json")
    with pytest.raises(NotFoundError):
        store.path("../../etc/passwd")


def test_retention_empties_every_hosts_cache_of_what_it_removed(core: Core, personas: Personas, settings,
                                                                 tmp_path: Path) -> None:
    core.settings = replace(settings, retain_snapshots=1, retain_deltas=1)
    core.publisher.settings = core.settings
    web = ArtifactStore(tmp_path / "web-cache", core.store)
    activate(core, personas, "a.example.test")
    publish(core)
    old = [web.path("snapshots/1.json")]
    activate(core, personas, "b.example.test")
    v2 = publish(core).version
    old.append(web.path(f"deltas/1/{v2}.json"))
    for i in range(3):
        activate(core, personas, f"more{i}.example.test")
        publish(core)
    v = core.publisher.latest()["version"]  # type: ignore[index]
    current = web.path(f"snapshots/{v}.json")
    assert not core.artifacts.exists("snapshots/1.json")
    assert web.sweep_cache() >= 2
    assert not any(p.exists() for p in old)
    assert current.exists()
    assert hashlib.sha256(current.read_bytes()).hexdigest() == core.artifacts.ref(f"snapshots/{v}.json").sha256  # type: ignore[union-attr]
