"""Logs: JSON lines on stdout (UTC time, level, component, request id), and no secret in them, ever.

The end-to-end test runs the real processes (gunicorn with
deploy/gunicorn.conf.py, ``blocklist worker``, ``blocklist xfrd``) against
Redis with the shipped configuration, drives every path that handles a
secret (API tokens, feed tokens in headers and in paths, passwords at
sign-in, TSIG keys on zone transfers, a Redis outage), and then searches
every line they wrote for each secret.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from app.embedded import free_port
from app.logs import AccessJsonFormatter, JsonFormatter, RedactFilter, redact
from app.web import create_app
from tests.conftest import PASSWORD, require_binary
from tests.test_deploy_gunicorn import Gunicorn, http
from tests.test_deploy_redis import People, ShippedRedis, list_domain, make_core

BLOCKLIST = Path(sys.executable).parent / "blocklist"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("blocklist.test", logging.WARNING, __file__, 1, msg, args,
                            (type(exc), exc, exc.__traceback__) if exc else None)
    rec.__dict__.update(extra)
    return rec


def test_a_log_line_is_one_json_object_with_utc_time_level_and_component() -> None:
    line = JsonFormatter("worker").format(record("published version %s", 7, version=7, isp="isp-a"))
    out = json.loads(line)
    assert TIME.fullmatch(out["time"])
    assert out["level"] == "WARNING"
    assert out["component"] == "worker"
    assert out["logger"] == "blocklist.test"
    assert out["message"] == "published version 7"
    assert out["version"] == 7
    assert out["isp"] == "isp-a"
    assert "\n" not in line


@pytest.mark.parametrize("secret", [
    "blu_" + secrets.token_urlsafe(32),
    "blf_" + secrets.token_urlsafe(32),
])
def test_tokens_are_redacted_in_messages_arguments_and_tracebacks(secret: str) -> None:
    formatter = JsonFormatter("web")
    try:
        raise ValueError(f"bad token {secret}")
    except ValueError as e:
        line = formatter.format(record("GET /feed/v1/t/%s/rpz/latest.zone failed", secret, exc=e))
    assert secret not in line
    assert secret[4:] not in line
    assert secret[:4] + "[REDACTED]" in json.loads(line)["message"]
    rec = record("token %s", secret)
    RedactFilter().filter(rec)
    assert secret not in rec.getMessage()


def test_passwords_in_connection_urls_are_redacted() -> None:
    text = redact("cannot reach redis://blocklist-app:s3cr3t-pass@10.0.0.5:6379/0 nor "
                  "redis+sentinel://blocklist-app:other%40pw@h1:26379,h2:26379/blocklist")
    assert "s3cr3t-pass" not in text
    assert "other%40pw" not in text
    assert "redis://blocklist-app:[REDACTED]@10.0.0.5:6379/0" in text


def test_the_access_log_keeps_no_header_but_the_request_id() -> None:
    atoms = {"h": "192.0.2.1", "m": "GET", "U": "/feed/v1/t/blf_abcdefghijklmnop/rpz/latest.zone", "q": "",
             "s": "200", "B": 1234, "D": 2500, "a": "Unbound/1.17", "{x-request-id}o": "00ff00ff00ff00ff",
             "{authorization}i": "Bearer blf_headertokenheadertoken", "{cookie}i": "session=secret-session"}
    rec = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, '%(h)s "%(r)s"', (atoms,), None)
    out = json.loads(AccessJsonFormatter("web").format(rec))
    assert out["path"] == "/feed/v1/t/blf_[REDACTED]/rpz/latest.zone"
    assert out["request_id"] == "00ff00ff00ff00ff"
    assert out["status"] == 200
    assert out["duration_ms"] == 2.5
    text = json.dumps(out)
    assert "headertoken" not in text
    assert "secret-session" not in text
    assert "abcdefghijklmnop" not in text


def test_a_log_line_written_during_a_request_carries_its_request_id(settings: Settings) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("web"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        dead = Settings(**{**settings.__dict__, "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
        app = create_app(core=Core.from_settings(dead), test_config={"TESTING": True})
        reply = app.test_client().get("/api/v1/entries", headers={"Authorization": "Bearer blu_" + "q" * 43,
                                                                   "X-Request-Id": "req-42"})
    finally:
        root.removeHandler(handler)
    assert reply.status_code == 503
    assert reply.headers["X-Request-Id"] == "req-42"
    assert reply.headers["Retry-After"] == "5"
    lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    outage = [ln for ln in lines if "store is unavailable" in ln["message"]]
    assert len(outage) == 1
    assert outage[0]["request_id"] == "req-42"
    assert "exception" not in outage[0]


class Browser:
    """A cookie-keeping client for the sign-in form."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=15) as resp:
            return str(resp.read().decode())

    def post(self, path: str, fields: dict[str, str]) -> int:
        data = urllib.parse.urlencode(fields).encode()
        try:
            with self.opener.open(urllib.request.Request(self.base + path, data=data), timeout=15) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)


