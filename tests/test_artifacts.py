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


def test_large_files_reach_the_publishing_hosts_cache_in_the_background_and_are_never_read_half_written(
        core: Core, personas: Personas, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from app import artifacts

    activate(core, personas, "a.example.test", "b.example.test")
    monkeypatch.setattr(core.artifacts, "background_bytes", 1)
    started = threading.Event()
    release = threading.Event()
    real_write = artifacts._write_file

    def slow_write(path: Path, parts: list[bytes], mode: int = 0o644) -> None:
        if threading.current_thread().name == "artifact-cache":
            started.set()
            release.wait(10)
        real_write(path, parts, mode)

    monkeypatch.setattr(artifacts, "_write_file", slow_write)
    v = publish(core).version
    rel = f"snapshots/{v}.json"
    assert started.wait(10), "the cache files are written by a background thread"
    assert not (core.artifacts.root / rel).exists(), "publish returned before the file was written"
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(core.artifacts.path(rel).read_bytes()))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive(), "a request for the file waits for the writer"
    release.set()
    reader.join(10)
    core.artifacts.settle()
    assert got == [core.artifacts.read(rel)]
    assert (core.artifacts.root / rel).read_bytes() == core.artifacts.read(rel)
