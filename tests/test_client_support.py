"""Shared fixtures for the pull tool's tests: a real feed server and a client set up against it.

* :func:`make_feed`: the real service (real Redis, the app on a real
  socket) with an ISP, personas to list entries, and a client configuration
  (``pull.toml``) with every output format, a post-apply command that counts
  its runs, and the publisher's key pinned.
* :class:`Proxy`: a small HTTP server in front of the feed that passes
  requests through, or answers chosen paths itself (replays, tampered
  files, endless bodies), and logs every path asked for.

The test modules wrap them in ``feed`` and ``proxy`` fixtures.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.clock import FakeClock
from app.core import Core
from app.domain import SYSTEM
from app.embedded import free_port
from client.minisign import SecretKey, format_trusted_comment
from client.pull import main
from tests.conftest import Personas, publish

OUTPUTS = {
    "rpz": "blocklist.rpz.zone",
    "unbound": "unbound-blocklist.conf",
    "dnsmasq": "dnsmasq-blocklist.conf",
    "hosts": "hosts.blocklist",
    "domains": "domains.txt",
    "urls": "squid-urls.acl",
}


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Feed:
    core: Core
    personas: Personas
    clock: FakeClock
    url: str
    token: str
    dir: Path
    ids: dict[str, int] = field(default_factory=dict)
    current: Path | None = None  # the configuration written last

    @property
    def out(self) -> Path:
        return self.dir / "out"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def runs_file(self) -> Path:
        return self.dir / "post-apply.log"

    def output(self, fmt: str) -> Path:
        return self.out / OUTPUTS[fmt]

    def list(self, value: str, *, subdomains: bool = False, etype: str = "domain") -> int:
        entry = self.core.curation.submit(self.personas.alice.actor, value, etype,
                                          subdomains if etype == "domain" else None,
                                          reason="seen distributing material", evidence_ref="case-1")
        self.core.curation.act(self.personas.bruno.actor, entry.id, "approve")
        self.ids[value] = entry.id
        return entry.id

    def delist(self, value: str) -> None:
        self.core.curation.act(self.personas.bruno.actor, self.ids[value], "delist", "site gone")

    def publish(self) -> int:
        return int(publish(self.core).version)

    def public_key(self) -> str:
        return self.core.publisher.key.public.base64()

    def config(self, *, url: str | None = None, keys: list[str] | None = None, name: str = "pull.toml",
               extra: str = "", post_apply: list[str] | None = None, outputs: bool = True) -> Path:
        self.out.mkdir(exist_ok=True)
        (self.dir / "token").write_text(self.token + "\n")
        if post_apply is None:
            post_apply = [sys.executable, "-c",
                          "import os, sys; open(sys.argv[1], 'a').write(os.environ['BLOCKLIST_PULL_VERSION'] + '\\n')",
                          str(self.runs_file)]
        lines = [
            f"feed_url = {json.dumps((url or self.url) + '/feed/v1')}",
            'token_file = "token"',
            f"public_keys = {json.dumps(keys if keys is not None else [self.public_key()])}",
            f"state_dir = {json.dumps(str(self.state))}",
            f"post_apply = {json.dumps(post_apply)}",
            extra,
        ]
        if outputs:
            for fmt, file in OUTPUTS.items():
                lines += ["[[output]]", f'format = "{fmt}"', f"path = {json.dumps(str(self.out / file))}", ""]
        path = self.dir / name
        path.write_text("\n".join(lines) + "\n")
        self.current = path
        return path

    def pull(self, *args: str, config: Path | None = None) -> Result:
        """``blocklist-pull -c CONFIG ARGS`` (default ``once``), in this process, on the test clock."""
        cfg = config or self.current or self.config()
        (self.dir / "token").write_text(self.token + "\n")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["-c", str(cfg), *(args or ("once",))], clock=self.clock)
        return Result(code, out.getvalue(), err.getvalue())

    def post_apply_runs(self) -> list[str]:
        return self.runs_file.read_text().split() if self.runs_file.exists() else []

    def snapshot_outputs(self) -> dict[str, tuple[bytes, int]]:
        """Every output's bytes and mtime, to show a refused pull touched nothing."""
        return {f: (p.read_bytes(), p.stat().st_mtime_ns) for f in OUTPUTS if (p := self.output(f)).exists()}

    def held_version(self) -> int | None:
        path = self.state / "state.json"
        return json.loads(path.read_text())["version"] if path.exists() else None

    def artifact(self, rel: str) -> bytes:
        return self.core.artifacts.path(rel).read_bytes()

    def sign(self, rel: str, data: bytes, version: int, key: SecretKey | None = None, expires: str = "") -> bytes:
        """A signature as the publisher makes it (with its key unless another is given)."""
        fields = {"list": self.core.settings.list_name, "version": str(version), "file": rel,
                  "expires": expires or "2027-02-14T08:00:00Z"}
        return (key or self.core.publisher.key).sign_bytes(data, format_trusted_comment(fields)).text().encode()

    def resign_manifest(self, manifest: dict[str, Any], key: SecretKey | None = None) -> tuple[bytes, bytes]:
        body = (json.dumps(manifest, indent=1) + "\n").encode()
        sig = self.sign("manifest.json", body, int(manifest["version"]), key, expires=manifest["expires_at"])
        return body, sig


def make_feed(core: Core, personas: Personas, clock: FakeClock, url: str, tmp_path: Path) -> Feed:
    token = core.isps.add(SYSTEM, "acme")["feed_token"]
    d = tmp_path / "isp"
    d.mkdir()
    return Feed(core=core, personas=personas, clock=clock, url=url, token=token, dir=d)


Answer = bytes | Callable[[http.server.BaseHTTPRequestHandler], None]


class Proxy:
    """Passes feed requests through to the real server, except paths given an answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.answers: dict[str, Answer] = {}
        self.paths: list[str] = []
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rel = self.path.split("/feed/v1/", 1)[-1]
                proxy.paths.append(rel)
                answer = proxy.answers.get(rel)
                if callable(answer):
                    answer(self)
                    return
                if answer is not None:
                    self._send(200, answer, {})
                    return
                req = urllib.request.Request(proxy.upstream + self.path,
                                             headers={"Authorization": self.headers.get("Authorization", "")})
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        self._send(resp.status, resp.read(), {})
                except urllib.error.HTTPError as e:
                    self._send(e.code, e.read(), {})

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