def sign_in(web: Gunicorn, user: str, password: str) -> int:
    browser = Browser(web.url)
    page = browser.get("/login")
    m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', page)
    assert m, "the sign-in form has a CSRF token"
    return browser.post("/login", {"csrf_token": m.group(1), "username": user, "password": password})


def test_no_secret_ever_reaches_a_log(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    server = ShippedRedis(tmp_path / "redis").start()
    data = tmp_path / "data"
    core = make_core(server.url("app"), data)
    people = People(core)
    core.users.set_password(SYSTEM, "alice", PASSWORD)
    list_domain(core, people, "logs-one.test")
    isp = core.isps.add(SYSTEM, "isp-logs")
    gone = core.isps.add(SYSTEM, "isp-gone")
    core.isps.revoke(SYSTEM, "isp-gone", "left")
    core.store.r.close()

    metrics_port, dns_port = free_port(), free_port()
    env = {
        "BLOCKLIST_REDIS_URL": server.url("app"),
        "BLOCKLIST_DATA_DIR": str(data),
        "BLOCKLIST_ARTIFACT_DIR": str(data / "artifacts"),
        "BLOCKLIST_SIGNING_KEY_FILE": str(data / "keys" / "blocklist.key"),
        "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{dns_port}",
        "BLOCKLIST_XFRD_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "BLOCKLIST_HEALTH_DIR": str(tmp_path / "run"),
        "BLOCKLIST_PUBLISH_INTERVAL": "1",
        "BLOCKLIST_LOG_LEVEL": "DEBUG",
    }
    web = Gunicorn(tmp_path / "web", env).start()
    logs = {"web": web.log, "worker": tmp_path / "worker.log", "xfrd": tmp_path / "xfrd.log"}
    for command in ("worker", "xfrd"):
        with logs[command].open("wb") as out:
            processes.append(subprocess.Popen([str(BLOCKLIST), command], env=web.env, stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    try:
        user_token = people.alice_token
        wrong_token = "blu_" + secrets.token_urlsafe(32)
        feed_token, gone_token = isp["feed_token"], gone["feed_token"]
        wrong_feed = "blf_" + secrets.token_urlsafe(32)
        wrong_password = "Tr0ub4dor&3-" + secrets.token_hex(4)
        auth = {"Authorization": f"Bearer {user_token}"}
        # Curators, with good and bad tokens.
        assert http("GET", web.url + "/api/v1/entries", headers=auth).status == 200
        assert http("GET", web.url + "/api/v1/me", headers={"Authorization": f"Bearer {wrong_token}"}).status == 401
        assert sign_in(web, "alice", wrong_password) == 401  # the form again, with an error
        assert sign_in(web, "alice", PASSWORD) == 200  # redirected to the dashboard
        # The worker publishes; ISPs pull with tokens in headers and in paths.
        deadline = time.monotonic() + 30
        while http("GET", web.url + "/feed/v1/manifest.json",
                   headers={"Authorization": f"Bearer {feed_token}"}).status != 200:
            assert time.monotonic() < deadline, logs["worker"].read_text()
            time.sleep(0.2)
        assert http("GET", f"{web.url}/feed/v1/t/{feed_token}/rpz/latest.zone").status == 200
        assert http("GET", f"{web.url}/feed/v1/t/{wrong_feed}/rpz/latest.zone").status == 401
        assert http("GET", f"{web.url}/feed/v1/t/{gone_token}/rpz/latest.zone").status == 403
        assert http("GET", f"{web.url}/feed/v1/snapshots/latest.json",
                    headers={"Authorization": f"Bearer {wrong_feed}"}).status == 401
        # Zone transfers with the ISP's TSIG key, and with a forged one.
        kdig = require_binary("kdig")
        key = f"hmac-sha256:{isp['tsig_key_name']}:{isp['tsig_secret']}"
        forged_secret = secrets.token_bytes(32).hex()
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run([kdig, "-p", str(dns_port), "@127.0.0.1", "-y", key, "+tcp", "AXFR",
                                  "blocklist.rpz."], capture_output=True, text=True, timeout=30, check=False).stdout
            if "logs-one.test" in out:
                break
            assert time.monotonic() < deadline, out + logs["xfrd"].read_text()
            time.sleep(0.3)
        subprocess.run([kdig, "-p", str(dns_port), "@127.0.0.1", "-y",
                        f"hmac-sha256:{isp['tsig_key_name']}:{forged_secret}", "+tcp", "AXFR", "blocklist.rpz."],
                       capture_output=True, timeout=30, check=False)
        # Redis goes away for a moment: every process reports it.
        server.stop()
        assert http("GET", web.url + "/api/v1/entries", headers=auth).status == 503
        time.sleep(1.5)
        server.start()
        assert http("GET", web.url + "/api/v1/entries", headers=auth).status == 200
    finally:
        web.stop()
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        server.stop()

    forbidden = {
        "user token": user_token, "wrong user token": wrong_token, "feed token": feed_token,
        "revoked feed token": gone_token, "wrong feed token": wrong_feed, "password": PASSWORD,
        "wrong password": wrong_password, "TSIG secret": isp["tsig_secret"], "forged TSIG secret": forged_secret,
        "Redis password": server.passwords["app"], "metrics token": web.env["BLOCKLIST_METRICS_TOKEN"],
        "session key": web.env["BLOCKLIST_SECRET_KEY"],
    }
    signing_key = (data / "keys" / "blocklist.key").read_text().splitlines()[-1]
    forbidden["signing key"] = signing_key
    for component, path in logs.items():
        text = path.read_text(errors="replace")
        assert text.strip(), f"{component} wrote no log"
        for what, secret in forbidden.items():
            assert secret not in text, f"the {what} appears in the {component} log"
        for line in text.splitlines():
            out = json.loads(line)
            assert out["component"] == component
            assert TIME.fullmatch(out["time"])
            assert out["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    web_lines = [json.loads(line) for line in logs["web"].read_text().splitlines()]
    assert any("store is unavailable" in ln["message"] for ln in web_lines)
    assert any(ln.get("path", "").startswith("/feed/v1/t/blf_[REDACTED]/") for ln in web_lines)
    xfrd_text = logs["xfrd"].read_text()
    assert "badsig" in xfrd_text.lower() or "bad signature" in xfrd_text.lower()


def test_blocklist_web_logs_json_without_tokens_too(core: Core, tmp_path: Path) -> None:
    """``blocklist web`` (what ``blocklist serve`` runs) applies the same logging as the gunicorn configuration."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update({
        "BLOCKLIST_REDIS_URL": core.settings.redis_url or "", "BLOCKLIST_DATA_DIR": str(tmp_path),
        "BLOCKLIST_WEB_LISTEN": f"127.0.0.1:{port}", "BLOCKLIST_SECRET_KEY": "test-secret-key",
        "WEB_CONCURRENCY": "1",
    })
    token = "blf_" + secrets.token_urlsafe(32)
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BLOCKLIST), "web"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert http("GET", f"http://127.0.0.1:{port}/feed/v1/t/{token}/rpz/latest.zone").status == 401
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert token not in text
    access = [json.loads(line) for line in text.splitlines() if '"gunicorn.access"' in line]
    assert access
    assert access[-1]["path"] == "/feed/v1/t/blf_[REDACTED]/rpz/latest.zone"
