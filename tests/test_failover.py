"""Failover between real worker processes on "hosts" with their own data
directories: a standby holding the same key takes over within a minute when
the active worker dies; a host without the key never publishes and says so."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import audit
from app.core import Core
from app.publishing import LOCK_TTL_MS
from tests.conftest import Personas
from tests.test_publishing import activate


def worker(core: Core, data: Path, processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update({"BLOCKLIST_REDIS_URL": core.settings.redis_url or "", "BLOCKLIST_DATA_DIR": str(data),
                "BLOCKLIST_LOG_FORMAT": "text", "BLOCKLIST_PUBLISH_INTERVAL": "3600"})
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                            stdout=(data / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    processes.append(proc)
    return proc


def wait_version(core: Core, above: int, timeout: float) -> tuple[dict, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        latest = core.publisher.latest()
        if latest and latest["version"] > above:
            meta = core.publisher.version_meta(latest["version"])
            assert meta is not None
            return meta, time.monotonic() - t0
        time.sleep(0.1)
    pytest.fail(f"no version above {above} within {timeout} s")


def test_a_standby_worker_takes_over_within_a_minute_when_the_active_one_is_killed(
        core: Core, personas: Personas, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    key = core.settings.signing_key_file
    for host in ("a", "b"):
        (tmp_path / host / "keys").mkdir(parents=True)
        for f in key.parent.iterdir():
            shutil.copy2(f, tmp_path / host / "keys" / f.name)
    procs = {p.pid: p for p in (worker(core, tmp_path / "a", processes), worker(core, tmp_path / "b", processes))}
    activate(core, personas, "one.example.test")
    meta, _ = wait_version(core, 0, 30)
    active_pid = int(meta["publisher"].rsplit(":", 1)[1])
    assert active_pid in procs
    [standby_pid] = [pid for pid in procs if pid != active_pid]

    # The active worker dies as if in the middle of a publication: SIGKILL,
    # and its lock left behind with the expiry a live publisher keeps.
    procs[active_pid].send_signal(signal.SIGKILL)
    procs[active_pid].wait(10)
    core.store.r.set("bl:pub:lock", "killed-publisher", px=LOCK_TTL_MS)
    t0 = time.monotonic()
    activate(core, personas, "two.example.test")
    meta2, _ = wait_version(core, meta["version"], 60)
    assert time.monotonic() - t0 < 60
    assert int(meta2["publisher"].rsplit(":", 1)[1]) == standby_pid
    assert meta2["count"] == 2

    # And it keeps following changes, fast, now that the lock is its own.
    activate(core, personas, "three.example.test")
    meta3, took = wait_version(core, meta2["version"], 15)
    assert took < 6 and meta3["count"] == 3
    versions = sorted(int(r.target.split(":")[1]) for r in
                      audit.search(core.store, action="publication.publish", limit=100)[0])
    assert versions == sorted(set(versions)) and versions[-1] == meta3["version"]
    assert versions == list(range(versions[0], versions[0] + len(versions)))


def test_a_worker_without_the_signing_key_never_publishes_and_says_so(
        core: Core, personas: Personas, client, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    proc = worker(core, tmp_path / "keyless", processes)
    log = tmp_path / "keyless" / "worker.log"
    deadline = time.monotonic() + 30
    while "never publishes" not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    activate(core, personas, "one.example.test")
    deadline = time.monotonic() + 30
    while True:
        checks = json.loads(client.get("/readyz").data)["checks"]
        if "never publishing" in checks.get("workers", ""):
            break
        assert time.monotonic() < deadline, checks
        time.sleep(0.2)
    assert f":{proc.pid}" in checks["workers"]
    time.sleep(4)  # more than the quiet period: a worker that could publish would have
    assert core.publisher.latest() is None
    assert proc.poll() is None, "the keyless worker keeps running (it still expires entries)"
