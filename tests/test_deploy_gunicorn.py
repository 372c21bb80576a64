"""The web tier as production runs it: gunicorn with deploy/gunicorn.conf.py.

Two worker processes serve the real app against a real Redis; the test
scrapes ``/metrics`` (request counts summed over both workers through the
multiprocess directory, publisher and ISP figures read from Redis) and
``/readyz``, and reads the JSON log lines gunicorn writes on stdout.

:class:`Gunicorn` and :func:`http` are also used by the durability and log tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from app.embedded import free_port
from app.signing import ensure_key
from tests.conftest import Personas, require_binary

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
METRICS_TOKEN = "metrics-scraper-secret-0123456789"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
         timeout: float = 15.0) -> Reply:
    """One HTTP request; any status is an answer, not an exception."""
    data = None
    all_headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers.items()), e.read())


class Gunicorn:
    """``gunicorn -c deploy/gunicorn.conf.py`` in a child process, logs to a file."""

    def __init__(self, directory: Path, settings_env: Mapping[str, str], workers: int = 2) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = self.dir / "gunicorn.log"
        self.metrics_dir = self.dir / "metrics"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BLOCKLIST_", "PROMETHEUS_", "GUNICORN_"))}
        env.update({
            "BLOCKLIST_WEB_LISTEN": f"127.0.0.1:{self.port}",
            "BLOCKLIST_SECRET_KEY": "test-secret-key",
            "BLOCKLIST_COOKIE_SECURE": "false",
            "BLOCKLIST_LOG_FORMAT": "json",
            "BLOCKLIST_METRICS_TOKEN": METRICS_TOKEN,
            "WEB_CONCURRENCY": str(workers),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
            **settings_env,
        })
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Gunicorn:
        self.metrics_dir.mkdir(exist_ok=True)
        with self.log.open("ab") as out:
            # Not from the repository root: the configuration must find the app by itself.
            self.proc = subprocess.Popen([str(GUNICORN), "-c", str(ROOT / "deploy" / "gunicorn.conf.py")],
                                         cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited at start:\n{self.log.read_text()[-3000:]}")
            try:
                if http("GET", self.url + "/livez", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gunicorn did not answer in time:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log_lines(self) -> list[str]:
        return [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "BLOCKLIST_REDIS_URL": settings.redis_url or "",
        "BLOCKLIST_DATA_DIR": str(settings.data_dir),
        "BLOCKLIST_ARTIFACT_DIR": str(settings.artifact_dir),
        "BLOCKLIST_SIGNING_KEY_FILE": str(settings.signing_key_file),
    }


def samples(text: str) -> dict[str, float]:
    """Prometheus text format to {'name{labels}': value} (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def labelled(found: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of ``name`` with exactly these labels (in any order)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for key, value in found.items():
        metric, _, rest = key.partition("{")
        if metric == name and set(filter(None, rest.rstrip("}").split(","))) == wanted:
            return value
    return None


@pytest.fixture
def live_core(core: Core) -> Iterator[Core]:
    """The flushed test Redis, with the system clock (gunicorn's processes use it too)."""
    real = Core.from_settings(core.settings)
    real.publisher._key = ensure_key(core.settings.signing_key_file)
    yield real
    real.store.r.close()


def test_gunicorn_serves_the_app_with_metrics_and_readiness(
    live_core: Core, personas: Personas, tmp_path: Path
) -> None:
    core = live_core
    p = personas
    entry = core.curation.submit(p.alice.actor, "metrics-one.test", "domain", True, "csam", "seen", "c-1")
    core.curation.act(p.bruno.actor, entry.id, "approve", "checked")
    version = core.publisher.publish().version
    assert version is not None
    puller = core.isps.add(SYSTEM, "isp-pulls")
    core.isps.add(SYSTEM, "isp-silent")

    with Gunicorn(tmp_path / "web", settings_env(core.settings)) as web:
        # The start-up probes were counted too.
        probes = labelled(samples(http("GET", web.url + "/metrics").body.decode()), "blocklist_http_requests_total",
                          endpoint="health.livez", method="GET", status="200") or 0
        assert probes >= 1
        for _ in range(20):
            assert http("GET", web.url + "/livez").status == 200
        for _ in range(5):
            assert http("GET", web.url + "/api/v1/entries", headers=p.alice.headers).status == 200
        assert http("GET", web.url + "/api/v1/entries", headers={"Authorization": "Bearer blu_wrong"}).status == 401
        feed = http("GET", f"{web.url}/feed/v1/snapshots/{version}.json",
                    headers={"Authorization": f"Bearer {puller['feed_token']}"})
        assert feed.status == 200
        assert json.loads(feed.body)["version"] == version

        ready = http("GET", web.url + "/readyz")
        assert ready.status == 200, ready.body
        assert ready.json()["checks"]["redis"] == "ok"
        assert "expires in" in ready.json()["checks"]["manifest"]

        scrape = http("GET", web.url + "/metrics")
        assert scrape.status == 200
        assert scrape.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = scrape.body.decode()
        found = samples(text)
        # Counted in two processes, reported as one sum by whichever answered.
        assert labelled(found, "blocklist_http_requests_total", endpoint="health.livez", method="GET",
                        status="200") == probes + 20
        assert labelled(found, "blocklist_http_requests_total", endpoint="api.list_entries", method="GET",
                        status="200") == 5
        assert labelled(found, "blocklist_http_requests_total", endpoint="api.list_entries", method="GET",
                        status="401") == 1
        assert labelled(found, "blocklist_http_request_duration_seconds_count", endpoint="health.livez",
                        method="GET") == probes + 20
        assert "blu_" not in text
        assert "blf_" not in text
        assert found["blocklist_store_up"] == 1
        assert found["blocklist_publication_version"] == version
        assert found["blocklist_publication_entries"] == 1
        assert found["blocklist_publication_held"] == 0
        assert found["blocklist_publication_build_seconds"] >= 0
        assert abs(found["blocklist_publication_last_timestamp_seconds"] - time.time()) < 120
        assert found["blocklist_manifest_expiry_timestamp_seconds"] > time.time() + 3000
        assert labelled(found, "blocklist_entries", status="active") == 1
        assert labelled(found, "blocklist_isp_versions_behind", isp="isp-pulls") == 0
        assert labelled(found, "blocklist_isp_versions_behind", isp="isp-silent") == version
        assert labelled(found, "blocklist_isp_last_version", isp="isp-pulls") == version
        assert labelled(found, "blocklist_isp_seconds_since_last_pull", isp="isp-pulls") < 60
        assert labelled(found, "blocklist_isp_seconds_since_last_pull", isp="isp-silent") is None
        # The samples live in the multiprocess directory, one file per worker process that counted.
        workers = {int(m) for m in re.findall(r"Booting worker with pid: (\d+)", web.log.read_text())}
        counted = {int(re.sub(r"\D", "", f.name)) for f in web.metrics_dir.glob("counter_*.db")}
        assert counted
        assert counted <= workers

        # Several scrapes reach different workers and agree.
        for _ in range(6):
            again = samples(http("GET", web.url + "/metrics").body.decode())
            assert labelled(again, "blocklist_http_requests_total", endpoint="health.livez", method="GET",
                            status="200") == probes + 20

        # Through a proxy, or from elsewhere, only with the token.
        proxied = http("GET", web.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status == 403
        assert b"blocklist_" not in proxied.body
        assert http("GET", web.url + "/metrics", headers={"Authorization": "Bearer nope"}).status == 401
        with_token = http("GET", web.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9",
                                                                 "Authorization": f"Bearer {METRICS_TOKEN}"})
        assert with_token.status == 200

        lint = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text.encode(),
                              capture_output=True, timeout=30, check=False)
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

    lines = web.log_lines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {r["component"] for r in records} == {"web"}
    assert all(r["time"].endswith("Z") for r in records)
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert len(access) >= probes + 20 + 5 + 1 + 1 + 1 + 1 + 6 + 3
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["request_id"]) for r in access)
    feed_line = next(r for r in access if r["path"].startswith("/feed/"))
    assert feed_line["status"] == 200
    assert feed_line["method"] == "GET"
    assert any(r["message"].startswith("Booting worker") for r in records)


def test_readyz_turns_unavailable_when_redis_is_gone(tmp_path: Path, live_core: Core) -> None:
    env = settings_env(live_core.settings)
    env["BLOCKLIST_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    with Gunicorn(tmp_path / "web", env, workers=1) as web:
        ready = http("GET", web.url + "/readyz")
        assert ready.status == 503
        assert ready.json()["status"] == "unavailable"
        assert "not reachable" in ready.json()["checks"]["redis"]
        assert http("GET", web.url + "/livez").status == 200
        scrape = samples(http("GET", web.url + "/metrics").body.decode())
        assert scrape["blocklist_store_up"] == 0
