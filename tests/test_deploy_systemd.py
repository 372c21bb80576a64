"""The systemd units in deploy/systemd: valid, hardened, and their health checks work.

``systemd-analyze`` checks the units offline (no systemd needs to run here).
The start-up health checks of the worker and transfer-server units are run
as written in the units against the real processes; the web unit's
``Type=notify`` is checked by receiving gunicorn's READY message.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core import Core
from app.embedded import free_port
from tests.conftest import require_binary
from tests.test_deploy_gunicorn import Gunicorn, settings_env

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
NAMES = ("blocklist-web.service", "blocklist-worker.service", "blocklist-xfrd.service")
BLOCKLIST = Path(sys.executable).parent / "blocklist"


def unit_value(name: str, key: str) -> str:
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith(key + "="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} has no {key}=")


@pytest.mark.parametrize("name", NAMES)
def test_the_unit_is_valid(name: str) -> None:
    result = subprocess.run([require_binary("systemd-analyze"), "verify", str(UNITS / name)],
                            capture_output=True, text=True, timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and not re.search(r"Command /opt/blocklist/\.venv/bin/\S+ is not executable", line)]
    assert problems == []


@pytest.mark.parametrize("name", NAMES)
def test_the_unit_is_hardened(name: str) -> None:
    result = subprocess.run([require_binary("systemd-analyze"), "security", "--offline=true", str(UNITS / name)],
                            capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert m, result.stdout + result.stderr
    assert float(m.group(1)) <= 2.0, result.stdout
    assert m.group(2) == "OK"
    text = (UNITS / name).read_text()
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "User=blocklist", "Restart=always"):
        assert setting in text


def health_check(name: str, health_dir: Path, wait: int) -> list[str]:
    """The unit's ExecStartPost, with the health directory and the wait shortened for the test."""
    command = unit_value(name, "ExecStartPost").replace("/run/blocklist", str(health_dir))
    argv = shlex.split(command)
    assert argv[:2] == ["/usr/bin/timeout", "60"]
    return [argv[0], str(wait), *argv[2:]]


@pytest.fixture
def process_env(core: Core, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update(settings_env(core.settings))
    env.update({
        "BLOCKLIST_HEALTH_DIR": str(tmp_path / "run"),
        "BLOCKLIST_LOG_FORMAT": "json",
        "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{free_port()}",
        "BLOCKLIST_XFRD_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "BLOCKLIST_PUBLISH_INTERVAL": "3600",
    })
    return env


@pytest.mark.parametrize(("unit", "command"), [("blocklist-worker.service", "worker"),
                                               ("blocklist-xfrd.service", "xfrd")])
def test_the_start_up_health_check_passes_once_the_process_serves(
    unit: str, command: str, process_env: dict[str, str], processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    health_dir = tmp_path / "run"
    # Nothing running: the check gives up.
    waited = subprocess.run(health_check(unit, health_dir, 2), capture_output=True, timeout=30, check=False)
    assert waited.returncode != 0
    with (tmp_path / f"{command}.log").open("wb") as log:
        processes.append(subprocess.Popen([str(BLOCKLIST), command], env=process_env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    started = time.monotonic()
    ok = subprocess.run(health_check(unit, health_dir, 30), capture_output=True, timeout=60, check=False)
    assert ok.returncode == 0, (tmp_path / f"{command}.log").read_text()
    assert time.monotonic() - started < 30
    assert processes[0].poll() is None


def test_a_stale_heartbeat_does_not_count(tmp_path: Path) -> None:
    health_dir = tmp_path / "run"
    health_dir.mkdir()
    beat = health_dir / "worker"
    beat.write_text("1\n")
    old = time.time() - 120
    os.utime(beat, (old, old))
    waited = subprocess.run(health_check("blocklist-worker.service", health_dir, 2), capture_output=True,
                            timeout=30, check=False)
    assert waited.returncode != 0


def test_gunicorn_tells_systemd_it_is_ready(live_core_settings_env: dict[str, str], tmp_path: Path) -> None:
    assert unit_value("blocklist-web.service", "Type") == "notify"
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        web = Gunicorn(tmp_path / "web", {**live_core_settings_env, "NOTIFY_SOCKET": str(path)}, workers=1)
        web.start()
        try:
            messages = []
            while not any("READY=1" in m for m in messages):
                messages.append(sock.recv(4096).decode())
        finally:
            web.stop()
    assert any("READY=1" in m for m in messages)


@pytest.fixture
def live_core_settings_env(core: Core) -> dict[str, str]:
    return settings_env(core.settings)
