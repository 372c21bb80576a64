"""``BLOCKLIST_REDIS_URL=redis+sentinel://...``: the store follows a failover.

A primary and a replica (deploy/redis.conf with the shipped ACL) and a
Sentinel (deploy/sentinel.conf) run on loopback; the test changes only
ports, directories, passwords and, to keep it short, the time after which
a silent primary counts as down. The service connects as ``blocklist-app``
through Sentinel; when the primary is killed, Sentinel promotes the replica
and the same store object carries on writing to it.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from app import audit
from app.embedded import free_port
from app.errors import BlocklistError, ConfigError
from app.store import connect
from app.web import create_app
from tests.test_deploy_redis import (
    DEPLOY,
    USERS,
    People,
    ShippedRedis,
    list_domain,
    make_core,
    require_redis_7,
)

SERVICE = "blocklist"
SENTINEL_PASSWORD = "sentinel-clients-secret"
T = TypeVar("T")


class Sentinel:
    """``redis-server sentinel.conf --sentinel`` with deploy/sentinel.conf."""

    def __init__(self, directory: Path, primary: ShippedRedis) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.port = free_port()
        text = (DEPLOY / "sentinel.conf").read_text()
        replacements = {
            "port 26379": f"port {self.port}",
            "sentinel monitor blocklist 10.0.0.11 6379 2": f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1",
            "sentinel down-after-milliseconds blocklist 5000": f"sentinel down-after-milliseconds {SERVICE} 1000",
            "sentinel failover-timeout blocklist 60000": f"sentinel failover-timeout {SERVICE} 10000",
            "dir /var/lib/redis": f"dir {self.dir}",
            'logfile ""': f"logfile {self.dir / 'sentinel.log'}",
            "CHANGE-ME-sentinel-clients": SENTINEL_PASSWORD,
            "auth-pass blocklist CHANGE-ME-sentinel": f"auth-pass blocklist {primary.passwords['sentinel']}",
        }
        for old, new in replacements.items():
            assert old in text, old
            text = text.replace(old, new)
        assert "CHANGE-ME" not in text
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(text)
        self.proc = subprocess.Popen([require_redis_7(), str(self.conf), "--sentinel"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client = redis.Redis(port=self.port, password=SENTINEL_PASSWORD, decode_responses=True)
        try:
            wait_for(self.client.ping, "sentinel to start")
        except AssertionError:
            self.stop()
            raise

    def primary_port(self) -> int:
        _host, port = self.client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_for(probe: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
            if result:
                return result
        except (redis.exceptions.RedisError, BlocklistError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Cluster:
    primary: ShippedRedis
    replica: ShippedRedis
    sentinel: Sentinel

    def url(self) -> str:
        app_password = self.primary.passwords["app"]
        return (f"redis+sentinel://blocklist-app:{app_password}@127.0.0.1:{self.sentinel.port}/{SERVICE}"
                f"?sentinel_password={SENTINEL_PASSWORD}")


def primary_and_replica(tmp_path: Path) -> tuple[ShippedRedis, ShippedRedis]:
    """A primary and its replica from the shipped configuration (not started)."""
    passwords = {user: secrets.token_hex(16) for user in USERS}
    # Every node carries masteruser/masterauth: after a failover the old primary becomes a replica.
    # A full resynchronisation starts at once instead of waiting 5 s for more replicas to join.
    replication = ["--masteruser", "blocklist-replica", "--masterauth", passwords["replica"],
                   "--repl-diskless-sync-delay", "0"]
    primary = ShippedRedis(tmp_path / "primary", passwords=passwords, extra=replication)
    replica = ShippedRedis(tmp_path / "replica", passwords=passwords,
                           extra=[*replication, "--replicaof", "127.0.0.1", str(primary.port)])
    return primary, replica


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    primary, replica = primary_and_replica(tmp_path)
    sentinel: Sentinel | None = None
    try:
        primary.start()
        replica.start()
        wait_for(lambda: replica.client("ops").info("replication")["master_link_status"] == "up", "replication")
        sentinel = Sentinel(tmp_path / "sentinel", primary)
        wait_for(lambda: sentinel is not None and sentinel.client.sentinel_master(SERVICE)["num-slaves"] == 1,
                 "sentinel to see the replica")
        yield Cluster(primary, replica, sentinel)
    finally:
        if sentinel is not None:
            sentinel.stop()
        replica.stop()
        primary.stop()

def test_the_service_works_through_sentinel(cluster: Cluster, tmp_path: Path) -> None:
    core = make_core(cluster.url(), tmp_path / "data")
    people = People(core)
    entry_id = list_domain(core, people, "through-sentinel.test")
    assert core.publisher.publish().status == "published"
    assert audit.verify(core.store).ok
    # The writes reached the primary Sentinel names, and from it the replica.
    assert cluster.sentinel.primary_port() == cluster.primary.port
    assert core.store.r.execute_command("WAIT", 1, 5000) == 1
    replica_side = make_core(cluster.replica.url("app"), tmp_path / "data")
    assert replica_side.curation.get(entry_id).status.value == "active"


def test_the_store_follows_a_failover_to_the_replica(cluster: Cluster, tmp_path: Path) -> None:
    core = make_core(cluster.url(), tmp_path / "data")
    people = People(core)
    before = list_domain(core, people, "before-failover.test")
    assert core.store.r.execute_command("WAIT", 1, 5000) == 1

    assert cluster.primary.proc is not None
    cluster.primary.proc.send_signal(signal.SIGKILL)
    cluster.primary.proc.wait(10)
    cluster.primary.proc = None
    # The same store object: the first writes fail while no primary is known, then succeed.
    after = wait_for(lambda: list_domain(core, people, "after-failover.test"), "a write after the failover")
    assert cluster.sentinel.primary_port() == cluster.replica.port
    assert core.curation.get(before).status.value == "active"
    assert core.curation.get(after).status.value == "active"
    assert core.publisher.publish().status == "published"
    assert audit.verify(core.store).ok

    # The web tier too: an API call through the same store.
    client = create_app(core=core, test_config={"TESTING": True}).test_client()
    reply = client.get(f"/api/v1/entries/{after}", headers={"Authorization": f"Bearer {people.alice_token}"})
    assert reply.status_code == 200
    assert reply.json["value"] == "after-failover.test"

    # The old primary comes back as a replica of the new one (masteruser/masterauth).
    cluster.primary.start()
    wait_for(lambda: cluster.primary.client("ops").info("replication")["role"] == "slave"
             and cluster.primary.client("ops").info("replication")["master_link_status"] == "up",
             "the old primary to rejoin as a replica")
    rejoined = make_core(cluster.primary.url("app"), tmp_path / "data")
    wait_for(lambda: rejoined.curation.get(after), "the rejoined node to have the new writes")


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://127.0.0.1:26379", "service name"),
    ("redis+sentinel://127.0.0.1/blocklist", "HOST:PORT"),
    ("redis+sentinel://127.0.0.1:26379,nowhere/blocklist", "HOST:PORT"),
    ("redis+sentinel://127.0.0.1:26379/blocklist/zero", "db-number"),
    ("redis+sentinel://127.0.0.1:26379/blocklist/0/extra", "db-number"),
])
def test_a_malformed_sentinel_url_is_refused_with_a_clear_error(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        connect(url)
    assert problem in refused.value.message
    assert "BLOCKLIST_REDIS_URL" in refused.value.message
