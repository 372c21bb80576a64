"""`blocklist serve` on a fresh data directory: everything on one machine, the printed login works."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from app.config import Settings
from app.core import Core
from app.embedded import free_port


def start(data: Path, web: int, dns: int) -> tuple[subprocess.Popen[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env["BLOCKLIST_LOG_FORMAT"] = "text"
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--data-dir", str(data), "--web", f"127.0.0.1:{web}",
         "--dns", f"127.0.0.1:{dns}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "press Ctrl-C" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("serve did not start:\n" + "\n".join(lines))


def wait_http(url: str, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bytes(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sign_in(base: str, user: str, password: str) -> None:
    """Sign in through the web admin as a person would with the printed (temporary)
    password, and land where it must be replaced."""
    import html
    import http.cookiejar
    import urllib.parse

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(f"{base}/login", timeout=10).read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', page)
    assert token, page
    form = urllib.parse.urlencode({"csrf_token": html.unescape(token.group(1)), "username": user,
                                   "password": password}).encode()
    with opener.open(f"{base}/login", data=form, timeout=10) as r:
        body = r.read().decode()
        assert r.geturl() == f"{base}/account#password", r.geturl()
    assert "choose your own before anything else" in body and "Sign out" in body


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


def test_serve_runs_everything_with_an_embedded_redis_and_prints_a_working_login(tmp_path: Path) -> None:
    data = tmp_path / "var"
    web, dns = free_port(), free_port()
    proc, lines = start(data, web, dns)
    try:
        text = "\n".join(lines)
        password = re.search(r"password: (\S+)", text)
        assert password, text
        assert "user:     admin" in text
        assert wait_http(f"http://127.0.0.1:{web}/livez") == b'{"status":"ok"}\n'
        assert (data / "redis" / "redis.sock").exists()
        assert (data / "keys" / "blocklist.key").stat().st_mode & 0o777 == 0o600
        sign_in(f"http://127.0.0.1:{web}", "admin", password.group(1))
        core = Core.from_settings(Settings(redis_url=f"unix://{data / 'redis' / 'redis.sock'}?db=0"))
        admin = core.users.authenticate_password("admin", password.group(1))
        assert admin.role == "admin"
        assert len(core.curation.allowlist()) > 10  # the never-block list is seeded
        core.store.r.close()
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert not (data / "redis" / "redis.sock").exists()  # Redis stopped cleanly

    # A second start keeps the data and does not make a new admin.
    proc, lines = start(data, web, dns)
    try:
        assert not any("password:" in ln for ln in lines)
        assert wait_http(f"http://127.0.0.1:{web}/readyz")
    finally:
        stop(proc)


def test_serve_works_with_a_relative_data_dir(tmp_path: Path) -> None:
    """`make run` uses ./var: every path must survive Redis changing into its own directory."""
    web, dns = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--web", f"127.0.0.1:{web}", "--dns",
                             f"127.0.0.1:{dns}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_http(f"http://127.0.0.1:{web}/livez") == b'{"status":"ok"}\n'
        assert (tmp_path / "var" / "redis" / "appendonly.aof").exists() or \
            (tmp_path / "var" / "redis" / "appendonlydir").exists()
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
