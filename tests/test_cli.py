"""The `blocklist` command, run as a real process against the test Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from tests.conftest import Personas


def run(settings: Settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BLOCKLIST_REDIS_URL": settings.redis_url or "",
           "BLOCKLIST_DATA_DIR": str(settings.data_dir),
           "BLOCKLIST_ARTIFACT_DIR": str(settings.artifact_dir),
           "BLOCKLIST_SIGNING_KEY_FILE": str(settings.signing_key_file)}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_user_commands(core: Core, settings: Settings) -> None:
    r = run(settings, "user", "add", "olga", "--role", "vetter", "--agency", "Agency C")
    assert r.returncode == 1 and "there is no agency 'Agency C' on the list" in r.stderr
    assert run(settings, "user", "agency", "add", "Agency C").returncode == 0
    r = run(settings, "user", "add", "olga", "--role", "vetter", "--agency", "agency c", "--password-stdin",
            stdin="a long enough password\n")
    assert r.returncode == 0, r.stderr
    assert core.users.get("olga").must_change  # a password someone else chose is temporary
    assert core.users.authenticate_password("olga", "a long enough password").role == "vetter"
    token = run(settings, "user", "token", "olga").stdout.strip()
    assert token.startswith("blu_")
    assert core.users.authenticate_token(token).name == "olga"
    assert run(settings, "user", "disable", "olga", "--reason", "left").returncode == 0
    assert core.users.get("olga").disabled
    listing = json.loads(run(settings, "user", "list", "--json").stdout)
    assert listing[0]["name"] == "olga" and listing[0]["disabled"] is True
    records = run(settings, "audit", "show", "--actor", f"cli:{os.environ.get('USER', 'root')}").stdout
    assert "user.disable" in records or "user.disable" in run(settings, "audit", "show").stdout


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["user", "add", "x", "--role", "king", "--agency", "A"], 2, "king"),
    (["user", "token", "nobody"], 1, "there is no user 'nobody'"),
    (["user", "add", "Bad Name", "--role", "vetter", "--agency", "A"], 1, "user name"),
    (["allowlist", "add", "not a domain"], 1, "white space"),
    (["import", "/no/such/file"], 2, "does not exist"),
    (["publications", "release", "--reason", "x"], 1, "no publication is held"),
    (["isp", "add", "acme", "--notify", "resolver.example:53"], 1, "must be an IP address"),
])
def test_user_mistakes_are_one_sentence_and_a_non_zero_exit(core: Core, settings: Settings, args, code,
                                                            fragment) -> None:
    r = run(settings, *args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_setting_is_named(settings: Settings) -> None:
    env = {**os.environ, "BLOCKLIST_REDIS_URL": settings.redis_url or "", "BLOCKLIST_PUBLISH_INTERVAL": "soon"}
    r = subprocess.run([sys.executable, "-m", "app.cli", "user", "list"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "BLOCKLIST_PUBLISH_INTERVAL must be a whole number" in r.stderr


def test_allowlist_commands(core: Core, settings: Settings) -> None:
    assert run(settings, "allowlist", "add", "Platform.TEST", "--subdomains", "--reason", "big").returncode == 0
    out = run(settings, "allowlist", "list").stdout
    assert "platform.test" in out and "+subdomains" in out
    assert run(settings, "allowlist", "remove", "platform.test").returncode == 0
    assert core.curation.allowlist() == []


def test_import_reports_every_refused_line_and_shows_progress(core: Core, personas: Personas, settings: Settings,
                                                              tmp_path: Path) -> None:
    f = tmp_path / "national.txt"
    f.write_text("one.example.test\ncom\n10.1.2.3\ntwo.example.test\none.example.test\n")
    report = tmp_path / "refused.csv"
    r = run(settings, "import", str(f), "--as", "alice", "--reason", "national list", "--report", str(report))
    assert r.returncode == 0, r.stderr
    assert "2 accepted (pending approval), 3 refused" in r.stdout
    assert "line 2: com: com is a top-level domain" in r.stdout
    assert "line 5: one.example.test" in r.stdout and "repeats line 1" in r.stdout
    assert "importing national.txt" in r.stderr  # the progress bar
    assert report.read_text().splitlines()[0] == "line,value,reason"
    assert core.curation.counts()["pending"] == 2
    pending = core.curation.list(status="pending").entries
    assert {e.submitted_by for e in pending} == {"alice"}
    assert {e.reason for e in pending} == {"national list"}


def test_import_dry_run_and_all_refused(core: Core, personas: Personas, settings: Settings, tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_text("com\norg\n")
    r = run(settings, "import", str(f), "--as", "alice")
    assert r.returncode == 1 and "0 accepted" in r.stdout
    g = tmp_path / "good.txt"
    g.write_text("dry.example.test\n")
    r = run(settings, "import", str(g), "--as", "alice", "--dry-run")
    assert r.returncode == 0 and "1 would be accepted" in r.stdout
    assert sum(core.curation.counts().values()) == 0


def test_keys_show_prints_a_minisign_public_key(core: Core, settings: Settings) -> None:
    out = run(settings, "keys", "show").stdout
    lines = out.splitlines()
    assert lines[0].startswith("untrusted comment: minisign public key ")
    assert lines[1].startswith("RW") and len(lines[1]) == 56
    assert out == core.publisher.key.public.text()


def start_worker(settings: Settings, processes: list[subprocess.Popen[bytes]], **extra: str) -> None:
    """The real publisher (`blocklist worker`): the only process that signs."""
    env = {**os.environ, "BLOCKLIST_REDIS_URL": settings.redis_url or "",
           "BLOCKLIST_DATA_DIR": str(settings.data_dir), "BLOCKLIST_ARTIFACT_DIR": str(settings.artifact_dir),
           "BLOCKLIST_SIGNING_KEY_FILE": str(settings.signing_key_file), "BLOCKLIST_LOG_FORMAT": "text", **extra}
    processes.append(subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def test_isp_commands_and_publish(core: Core, personas: Personas, settings: Settings,
                                  processes: list[subprocess.Popen[bytes]]) -> None:
    start_worker(settings, processes)
    r = run(settings, "isp", "add", "acme", "--notify", "192.0.2.53:53", "--allow-from", "192.0.2.0/24")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["feed_token"].startswith("blf_")
    assert created["tsig_algorithm"] == "hmac-sha256" and len(created["tsig_secret"]) == 44
    e = core.curation.submit(personas.alice.actor, "pub.example.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    r = run(settings, "publish", "--reason", "first")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "1"
    r = run(settings, "publish")
    assert r.returncode == 0 and "nothing changed" in r.stdout
    listing = run(settings, "isp", "list").stdout
    assert "acme" in listing and "active" in listing
    assert run(settings, "isp", "revoke", "acme", "--reason", "contract ended").returncode == 0
    assert not core.isps.get("acme").active
    assert "1" in run(settings, "publications", "list").stdout


def test_address_only_is_an_explicit_audited_mode_that_needs_an_address_list(core: Core, settings: Settings) -> None:
    r = run(settings, "isp", "add", "unbound-isp", "--address-only")
    assert r.returncode == 1
    assert r.stderr.strip() == ("blocklist: an address-only ISP needs at least one allowed address "
                                "(--allow-from CIDR)")
    assert core.isps.list() == [], "nothing was created"
    r = run(settings, "isp", "add", "unbound-isp", "--address-only", "--allow-from", "0.0.0.0/0")
    assert r.returncode == 1 and "too wide" in r.stderr
    r = run(settings, "isp", "add", "unbound-isp", "--address-only", "--allow-from", "192.0.2.53")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["transfer_auth"] == "address-only"
    assert "tsig_secret" not in created
    assert run(settings, "isp", "add", "bind-isp", "--allow-from", "192.0.2.0/24").returncode == 0
    listing = run(settings, "isp", "list").stdout.splitlines()
    assert [ln.split()[2] for ln in listing] == ["tsig", "ADDRESS-ONLY"]
    shown = json.loads(run(settings, "isp", "show", "unbound-isp").stdout)
    assert (shown["transfer_auth"], shown["tsig_key_name"]) == ("address-only", None)
    r = run(settings, "isp", "rotate", "unbound-isp", "--tsig")
    assert r.returncode == 1 and "address-only" in r.stderr
    record = json.loads(run(settings, "audit", "show", "--action", "isp.add", "--target", "isp:unbound-isp").stdout)
    assert record["after"]["transfer_auth"] == "address-only"
    # An ISP registered before this mode existed is switched explicitly, and back.
    assert run(settings, "isp", "add", "old-unbound").returncode == 0
    r = run(settings, "isp", "mode", "old-unbound", "address-only")
    assert r.returncode == 1 and "needs at least one allowed address" in r.stderr
    assert core.isps.get("old-unbound").tsig_secret, "a refused switch changes nothing"
    core.isps.update(SYSTEM, "old-unbound", allow_from=["198.51.100.53"])
    r = run(settings, "isp", "mode", "old-unbound", "address-only", "--reason", "Unbound cannot sign")
    assert r.returncode == 0, r.stderr
    assert (core.isps.get("old-unbound").address_only, core.isps.get("old-unbound").tsig_secret) == (True, "")
    r = run(settings, "isp", "mode", "old-unbound", "tsig")
    assert r.returncode == 0, r.stderr
    assert core.isps.get("old-unbound").tsig_secret == json.loads(r.stdout)["tsig_secret"]
    assert not core.isps.get("old-unbound").address_only
    switches = run(settings, "audit", "show", "--action", "isp.transfer_auth").stdout.splitlines()
    assert len(switches) == 2
    assert "tsig_secret" not in "".join(switches), "secrets never enter the audit log"


def test_settings_commands(core: Core, settings: Settings) -> None:
    r = run(settings, "settings", "set", "guard_remove_pct", "5", "--reason", "tighter")
    assert r.returncode == 0, r.stderr
    assert core.curation.policy().guard_remove_pct == 5.0
    r = run(settings, "settings", "set", "guard_remove_pct", "lots")
    assert r.returncode == 1 and "not a valid value" in r.stderr
    core.curation.set_policy(SYSTEM, {"guard_remove_pct": 10})
