"""``blocklist worker``: the scheduled publisher.

Jobs (one at a time, in one thread, so they never overlap in a process;
the Redis publisher lock keeps several worker processes from publishing at
once):

* publish a curation change within seconds: a follower thread wakes on the
  change feed's signal, waits until the feed has been quiet for
  ``BLOCKLIST_PUBLISH_QUIET`` seconds (at most ``BLOCKLIST_PUBLISH_QUIET_MAX``
  after the first change, so a bulk approval makes one version), then runs
  the publish job at once;
* publish every ``BLOCKLIST_PUBLISH_INTERVAL`` seconds when the list changed
  (the safety net);
* compact: after a publication (once it is served) and every minute, write
  the latest version's full snapshot and zone file when the delta chain
  since the last ones is due (``BLOCKLIST_COMPACT_*``);
* serve "publish now" requests from the API within about a second;
* expire entries not re-verified in time;
* re-sign the manifest before it expires, so a quiet feed never looks frozen;
* once a day, rebuild the list from every entry to prove the change feed
  missed nothing.

Failover: any number of workers may run on several hosts. Whichever takes
the publisher lock publishes; the lock expires ``LOCK_TTL_MS`` after a
worker dies holding it, so a standby holding the same signing key takes
over within a minute. A worker without the signing key never publishes (it
still expires entries) and says so at start and in ``/readyz``.

SIGTERM or SIGINT lets the running job finish, then the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
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
from app.signing import SecretKey, load_key

log = logging.getLogger("blocklist.worker")


class Worker:
    """The jobs as small idempotent steps (each returns whether it did something)."""

    def __init__(self, core: Core, signs: bool = True) -> None:
        self.core = core
        self.signs = signs
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        core.publisher.name = self.name
        if signs:
            core.publisher.prepare()
        self.last_ok: dict[str, float] = {}
        self.last_status = ""

    def publish(self, reason: str = "scheduled") -> bool:
        outcome = self.core.publisher.publish(reason=reason)
        self.last_status = outcome.status
        if outcome.status == "published":
            log.info("published version %s %s in %.2fs", outcome.version, outcome.diff,
                     outcome.timings.get("total", 0.0))
        elif outcome.status == "held":
            log.warning("publication held: %s", outcome.message)
        if outcome.status == "published":
            # The version is already served; now, if due, its full files.
            self.compact()
        return outcome.status == "published"

    def publish_change(self) -> bool:
        return self.publish(reason="change")

    def compact(self) -> bool:
        """Write the latest version's full snapshot and zone file when the
        delta chain since the last ones has grown enough (size, length, age)."""
        outcome = self.core.publisher.compact()
        return outcome.status == "compacted"

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
        """Report this worker, and whether it holds the programme's current key
        (/readyz on every web host reads both)."""
        can_sign = self.signs and self.core.publisher.check_key()
        key_id = self.core.publisher.key.public.id_hex if can_sign else None
        self.core.store.health.report_worker(self.name, {"signs": can_sign, "key_id": key_id}, WORKER_REPORT_TTL)
        return can_sign or not self.signs

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


WORKER_REPORT_TTL = 90


class Follower:
    """Wakes on the change feed's signal and runs the publish job once the
    feed has been quiet long enough (debounce), in the scheduler's thread."""

    def __init__(self, worker: Worker, sched: BlockingScheduler, settings: Settings) -> None:
        self.worker = worker
        self.sched = sched
        self.quiet = settings.publish_quiet
        self.quiet_max = settings.publish_quiet_max
        self.retry = max(5.0, float(settings.publish_interval))
        self.stop = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, name="follower", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        store = self.worker.core.store
        pubsub = None
        first = last_change = 0.0
        seen = 0
        tried: tuple[int, float] | None = None  # count at the last attempt that did not publish, and when
        while not self.stop.is_set():
            try:
                if pubsub is None:
                    pubsub = store.changes.subscribe()
                # Wake on the signal; the timeout keeps the quiet-period clock running.
                pubsub.get_message(timeout=min(0.25, self.quiet / 2) if self.quiet else 0.25)
                n = store.changes.count()
            except Exception as e:  # Redis away: try again shortly
                log.warning("change follower: %s", e)
                pubsub = None
                self.stop.wait(1.0)
                continue
            now = time.monotonic()
            if n == 0:
                seen, first, tried = 0, 0.0, None
                continue
            if seen == 0:
                first = last_change = now
            elif n != seen:
                last_change = now
            seen = n
            if tried is not None and tried[0] == n and now - tried[1] < self.retry:
                continue  # held or refused: wait for another change or the retry time
            if now - last_change >= self.quiet or now - first >= self.quiet_max:
                self._run_publish()
                # Held, refused or failed: the changes are still pending; wait for another
                # change (or the retry time) before trying them again. Not after "unchanged":
                # that run consumed what it read, so any count now is of newer changes,
                # which may well be as many as before.
                if store.changes.count() >= n and self.worker.last_status not in ("published", "unchanged",
                                                                                  "refreshed"):
                    tried = (n, time.monotonic())
                    if self.worker.last_status == "busy":
                        # Another worker holds the lock: look again in a moment.
                        tried = (n, time.monotonic() - self.retry + 2.0)
                seen, first = 0, 0.0
        if pubsub is not None:
            pubsub.close()

    def _run_publish(self) -> None:
        self.done.clear()
        self.worker.last_status = ""  # stays empty if the step fails: then retry later, not at once
        self.sched.add_job(self._publish_step, id="publish-change", replace_existing=True)
        self.done.wait(600)

    def _publish_step(self) -> None:
        try:
            self.worker.guarded("publish", self.worker.publish_change)()
        finally:
            self.done.set()


