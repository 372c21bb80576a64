"""Shared fixtures: a real Redis per test session, personas, the app, peers.

* One real Redis server (the embedded one the product ships) is started on
  a free port for the whole session and flushed before every test. It never
  touches a server that happens to run on 6379.
* Personas: two curators and two vetters in two agencies, an admin, an
  auditor, and an outsider with no account.
* Real peers (kdig, named, unbound, minisign, chromium...) are required,
  never skipped: :func:`require_binary` fails the test when one is missing,
  because ``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from app.clock import FakeClock
from app.config import Settings
from app.core import Core
from app.domain import SYSTEM, Actor
from app.embedded import EmbeddedRedis, free_port
from app.signing import SecretKey, ensure_key
from app.users import User

AGENCY_A = "Agency A (UK)"
AGENCY_B = "Agency B (ES)"
PASSWORD = "correct horse battery staple"


def require_binary(name: str) -> str:
    """The path of a peer program; fails (never skips) when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if not path:
        pytest.fail(f"{name} is not installed; run .ci/run (or apt-get install its package) first")
    return path


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> None:
    """argon2 with production parameters costs ~60 ms a hash; tests make many accounts."""
    from argon2 import PasswordHasher

    from app import users

    users.use_password_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port(), fsync="everysec")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def settings(redis_server: EmbeddedRedis, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        data_dir=tmp_path,
        artifact_dir=tmp_path / "artifacts",
        signing_key_file=tmp_path / "keys" / "blocklist.key",
        secret_key="test-secret-key",
        cookie_secure=False,
        log_format="text",
        # The base zone follows every version (overlay off), so tests can
        # wait for a version's serial; tests/test_zones*.py turn it on.
        rpz_fold_grace=0,
    )


@pytest.fixture
def core(settings: Settings, clock: FakeClock) -> Iterator[Core]:
    c = Core.from_settings(settings, clock=clock)
    c.store.r.flushdb()
    c.publisher._key = ensure_key(settings.signing_key_file)
    record_key(c, c.publisher._key)
    yield c
    c.store.r.close()


@dataclass
class Persona:
    user: User
    token: str
    password: str = PASSWORD

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def actor(self) -> Actor:
        return self.user.actor

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Personas:
    alice: Persona  # curator, agency A
    carlos: Persona  # curator, agency B
    vera: Persona  # vetter, agency A
    bruno: Persona  # vetter, agency B
    ada: Persona  # admin
    audrey: Persona  # auditor
    outsider_token: str  # looks like a token, belongs to nobody


@pytest.fixture
def personas(core: Core) -> Personas:
    def make(name: str, role: str, agency: str) -> Persona:
        core.users.add(SYSTEM, name, role, agency, PASSWORD)
        token = core.users.issue_token(SYSTEM, name)
        return Persona(core.users.get(name), token)

    return Personas(
        alice=make("alice", "curator", AGENCY_A),
        carlos=make("carlos", "curator", AGENCY_B),
        vera=make("vera", "vetter", AGENCY_A),
        bruno=make("bruno", "vetter", AGENCY_B),
        ada=make("ada", "admin", "Programme"),
        audrey=make("audrey", "auditor", "Oversight board"),
        outsider_token="blu_" + "x" * 43,
    )


@pytest.fixture
def app(core: Core) -> Any:
    from app.web import create_app

    return create_app(core=core, test_config={"TESTING": True})


class _BufferedClient(FlaskClient):
    """Reads and closes every response (file responses would otherwise stay open)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


@pytest.fixture
def client(app: Any) -> Any:
    app.test_client_class = _BufferedClient
    return app.test_client()


class LiveServer:
    """The real app on a real socket, for clients that speak HTTP (pull tool, browser)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def live_server(app: Any) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def feed(core: Core, personas: Personas, clock: FakeClock, live_server: LiveServer, tmp_path: Path) -> Any:
    """A published feed with an ISP account, served over HTTP (see tests/test_client_support.py)."""
    from tests.test_client_support import make_feed

    return make_feed(core, personas, clock, live_server.url, tmp_path)


@pytest.fixture
def proxy(feed: Any) -> Iterator[Any]:
    """A man in the middle between the pull tool and the feed (see tests/test_client_support.py)."""
    from tests.test_client_support import Proxy

    with Proxy(feed.url) as p:
        yield p


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is stopped (SIGTERM, then SIGKILL) when it ends."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def record_key(core: Core, key: SecretKey) -> None:
    """Name ``key`` as the programme's current key in the store (what `keys init` does, unaudited)."""
    from app.keys import KeyInfo, ProgrammeKeys
    from app.store import Txn

    txn = Txn()
    record = ProgrammeKeys(KeyInfo.of(key.public, "2027-01-15T08:00:00Z"))
    core.store.programme_keys.put(txn, core.store.programme_keys.raw(), record.to_json())
    core.store.commit(txn)


def publish(core: Core, **kwargs: Any) -> Any:
    """Publish now, as the worker would; the outcome must be a published version."""
    outcome = core.publisher.publish(**kwargs)
    assert outcome.status == "published", outcome
    return outcome


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


__all__ = ["AGENCY_A", "AGENCY_B", "PASSWORD", "LiveServer", "Persona", "Personas", "port_is_free", "publish",
           "record_key", "replace", "require_binary"]


def offline_resolver_conf(directory: Path, run_dir: Path, port: int, policy: str) -> str:
    """The ``options`` and ``controls`` of a BIND resolver in a test, offline.

    With no internet every recursion fails; forwarding to a closed port makes
    unlisted names fail fast while listed names still get the policy answer,
    and ``servfail-ttl 0`` keeps BIND from answering a failed name from its
    SERVFAIL cache without looking at the policy zones. ``policy`` is the
    ``response-policy`` statement (or an include of it).
    """
    return f"""
options {{
    directory "{directory}";
    pid-file "{run_dir}/named.pid";
    session-keyfile "{run_dir}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-query {{ 127.0.0.1; }};
    forwarders {{ 127.0.0.1 port 9; }};
    forward only;
    dnssec-validation no;
    notify no;
    servfail-ttl 0;
    {policy}
}};
controls {{ }};
"""
