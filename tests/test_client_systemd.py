"""The pull tool's systemd units: valid, sandboxed, and running the command the docs describe."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import require_binary

UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
SERVICE = UNITS / "blocklist-pull.service"
TIMER = UNITS / "blocklist-pull.timer"


def settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_systemd_analyze_accepts_the_service_and_the_timer() -> None:
    result = subprocess.run([require_binary("systemd-analyze"), "verify", str(SERVICE), str(TIMER)],
                            capture_output=True, text=True, timeout=60, check=False)
    # The program is installed on the ISP's host, not on this one.
    problems = [ln for ln in (result.stdout + result.stderr).splitlines()
                if ln.strip() and not re.search(r"Command /usr/local/bin/blocklist-pull is not executable", ln)]
    assert problems == []


def test_the_service_runs_one_quiet_pull_in_a_sandbox_with_the_token_as_a_credential() -> None:
    s = settings(SERVICE)
    assert s["Type"] == ["oneshot"]
    assert shlex.split(s["ExecStart"][0])[1:] == ["--config", "/etc/blocklist-pull/pull.toml", "once", "--quiet"]
    assert s["LoadCredential"] == ["feed-token:/etc/blocklist-pull/feed-token"]
    assert s["Environment"] == ["BLOCKLIST_PULL_TOKEN_FILE=%d/feed-token"]
    assert s["StateDirectory"] == ["blocklist-pull"]
    for key in ("ProtectSystem", "NoNewPrivileges", "CapabilityBoundingSet", "ReadWritePaths"):
        assert key in s
    result = subprocess.run([require_binary("systemd-analyze"), "security", "--offline=true", str(SERVICE)],
                            capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert m, result.stdout + result.stderr
    # It runs as root so that the reload command works; the sandbox keeps the exposure low anyway.
    assert float(m.group(1)) <= 2.5, result.stdout


def test_the_timer_runs_every_five_minutes_with_a_random_delay() -> None:
    t = settings(TIMER)
    assert t["OnUnitInactiveSec"] == ["5min"]
    assert t["RandomizedDelaySec"] == ["60"]
    assert t["WantedBy"] == ["timers.target"]


CHECK_SERVICE = UNITS / "blocklist-pull-check.service"
CHECK_TIMER = UNITS / "blocklist-pull-check.timer"


def test_systemd_analyze_accepts_the_check_service_and_timer_and_finds_the_service_confined() -> None:
    analyze = require_binary("systemd-analyze")
    result = subprocess.run([analyze, "verify", str(CHECK_SERVICE), str(CHECK_TIMER)],
                            capture_output=True, text=True, timeout=60, check=False)
    problems = [ln for ln in (result.stdout + result.stderr).splitlines()
                if ln.strip() and not re.search(r"Command /usr/local/bin/blocklist-pull is not executable", ln)]
    assert problems == []
    result = subprocess.run([analyze, "security", "--offline=true", str(CHECK_SERVICE)],
                            capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert m, result.stdout + result.stderr
    # It writes nothing and needs no privilege: more confined than the pull itself.
    assert float(m.group(1)) <= 2.0, result.stdout


def test_the_check_service_runs_the_check_the_docs_describe_as_a_throwaway_user() -> None:
    s = settings(CHECK_SERVICE)
    args = shlex.split(s["ExecStart"][0])
    assert args[1:4] == ["--config", "/etc/blocklist-pull/pull.toml", "check"]
    assert "--resolver" in args and "--max-behind" in args
    assert s["DynamicUser"] == ["yes"]
    assert s["LoadCredential"] == ["feed-token:/etc/blocklist-pull/feed-token"]
    assert settings(CHECK_TIMER)["OnUnitInactiveSec"] == ["10min"]
    # The command line parses: the flags in the unit are ones the tool knows.
    from client.pull import parser

    parsed = parser().parse_args(args[1:])
    assert parsed.command == "check" and parsed.resolver == ["127.0.0.1:53"] and parsed.max_behind == 5