def build_scheduler(worker: Worker, settings: Settings) -> BlockingScheduler:
    sched = BlockingScheduler(
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        timezone="UTC",
    )
    sched.add_job(worker.guarded("heartbeat", worker.heartbeat), "interval", seconds=30, id="heartbeat",
                  next_run_time=_soon())
    sched.add_job(worker.guarded("expire", worker.expire), "interval", seconds=settings.expire_interval,
                  id="expire", next_run_time=_soon())
    if not worker.signs:
        return sched
    sched.add_job(worker.guarded("publish", worker.publish), "interval", seconds=settings.publish_interval,
                  id="publish", next_run_time=_soon())
    sched.add_job(worker.guarded("requests", worker.requests), "interval", seconds=1, id="requests")
    sched.add_job(worker.guarded("compact", worker.compact), "interval", seconds=60, id="compact")
    sched.add_job(worker.guarded("reconcile", worker.reconcile), "interval", hours=24, id="reconcile")
    sched.add_job(worker.guarded("manifest", worker.refresh_manifest), "interval",
                  seconds=max(1, min(60, settings.manifest_refresh // 4)), id="manifest")
    return sched


def load_signing_key(settings: Settings) -> SecretKey | None:
    """The signing key, or None when this host has none (it then never publishes)."""
    if not settings.signing_key_file.exists():
        return None
    return load_key(settings.signing_key_file)


def _soon() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=1)


def main(settings: Settings | None = None) -> None:
    from app.logs import setup_logging

    settings = settings or Settings.from_env()
    setup_logging(settings, "worker")
    core = Core.from_settings(settings)
    core.store.ping()
    if core.store.programme_keys.raw() is None:
        # An empty or wrong Redis: a publisher would sign for no programme.
        raise ConfigError("BLOCKLIST_REDIS_URL: that Redis names no programme signing key; run "
                          "`blocklist keys init` on the publisher host once (it records the existing key)")
    key = load_signing_key(settings)
    if key is not None:
        core.publisher._key = key
    worker = Worker(core, signs=key is not None)
    sched = build_scheduler(worker, settings)
    follower = Follower(worker, sched, settings) if key is not None else None

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current step, then exiting", signum)
        if follower is not None:
            follower.stop.set()
            follower.done.set()
        threading.Thread(target=sched.shutdown, kwargs={"wait": True}, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if key is None:
        log.warning("worker started WITHOUT the signing key (%s does not exist): it expires entries but never "
                    "publishes; a worker holding the key must run somewhere", settings.signing_key_file)
    else:
        log.info("worker started: publishes changes after %gs of quiet (at most %gs), every %ss as a safety "
                 "net, key %s", settings.publish_quiet, settings.publish_quiet_max, settings.publish_interval,
                 key.public.id_hex)
    if follower is not None:
        follower.start()
    sched.start()
    log.info("worker stopped")


if __name__ == "__main__":
    try:
        main()
    except BlocklistError as e:
        print(f"blocklist worker: {e.message}", file=sys.stderr)
        sys.exit(1)
