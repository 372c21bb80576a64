"""Publication across a Sentinel failover, with real processes.

A real ``blocklist worker`` publishes through ``redis+sentinel://`` while
curators approve a stream of entries; in the middle, the primary is
replaced (``SENTINEL FAILOVER``, the primary killed with SIGKILL, or paused
with SIGSTOP and resumed once the replica has been promoted). Afterwards, on
the new primary: version numbers are unique and increasing, ``latest`` is
the highest version, every file the manifest names is there, every
approval a curator saw succeed is in the published list, no version number
that anyone saw was reused for other content, and the worker goes on
publishing within seconds.

Replication is asynchronous: a primary that has just been replaced keeps
accepting writes from clients still connected to it until Sentinel turns it
into a replica (several seconds), and those writes are dropped when it
resynchronises. The ``sentinel-failover`` and ``sigstop`` variants, and the
test of another host numbering the next version, fail unless the service
waits for a replica to confirm each committed step
(``BLOCKLIST_REDIS_WAIT_REPLICAS``): without it, hundreds of acknowledged
approvals vanish, and a standby publishes a version number already shown
with other content.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app import audit
from app.core import Core
from app.errors import BlocklistError
from app.publishing import Publisher
from app.store import Store
from tests.test_deploy_redis import People, ShippedRedis, list_domain, make_core
from tests.test_sentinel import SERVICE, Cluster, cluster, primary_and_replica, wait_for  # noqa: F401 (fixture used by name)

#: What the product is told about its replicas (the tests run one replica).
WAIT = {"redis_wait_replicas": 1, "redis_wait_timeout": 1.0}
WAIT_ENV = {"BLOCKLIST_REDIS_WAIT_REPLICAS": "1", "BLOCKLIST_REDIS_WAIT_TIMEOUT": "1"}


def start_worker(url: str, data: Path, keys: Path, processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update({
        "BLOCKLIST_REDIS_URL": url, "BLOCKLIST_DATA_DIR": str(data), "BLOCKLIST_LOG_FORMAT": "text",
        "BLOCKLIST_PUBLISH_INTERVAL": "3600", "BLOCKLIST_PUBLISH_QUIET": "0.1",
        "BLOCKLIST_PUBLISH_QUIET_MAX": "0.5", "BLOCKLIST_GUARD_ADD_PCT": "1000",
        "BLOCKLIST_GUARD_MIN_CHANGES": "1000", **WAIT_ENV,
    })
    shutil.copytree(keys, data / "keys")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                            stdout=(data / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    processes.append(proc)
    return proc


def published_values(core: Core) -> tuple[int, set[str]]:
    """The latest version and the values it lists, rebuilt from the stored artifacts."""
    latest = core.publisher.latest_record()
    if latest is None:
        return 0, set()
    core.publisher._state = None
    state = core.publisher._load_state(latest)
    return latest.version, {json.loads(line)["value"] for line in state.lines}


class Curators(threading.Thread):
    """Submit and approve one entry after another; remember each approval that succeeded."""

    def __init__(self, core: Core, people: People) -> None:
        super().__init__(daemon=True)
        self.core, self.people = core, people
        self.acknowledged: dict[int, str] = {}
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            value = f"w{i}.failover.test"
            try:
                entry_id = list_domain(self.core, self.people, value)
            except (BlocklistError, redis.exceptions.RedisError):
                self.failed += 1  # not acknowledged: it may or may not have happened
                time.sleep(0.1)
                continue
            self.acknowledged[entry_id] = value
            time.sleep(0.03)


class Observer(threading.Thread):
    """Watch ``latest`` as a feed client would, recording what each version number stood for."""

    def __init__(self, core: Core) -> None:
        super().__init__(daemon=True)
        self.core = core
        self.seen: dict[int, str] = {}
        self.reused: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                raw = self.core.store.pubs.latest_raw()
            except (BlocklistError, redis.exceptions.RedisError):
                time.sleep(0.05)
                continue
            if raw:
                latest = json.loads(raw)
                v, digest = int(latest["version"]), str(latest["entries_digest"])
                if self.seen.setdefault(v, digest) != digest:
                    self.reused.append(f"version {v} was {self.seen[v]} and then {digest}")
            time.sleep(0.02)


def check_published_state(core: Core, observer: Observer) -> int:
    """The invariants of docs/operations.md, read from the store as it now stands."""
    latest = core.publisher.latest()
    assert latest is not None
    records = audit.search(core.store, action="publication.publish", limit=10_000)[0]
    in_order = [int(r.target.split(":")[1]) for r in reversed(records)]
    assert len(in_order) >= 5, in_order
    assert all(a < b for a, b in itertools.pairwise(in_order)), f"versions out of order: {in_order}"
    stored = sorted(core.store.pubs.version_numbers(10_000))
    assert stored == sorted(set(stored)) == in_order
    assert int(latest["version"]) == stored[-1] >= max(observer.seen), (latest["version"], stored[-1])
    for v in stored:
        assert core.publisher.record(v) is not None, f"version {v} has no record"
    # Every file the manifest names is stored, with the sha256 it names.
    manifest = core.publisher.manifest()
    assert manifest is not None
    body = json.loads(manifest[0])
    assert body["version"] == latest["version"]
    for art in body["artifacts"]:
        data = core.publisher.artifacts.read(art["path"])
        assert hashlib.sha256(data).hexdigest() == art["sha256"], art["path"]
        assert core.publisher.artifacts.read(art["path"] + ".minisig")
    # A version number anyone saw kept its content (or vanished, never reused).
    assert not observer.reused, observer.reused
    for v, digest in observer.seen.items():
        pub = core.publisher.record(v)
        assert pub is None or pub.entries_digest == digest, f"version {v} now stands for other content"
    assert audit.verify(core.store).ok
    return int(latest["version"])


def current_primary(nodes: Cluster) -> ShippedRedis:
    """The node Sentinel names now (a busy test machine may see a second failover)."""
    port = nodes.sentinel.primary_port()
    return nodes.replica if port == nodes.replica.port else nodes.primary


def replicated(nodes: Cluster) -> bool:
    with current_primary(nodes).client("ops") as client:
        info = client.info("replication")
    return bool(info["role"] == "master" and info.get("connected_slaves", 0) >= 1
                and info.get("slave0", {}).get("state") == "online")


@pytest.mark.parametrize("how", ["sentinel-failover", "sigkill", "sigstop"])
def test_a_failover_during_publication_loses_no_acknowledged_change_and_reuses_no_version(
        how: str, cluster: Cluster, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:  # noqa: F811
    url = cluster.url()
    # 1 s (the fixture's) is so short that a loaded machine sees the new primary down too.
    cluster.sentinel.client.execute_command("SENTINEL", "SET", SERVICE, "down-after-milliseconds", "2000")
    core = make_core(url, tmp_path / "curators", **WAIT)
    people = People(core)
    proc = start_worker(url, tmp_path / "worker", tmp_path / "curators" / "keys", processes)
    watcher = make_core(url, tmp_path / "watcher", **WAIT)
    curators, observer = Curators(core, people), Observer(watcher)
    curators.start()
    observer.start()
    try:
        wait_for(lambda: len(observer.seen) >= 5, "five versions before the failover")
        primary = cluster.primary
        assert primary.proc is not None
        if how == "sentinel-failover":
            cluster.sentinel.client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        elif how == "sigkill":
            primary.kill()
        else:
            primary.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: cluster.sentinel.primary_port() == cluster.replica.port, "the replica's promotion")
        # The old primary comes back (resumed, or restarted) still believing
        # it is the primary, with its clients' requests waiting, until
        # Sentinel turns it into a replica of the new one.
        if how == "sigstop":
            primary.proc.send_signal(signal.SIGCONT)
        elif how == "sigkill":
            primary.start()
        wait_for(lambda: replicated(cluster), "a primary with a replica again", 40)
        time.sleep(2)  # more approvals and publications on the new primary
    finally:
        curators.stop.set()
        curators.join(30)
    assert proc.poll() is None, (tmp_path / "worker" / "worker.log").read_text()[-3000:]
    assert len(curators.acknowledged) >= 20, curators.acknowledged

    # A change made now is published within seconds by the same worker.
    after = wait_for(lambda: list_domain(core, people, "after.failover.test"), "an approval after the failover")
    t0 = time.monotonic()
    try:
        wait_for(lambda: "after.failover.test" in published_values(watcher)[1], "the worker to publish again", 15)
    except AssertionError as e:
        holder, ttl = watcher.store.pubs.lock_holder(), watcher.store.r.pttl("bl:pub:lock")
        log = (tmp_path / "worker" / "worker.log").read_text()[-2000:]
        raise AssertionError(f"{e}; publisher lock held by {holder} for {ttl} ms more; worker log:\n{log}") from e
    took = time.monotonic() - t0
    observer.stop.set()
    observer.join(10)
    assert took < 10, took
    assert proc.poll() is None

    # The new primary, read directly.
    new_primary = make_core(current_primary(cluster).url("app"), tmp_path / "reader")
    assert new_primary.store.r.info("replication")["role"] == "master"
    version = check_published_state(new_primary, observer)
    meta = new_primary.publisher.version_meta(version)
    assert meta is not None and meta["publisher"].endswith(f":{proc.pid}")
    _, values = published_values(new_primary)
    lost = {v for v in curators.acknowledged.values() if v not in values}
    assert not lost, f"{len(lost)} acknowledged approvals are not published: {sorted(lost)[:10]}"
    for entry_id in [*curators.acknowledged, after]:
        assert new_primary.curation.get(entry_id).status.value == "active"


# --------------------------------------------------------------------------- the high-water mark


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ShippedRedis, ShippedRedis]]:
    """A primary and its replica, no Sentinel: the test promotes the replica itself."""
    primary, replica = primary_and_replica(tmp_path)
    try:
        primary.start()
        replica.start()
        wait_for(lambda: replica.client("ops").info("replication")["master_link_status"] == "up", "replication")
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def test_a_version_committed_on_a_replaced_primary_is_never_reused_by_another_host(
        pair: tuple[ShippedRedis, ShippedRedis], tmp_path: Path) -> None:
    """Host A publishes to the primary it is still connected to after the
    replica was promoted (what Sentinel does first: REPLICAOF NO ONE on the
    replica); host B, following the new primary, publishes next. The number
    A was told it published must not come back with other content."""
    primary, replica = pair
    a = make_core(primary.url("app"), tmp_path / "a", **WAIT)
    people = People(a)
    list_domain(a, people, "one.example.test")
    assert a.publisher.publish().status == "published"
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
    on_replica = Store.from_url(replica.url("app"))
    wait_for(on_replica.pubs.latest_raw, "the first version on the replica")

    list_domain(a, people, "two.example.test")
    wait_for(on_replica.changes.count, "the change on the replica")
    replica.client("ops").execute_command("REPLICAOF", "NO", "ONE")
    try:
        outcome = a.publisher.publish()
        a_says = outcome.version if outcome.status == "published" else None
    except BlocklistError:
        a_says = None  # refused: nothing was published
    # The new primary has no replica yet (the old one has not rejoined): B waits for none.
    b = make_core(replica.url("app"), tmp_path / "b")
    list_domain(b, People.existing(b), "three.example.test")
    b_outcome = b.publisher.publish()
    assert b_outcome.status == "published", b_outcome
    if a_says is not None:
        assert b_outcome.version != a_says, (
            f"version {a_says} was published twice: on the old primary and, with other content, on the new one")
    assert b_outcome.version is not None and b_outcome.version > 1


class LostReply(Publisher):
    """A publisher whose connection drops while its commit is in flight."""

    mode = "after"

    def _commit(self, *args: Any, **kwargs: Any) -> None:
        if self.mode == "before":
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        super()._commit(*args, **kwargs)
        raise redis.exceptions.ConnectionError("Connection closed by server.")


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_publisher_that_loses_redis_mid_commit_never_publishes_a_number_twice(
        mode: str, pair: tuple[ShippedRedis, ShippedRedis], tmp_path: Path) -> None:
    primary, _ = pair
    core = make_core(primary.url("app"), tmp_path / "a")
    people = People(core)
    list_domain(core, people, "one.example.test")
    assert core.publisher.publish().status == "published"
    flaky = LostReply(core.store, core.settings, core.curation, key=core.publisher._key)
    flaky.mode = mode
    list_domain(core, people, "two.example.test")
    with pytest.raises(redis.exceptions.ConnectionError):
        flaky.publish()
    committed = core.publisher.latest()
    assert committed is not None
    seen = {int(committed["version"]): committed["entries_digest"]}
    list_domain(core, people, "three.example.test")
    # The same host again (a restarted worker), then another host.
    shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
    for publisher in (Publisher(core.store, core.settings, core.curation, key=core.publisher._key),
                      make_core(primary.url("app"), tmp_path / "b").publisher):
        outcome = publisher.publish()
        assert outcome.status == "published", outcome
        assert outcome.version is not None and outcome.version not in seen
        latest = publisher.latest()
        assert latest is not None
        seen[outcome.version] = latest["entries_digest"]
        list_domain(core, people, f"more-{outcome.version}.example.test")
    assert sorted(seen) == list(seen)


def test_a_publisher_whose_lock_release_was_lost_publishes_again_at_once(
        pair: tuple[ShippedRedis, ShippedRedis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis went away as the publisher released its lock (or the release went
    to a primary that was then replaced): the lock stays in the store for up
    to LOCK_TTL_MS. The same publisher takes it back instead of waiting;
    any other publisher still waits."""
    primary, _ = pair
    core = make_core(primary.url("app"), tmp_path / "a")
    people = People(core)
    list_domain(core, people, "one.example.test")
    real_release = core.store.pubs.lock_release

    def lost(token: str) -> bool:
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(core.store.pubs, "lock_release", lost)
    with pytest.raises(redis.exceptions.ConnectionError):
        core.publisher.publish()
    monkeypatch.setattr(core.store.pubs, "lock_release", real_release)
    assert core.store.pubs.lock_holder() is not None, "the lock was left behind"
    shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
    other = make_core(primary.url("app"), tmp_path / "b")
    list_domain(core, people, "two.example.test")
    assert other.publisher.publish().status == "busy"
    outcome = core.publisher.publish()
    assert outcome.status == "published", outcome
    assert core.store.pubs.lock_holder() is None
