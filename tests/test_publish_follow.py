"""A curation decision reaches the feed within seconds, with no "publish now":
a real worker process follows the change feed (debounced), and a burst of
approvals makes one or two versions, not one per approval."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from app import audit
from app.config import Settings
from app.core import Core
from tests.conftest import LiveServer, Personas
from tests.test_publishing import worker_env


def api(server: LiveServer, token: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(f"{server.url}/api/v1/{path}", method="POST" if payload is not None else "GET",
                                 data=json.dumps(payload).encode() if payload is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def feed_version(server: LiveServer, token: str) -> int | None:
    req = urllib.request.Request(f"{server.url}/feed/v1/manifest.json", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(json.loads(r.read())["version"])
    except urllib.error.HTTPError:
        return None


def start_worker(settings: Settings, processes: list[subprocess.Popen[bytes]], log: Path,
                 quiet: str = "1", quiet_max: str = "8") -> None:
    # The safety-net interval is an hour: only the change follower can publish in time.
    env = worker_env(settings, BLOCKLIST_PUBLISH_INTERVAL="3600", BLOCKLIST_PUBLISH_QUIET=quiet,
                     BLOCKLIST_PUBLISH_QUIET_MAX=quiet_max)
    processes.append(subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                                      stdout=log.open("wb"), stderr=subprocess.STDOUT))


def wait_for_version(server: LiveServer, token: str, above: int, timeout: float) -> tuple[int, float]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = feed_version(server, token)
        if v is not None and v > above:
            return v, time.monotonic() - t0
        time.sleep(0.05)
    pytest.fail(f"the feed showed no version above {above} within {timeout} s")


def test_an_approval_through_the_api_is_in_the_feed_within_seconds(
        core: Core, personas: Personas, settings: Settings, live_server: LiveServer, tmp_path: Path,
        processes: list[subprocess.Popen[bytes]]) -> None:
    token = core.isps.add(personas.ada.actor, "acme")["feed_token"]
    start_worker(settings, processes, tmp_path / "worker.log")
    first = api(live_server, personas.alice.token, "entries",
                {"value": "first.example.test", "type": "domain", "reason": "forum", "evidence_ref": "c-1"})
    api(live_server, personas.bruno.token, f"entries/{first['id']}/approve", {"reason": "checked"})
    v1, _ = wait_for_version(live_server, token, 0, 30)  # the worker may still be starting

    entry = api(live_server, personas.alice.token, "entries",
                {"value": "second.example.test", "type": "domain", "reason": "forum", "evidence_ref": "c-2"})
    api(live_server, personas.bruno.token, f"entries/{entry['id']}/approve", {"reason": "checked"})
    v2, took = wait_for_version(live_server, token, v1, 15)
    assert took < 5.0, f"published {took:.1f} s after the approval"
    snapshot = json.loads(core.artifacts.read(f"snapshots/{v2}.json"))
    assert "second.example.test" in [e["value"] for e in snapshot["entries"]]

    # A delisting travels the same way.
    api(live_server, personas.bruno.token, f"entries/{first['id']}/delist", {"reason": "site gone"})
    v3, took = wait_for_version(live_server, token, v2, 15)
    assert took < 5.0, f"published {took:.1f} s after the delisting"
    meta = core.publisher.version_meta(v3)
    assert meta is not None and meta["changes"]["removed"] == 1


def test_a_burst_of_two_hundred_approvals_makes_one_or_two_versions(
        core: Core, personas: Personas, settings: Settings, live_server: LiveServer, tmp_path: Path,
        processes: list[subprocess.Popen[bytes]]) -> None:
    token = core.isps.add(personas.ada.actor, "acme")["feed_token"]
    core.curation.set_policy(personas.ada.actor, {"guard_add_pct": 100000.0})
    seed = core.curation.submit(personas.alice.actor, "seed.example.test")
    core.curation.act(personas.bruno.actor, seed.id, "approve")
    ids = [core.curation.submit(personas.alice.actor, f"burst{i}.example.test").id for i in range(200)]
    start_worker(settings, processes, tmp_path / "worker.log", quiet="0.5", quiet_max="10")  # the defaults
    v1, _ = wait_for_version(live_server, token, 0, 30)

    for i in ids:
        api(live_server, personas.bruno.token, f"entries/{i}/approve", {"reason": "checked"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        latest = core.publisher.latest()
        if latest and latest["count"] == 201:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the burst was not published")
    time.sleep(3)  # a wrongly eager worker would still be publishing
    published = audit.search(core.store, action="publication.publish", limit=100)[0]
    after_burst = [r for r in published if int(r.target.split(":")[1]) > v1]
    assert 1 <= len(after_burst) <= 2, [r.target for r in after_burst]


def test_a_change_made_while_a_run_found_nothing_to_publish_is_published_after_the_quiet_period(
        core: Core, settings: Settings) -> None:
    """A run that found nothing new consumed what it read; a change that came
    meanwhile leaves the feed as long as before, and must not be taken for
    the changes of a held run (which wait for the retry time, an hour here)."""
    import threading
    from dataclasses import replace

    from apscheduler.schedulers.blocking import BlockingScheduler

    from app.store import K
    from workers.scheduler import Follower, Worker

    worker = Worker(core)
    runs: list[float] = []

    def publish_change() -> bool:
        runs.append(time.monotonic())
        if len(runs) == 1:
            # Nothing new in what this run read; a curator's change lands as it ends.
            core.store.changes.consume(core.store.changes.count())
            core.store.r.rpush(K.dirty, "2")
            worker.last_status = "unchanged"
            return False
        core.store.changes.consume(core.store.changes.count())
        worker.last_status = "published"
        return True

    worker.publish_change = publish_change  # type: ignore[method-assign]
    follower = Follower(worker, BlockingScheduler(), replace(settings, publish_quiet=0.2, publish_interval=3600))
    follower._run_publish = follower._publish_step  # type: ignore[method-assign]
    core.store.r.rpush(K.dirty, "1")
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        follower.stop.set()
        thread.join(5)
    assert len(runs) >= 2, "the change that came during the run that found nothing was never published"
    assert runs[1] - runs[0] < 3
