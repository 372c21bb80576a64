"""`blocklist keys`: the programme key record and the rotation steps, as real processes.

Every mistake is one sentence, exit status 1 (2 for a malformed command
line), and changes neither the store nor the key files; every change is
audited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from app import audit
from app.config import Settings
from app.core import Core


def keys(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")},
           "BLOCKLIST_REDIS_URL": settings.redis_url or "",
           "BLOCKLIST_SIGNING_KEY_FILE": str(settings.signing_key_file), **extra}
    return subprocess.run([sys.executable, "-m", "app.cli", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def key_files(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.signing_key_file.parent.iterdir())


def unchanged(core: Core, settings: Settings, r: subprocess.CompletedProcess[str], says: str,
              record: str | None, files: list[str], code: int = 1) -> None:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert core.store.programme_keys.raw() == record
    assert key_files(settings) == files


def test_a_rotation_is_announced_once_completed_once_and_audited(core: Core, settings: Settings) -> None:
    old = core.publisher.key.public.id_hex
    r = keys(settings, "show", "--next")
    unchanged(core, settings, r, "no next key is announced", core.store.programme_keys.raw(), key_files(settings))
    r = keys(settings, "rotate", "--complete")
    unchanged(core, settings, r, "no next key is announced", core.store.programme_keys.raw(), key_files(settings))
    r = keys(settings, "rotate", "--now")
    unchanged(core, settings, r, "--now goes with --complete", core.store.programme_keys.raw(), key_files(settings), 2)

    started = keys(settings, "rotate", BLOCKLIST_KEY_ROTATION_OVERLAP="86400")
    assert started.returncode == 0, started.stderr
    new = started.stdout.splitlines()[0].rsplit(" ", 1)[1]
    assert key_files(settings) == ["blocklist.key", "blocklist.key.next", "blocklist.key.next.pub",
                                   "blocklist.key.pub"]
    assert oct((settings.signing_key_file.parent / "blocklist.key.next").stat().st_mode & 0o777) == "0o600"
    status = json.loads(keys(settings, "status", "--json").stdout)
    assert status["current"]["key_id"] == old and status["next"]["key_id"] == new

    record, files = core.store.programme_keys.raw(), key_files(settings)
    r = keys(settings, "rotate")
    unchanged(core, settings, r, f"key {new} is already announced as the next key", record, files)
    r = keys(settings, "rotate", "--complete")
    unchanged(core, settings, r, f"the announcement of key {new} lasts until", record, files)
    elsewhere = settings.signing_key_file.parent.parent / "other-host" / "blocklist.key"
    r = keys(settings, "rotate", "--complete", "--now", BLOCKLIST_SIGNING_KEY_FILE=str(elsewhere))
    unchanged(core, settings, r, "complete the rotation on the publisher host that started it", record, files)
    assert not elsewhere.parent.exists()

    # Completing needs a publisher to re-sign; without one it says so after the key is switched.
    r = keys(settings, "rotate", "--complete", "--now", "--timeout", "1")
    assert r.returncode == 1 and "no publisher answered within 1 s" in r.stderr
    assert f"key {new} is now the programme's key; {old} is retired" in r.stderr
    assert key_files(settings) == ["blocklist.key", "blocklist.key.pub", f"blocklist.key.retired-{old}",
                                   f"blocklist.key.retired-{old}.pub"]
    assert keys(settings, "show").stdout.splitlines()[0].endswith(new)
    actions = [r.action for r in audit.search(core.store, target="signing-key", limit=10)[0]]
    assert sorted(actions) == ["keys.complete", "keys.rotate"]
    assert audit.verify(core.store).ok


def test_a_key_file_readable_by_others_is_refused_when_rotating(core: Core, settings: Settings,
                                                                 tmp_path: Path) -> None:
    os.chmod(settings.signing_key_file, 0o644)
    record, files = core.store.programme_keys.raw(), key_files(settings)
    r = keys(settings, "rotate")
    unchanged(core, settings, r, "is readable by other users", record, files, code=2)  # a setting to fix


def test_the_publisher_reminds_the_operator_once_the_next_key_may_take_over(core: Core, clock, caplog) -> None:
    from app.domain import SYSTEM
    from app.keys import Keyring

    Keyring(core.store, core.settings.signing_key_file, clock).rotate(SYSTEM, overlap=3600)
    with caplog.at_level("WARNING", logger="blocklist.publisher"):
        assert core.publisher.check_key()
        assert "keys rotate --complete" not in caplog.text  # still announcing
        clock.advance(3600)
        assert core.publisher.check_key()
        assert caplog.text.count("run `blocklist keys rotate --complete`") == 1
        core.publisher.check_key()  # not again within the hour
        assert caplog.text.count("run `blocklist keys rotate --complete`") == 1
