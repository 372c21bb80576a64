"""``blocklist worker``: the scheduled publisher.

Jobs (one at a time, in one thread, so they never overlap in a process;
the Redis publisher lock keeps several worker processes from publishing at
once):

* publish every ``BLOCKLIST_PUBLISH_INTERVAL`` seconds when the list changed;
* serve "publish now" requests from the API within about a second;
* expire entries not re-verified in time;
* re-sign the manifest before it expires, so a quiet feed never looks frozen;
* once a day, rebuild the list from every entry to prove the change feed
  missed nothing.

SIGTERM or SIGINT lets the running job finish, then the process exits.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from app.config import Settings
from app.core import Core
from app.errors import BlocklistError, ConfigError
from app.signing import load_key

log = logging.getLogger("blocklist.worker")


class Worker:
    """The jobs as small idempotent steps (each returns whether it did something)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.last_ok: dict[str, float] = {}

    def publish(self) -> bool:
        outcome = self.core.publisher.publish(reason="scheduled")
        if outcome.status == "published":
            log.info("published version %s %s in %.2fs", outcome.version, outcome.diff,
                     outcome.timings.get("total", 0.0))
        elif outcome.status == "held":
            log.warning("publication held: %s", outcome.message)
        return outcome.status == "published"

    def reconcile(self) -> bool:
        """A full rebuild from every entry, daily: the change feed is how
        publications stay cheap, and this proves it missed nothing."""
        outcome = self.core.publisher.publish(reason="daily reconciliation", full=True)
        if outcome.status == "published":
            log.warning("reconciliation published version %s %s: the change feed had missed changes",
                        outcome.version, outcome.diff)
        return outcome.status == "published"

    def requests(self) -> bool:
        outcome = self.core.publisher.serve_request()
        if outcome is not None:
            log.info("publish request: %s %s", outcome.status, outcome.version or "")
        return outcome is not None

    def expire(self) -> bool:
        n = self.core.curation.expire_due()
        if n:
            log.info("expired %d entries not re-verified in time", n)
        return n > 0

    def refresh_manifest(self) -> bool:
        return self.core.publisher.refresh_manifest()

    def heartbeat(self) -> bool:
        """Report whether this publisher holds the programme's current key
        (/readyz on every web host reads it)."""
        return self.core.publisher.check_key()

    def guarded(self, name: str, step: Callable[[], bool]) -> Callable[[], None]:
        def run() -> None:
            try:
                step()
                self.last_ok[name] = time.time()
                self._write_health()
            except BlocklistError as e:
                log.error("%s failed: %s", name, e.message)
            except Exception:
                log.exception("%s failed", name)

        return run

    def _write_health(self) -> None:
        health_dir = self.core.settings.health_dir
        if health_dir is None:
            return
        try:
            health_dir.mkdir(parents=True, exist_ok=True)
            path = Path(health_dir) / "worker"
            path.write_text(f"{int(time.time())}\n")
        except OSError:
            pass


def build_scheduler(worker: Worker, settings: Settings) -> BlockingScheduler:
    sched = BlockingScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        timezone="UTC",
    )
    sched.add_job(worker.guarded("publish", worker.publish), "interval", seconds=settings.publish_interval,
                  id="publish", next_run_time=_soon())
    sched.add_job(worker.guarded("requests", worker.requests), "interval", seconds=1, id="requests")
    sched.add_job(worker.guarded("reconcile", worker.reconcile), "interval", hours=24, id="reconcile")
    sched.add_job(worker.guarded("heartbeat", worker.heartbeat), "interval", seconds=30, id="heartbeat",
                  next_run_time=_soon())
    sched.add_job(worker.guarded("expire", worker.expire), "interval", seconds=settings.expire_interval,
                  id="expire", next_run_time=_soon())
    sched.add_job(worker.guarded("manifest", worker.refresh_manifest), "interval",
                  seconds=max(1, min(60, settings.manifest_refresh // 4)), id="manifest")
    return sched


def _soon() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=1)


def main(settings: Settings | None = None) -> None:
    from app.logs import setup_logging

    settings = settings or Settings.from_env()
    setup_logging(settings, "worker")
    core = Core.from_settings(settings)
    core.store.ping()
    if core.store.keys_raw() is None:
        # An empty or wrong Redis: a publisher would sign for no programme.
        raise ConfigError("BLOCKLIST_REDIS_URL: that Redis names no programme signing key; run "
                          "`blocklist keys init` on the publisher host once (it records the existing key)")
    key = load_key(settings.signing_key_file)
    core.publisher._key = key
    worker = Worker(core)
    sched = build_scheduler(worker, settings)

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current step, then exiting", signum)
        threading.Thread(target=sched.shutdown, kwargs={"wait": True}, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker started: publish every %ss, key %s", settings.publish_interval, key.public.id_hex)
    sched.start()
    log.info("worker stopped")


if __name__ == "__main__":
    try:
        main()
    except BlocklistError as e:
        print(f"blocklist worker: {e.message}", file=sys.stderr)
        sys.exit(1)
