"""Acknowledged curator actions survive ``kill -9`` of Redis.

Debian's redis-server runs deploy/redis.conf (AOF, ``appendfsync always``)
with the shipped ACL; the app runs under gunicorn with
deploy/gunicorn.conf.py as the ``blocklist-app`` Redis user. Threads submit
entries through the API while Redis is killed at a random moment and
started again on the same files. Every submission that got a 2xx answer
must be there afterwards, exactly as acknowledged, and the audit chain must
still verify. The same run against a Redis without the AOF loses
acknowledged submissions, which shows the check can tell.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app import audit
from app.errors import NotFoundError
from tests.test_deploy_gunicorn import Gunicorn, http
from tests.test_deploy_redis import People, ShippedRedis, make_core

THREADS = 3
#: Acknowledged submissions to see before the kill, and again after the restart.
ACKED_BEFORE = ACKED_AFTER = 20


@dataclass
class Attempt:
    value: str
    status: int | None  # None: no HTTP answer at all
    entry_id: int | None
    sent: float
    at: float

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def burst(url: str, token: str, stop: threading.Event, prefix: str, out: list[Attempt]) -> None:
    i = 0
    while not stop.is_set() and i < 2000:
        value = f"{prefix}-{i}.test"
        i += 1
        sent = time.monotonic()
        try:
            reply = http("POST", url + "/api/v1/entries", headers={"Authorization": f"Bearer {token}"},
                         body={"value": value, "type": "domain", "subdomains": True, "category": "csam",
                               "reason": "seen in a crawl", "evidence_ref": "case-9"}, timeout=20)
            entry_id = reply.json().get("id") if 200 <= reply.status < 300 else None
            out.append(Attempt(value, reply.status, entry_id, sent, time.monotonic()))
        except OSError:
            out.append(Attempt(value, None, None, sent, time.monotonic()))


def wait_until(probe: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def run_crash(tmp_path: Path, redis_extra: list[str], seed: int) -> tuple[list[Attempt], float, float, ShippedRedis,
                                                                      Gunicorn]:
    """Start everything, burst, kill -9 Redis at a random moment, restart it; returns the attempts."""
    rng = random.Random(seed)
    keeps_data = "--appendonly" not in redis_extra
    server = ShippedRedis(tmp_path / "redis", extra=redis_extra).start()
    core = make_core(server.url("app"), tmp_path / "data")
    people = People(core)
    core.store.r.close()
    env = {
        "BLOCKLIST_REDIS_URL": server.url("app"),
        "BLOCKLIST_DATA_DIR": str(tmp_path / "data"),
        "BLOCKLIST_ARTIFACT_DIR": str(tmp_path / "data" / "artifacts"),
        "BLOCKLIST_SIGNING_KEY_FILE": str(tmp_path / "data" / "keys" / "blocklist.key"),
    }
    web = Gunicorn(tmp_path / "web", env).start()
    stop = threading.Event()
    try:
        attempts: list[Attempt] = []
        threads = [threading.Thread(target=burst, args=(web.url, people.alice_token, stop, f"t{n}", attempts))
                   for n in range(THREADS)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(a.acked for a in list(attempts)) >= ACKED_BEFORE, "submissions before the kill")
        time.sleep(rng.uniform(0.0, 1.0))
        killed_at = time.monotonic()
        server.kill()
        time.sleep(rng.uniform(0.2, 0.8))
        server.start()
        restarted_at = time.monotonic()
        # Without the AOF the accounts are gone too: then any answer shows the service is back.
        wait_until(lambda: sum((a.acked or not keeps_data) and a.status is not None and a.sent > restarted_at
                               for a in list(attempts)) >= ACKED_AFTER, "submissions after the restart")
        stop.set()
        for t in threads:
            t.join(60)
    except BaseException:
        stop.set()
        web.stop()
        server.stop()
        raise
    return attempts, killed_at, restarted_at, server, web


def test_every_acknowledged_submission_survives_kill_9_of_redis(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    attempts, killed_at, _restarted_at, server, web = run_crash(tmp_path, [], seed)
    try:
        acked = [a for a in attempts if a.acked]
        # The kill landed in the middle of the traffic: some request was on its way.
        assert [a for a in attempts if a.sent < killed_at < a.at], f"no request in flight at the kill (seed {seed})"

        core = make_core(server.url("app"), tmp_path / "data")
        missing = []
        for a in acked:
            assert a.entry_id is not None
            try:
                entry = core.curation.get(a.entry_id)
            except NotFoundError:
                missing.append(a.value)
                continue
            assert entry.value == a.value
            assert entry.status.value == "pending"
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged submissions lost (seed {seed}): {missing[:5]}"
        assert audit.verify(core.store).ok
        # The Redis password never reached the web tier's logs.
        assert server.passwords["app"] not in web.log.read_text()
        core.store.r.close()
    finally:
        web.stop()
        server.stop()


def test_without_the_aof_the_same_crash_loses_acknowledged_submissions(tmp_path: Path) -> None:
    attempts, killed_at, _restarted_at, server, web = run_crash(tmp_path, ["--appendonly", "no"], 7)
    try:
        acked_before = [a for a in attempts if a.acked and a.at < killed_at]
        assert acked_before
        core = make_core(server.url("ops"), tmp_path / "data")
        lost = 0
        for a in acked_before:
            assert a.entry_id is not None
            # Without the AOF the id counter restarts too, so a later
            # submission may reuse the id: only the same value counts as kept.
            try:
                kept = core.curation.get(a.entry_id).value == a.value
            except NotFoundError:
                kept = False
            lost += not kept
        assert lost == len(acked_before)
        core.store.r.close()
    finally:
        web.stop()
        server.stop()
