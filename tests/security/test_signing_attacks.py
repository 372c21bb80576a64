"""Door: the `blocklist` command and the signing key.

Attack: an operator (or a script) runs `blocklist publish`, `keys show`,
`user list`... from another directory with only BLOCKLIST_REDIS_URL set.
The old code silently made ./var with a second signing key, published a
version signed by it into the shared Redis and left a manifest naming files
no server had. Now only the running publisher signs, with the key the store
names; every other command refuses a place that holds no programme and
creates nothing. Every command here runs as a real process, from a
directory of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.config import Settings
from app.core import Core
from app.keys import Keyring, ProgrammeKeys
from app.signing import SecretKey
from app.store import connect
from tests.conftest import Personas, publish, require_binary

BLOCKLIST = str(Path(sys.executable).parent / "blocklist")


def bare_env(**extra: str) -> dict[str, str]:
    """A shell's environment with no BLOCKLIST_* setting but the ones given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update(extra)
    return env


def blocklist(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([BLOCKLIST, *args], cwd=cwd, env=bare_env(**env), capture_output=True, text=True,
                          timeout=120)


def refused(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def worker(settings: Settings, processes: list[subprocess.Popen[bytes]], key_file: Path | None = None,
           log: Path | None = None) -> None:
    env = bare_env(BLOCKLIST_REDIS_URL=settings.redis_url or "", BLOCKLIST_DATA_DIR=str(settings.data_dir),
                   BLOCKLIST_ARTIFACT_DIR=str(settings.artifact_dir),
                   BLOCKLIST_SIGNING_KEY_FILE=str(key_file or settings.signing_key_file),
                   BLOCKLIST_LOG_FORMAT="text")
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
    processes.append(subprocess.Popen([BLOCKLIST, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT))


def add_active(core: Core, personas: Personas, value: str) -> None:
    e = core.curation.submit(personas.alice.actor, value)
    core.curation.act(personas.bruno.actor, e.id, "approve")


def test_publish_from_another_directory_without_a_publisher_signs_nothing_and_creates_nothing(
        core: Core, personas: Personas, settings: Settings, tmp_path: Path) -> None:
    add_active(core, personas, "first.example.test")
    publish(core)
    manifest = core.store.pubs.manifest()
    keys_before = core.store.programme_keys.raw()
    add_active(core, personas, "second.example.test")
    elsewhere = tmp_path / "elsewhere"

    r = blocklist(elsewhere, "publish", "--timeout", "2", BLOCKLIST_REDIS_URL=settings.redis_url or "")

    refused(r, "no publisher answered within 2 s", "blocklist worker")
    assert list(elsewhere.iterdir()) == []  # no ./var, no key
    assert core.latest_version() == 1
    assert core.store.pubs.manifest() == manifest
    assert core.store.programme_keys.raw() == keys_before
    assert core.store.pubs.take_request() is None  # the request was withdrawn, not left for later


def test_keys_show_prints_the_programme_key_from_the_store_identically_from_any_directory(
        core: Core, settings: Settings, tmp_path: Path) -> None:
    url = settings.redis_url or ""
    one = blocklist(tmp_path / "host-a", "keys", "show", BLOCKLIST_REDIS_URL=url)
    two = blocklist(tmp_path / "host-b", "keys", "show", BLOCKLIST_REDIS_URL=url)

    assert one.returncode == 0, one.stderr
    assert one.stdout == two.stdout == core.publisher.key.public.text()
    key_id = core.publisher.key.public.id_hex
    assert one.stdout.splitlines()[0] == f"untrusted comment: minisign public key {key_id}"
    assert list((tmp_path / "host-a").iterdir()) == [] and list((tmp_path / "host-b").iterdir()) == []


def test_a_command_pointed_at_a_redis_holding_no_programme_is_refused_and_changes_nothing(
        core: Core, settings: Settings, tmp_path: Path) -> None:
    empty_url = (settings.redis_url or "").rsplit("/", 1)[0] + "/7"
    empty = connect(empty_url)
    empty.flushdb()
    try:
        for args in (["user", "list"], ["keys", "show"], ["publish", "--timeout", "1"],
                     ["isp", "add", "acme"]):
            r = blocklist(tmp_path / "ops", *args, BLOCKLIST_REDIS_URL=empty_url)
            refused(r, "holds no blocklist programme", empty_url)
            assert empty.dbsize() == 0, args
        assert list((tmp_path / "ops").iterdir()) == []
    finally:
        empty.close()


def test_a_redis_password_is_never_printed_in_the_refusal(settings: Settings, tmp_path: Path) -> None:
    url = (settings.redis_url or "").replace("redis://", "redis://default:hunter2secret@").rsplit("/", 1)[0] + "/7"
    r = blocklist(tmp_path / "ops", "user", "list", BLOCKLIST_REDIS_URL=url)
    assert r.returncode == 1
    assert "hunter2secret" not in r.stderr and "hunter2secret" not in r.stdout


def test_commands_without_a_redis_url_never_create_a_data_directory_or_a_store(tmp_path: Path) -> None:
    cwd = tmp_path / "somewhere"
    r = blocklist(cwd, "user", "list")
    refused(r, "there is no data directory", str(cwd / "var"))
    r = blocklist(cwd, "--data-dir", str(tmp_path / "nowhere"), "publish")
    refused(r, "there is no data directory", str(tmp_path / "nowhere"))
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    r = blocklist(cwd, "--data-dir", str(tmp_path / "empty"), "keys", "show")
    refused(r, "holds no blocklist store")
    r = blocklist(cwd, "--data-dir", str(tmp_path / "empty"), "keys", "init")
    refused(r, "holds no blocklist store")
    assert list((tmp_path / "empty").iterdir()) == []
    assert list(cwd.iterdir()) == []


def test_keys_init_refuses_a_second_key_when_the_store_names_one(core: Core, settings: Settings,
                                                                  tmp_path: Path) -> None:
    before = core.store.programme_keys.raw()
    audit_len = core.store.audit.length()
    cwd = tmp_path / "other-host"
    r = blocklist(cwd, "keys", "init", BLOCKLIST_REDIS_URL=settings.redis_url or "",
                  BLOCKLIST_SIGNING_KEY_FILE=str(cwd / "keys" / "new.key"))
    refused(r, "already names programme key", core.publisher.key.public.id_hex)
    assert not (cwd / "keys").exists()
    assert list(cwd.iterdir()) == []
    assert core.store.programme_keys.raw() == before
    assert core.store.audit.length() == audit_len


def test_keys_init_never_overwrites_a_key_file_and_records_it_once(settings: Settings, tmp_path: Path) -> None:
    url = (settings.redis_url or "").rsplit("/", 1)[0] + "/8"
    fresh = connect(url)
    fresh.flushdb()
    try:
        key = SecretKey.generate()
        key_file = tmp_path / "keys" / "blocklist.key"
        key_file.parent.mkdir()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, key.text().encode())
        os.close(fd)
        original = key_file.read_bytes()

        r = blocklist(tmp_path / "ops", "keys", "init", BLOCKLIST_REDIS_URL=url,
                      BLOCKLIST_SIGNING_KEY_FILE=str(key_file))
        assert r.returncode == 0, r.stderr
        assert r.stdout == key.public.text()
        assert key_file.read_bytes() == original
        raw = fresh.get("bl:keys")
        assert raw and ProgrammeKeys.from_json(raw).current.key_id == key.public.id_hex

        again = blocklist(tmp_path / "ops", "keys", "init", BLOCKLIST_REDIS_URL=url,
                          BLOCKLIST_SIGNING_KEY_FILE=str(key_file))
        refused(again, "already names programme key")
        assert key_file.read_bytes() == original
        assert fresh.get("bl:keys") == raw
    finally:
        fresh.close()


def test_a_worker_holding_another_key_refuses_to_sign_and_says_so_in_readyz(
        core: Core, personas: Personas, settings: Settings, tmp_path: Path, client: Any,
        processes: list[subprocess.Popen[bytes]]) -> None:
    add_active(core, personas, "first.example.test")
    publish(core)
    manifest = core.store.pubs.manifest()
    stray = tmp_path / "stray" / "blocklist.key"
    stray.parent.mkdir()
    fd = os.open(stray, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, SecretKey.generate().text().encode())
    os.close(fd)
    add_active(core, personas, "second.example.test")
    log = tmp_path / "worker.log"
    worker(settings, processes, key_file=stray, log=log)

    r = blocklist(tmp_path / "ops", "publish", "--timeout", "20", BLOCKLIST_REDIS_URL=settings.redis_url or "")

    refused(r, "is not the programme's current key", core.publisher.key.public.id_hex)
    assert core.latest_version() == 1
    assert core.store.pubs.manifest() == manifest
    deadline = time.monotonic() + 20
    while True:
        ok, detail = core.readiness()["signing"]
        if not ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not ok and "cannot sign" in detail and "not the programme's current key" in detail
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "not the programme's current key" in ready.json["checks"]["signing"]
    assert "not the programme's current key" in log.read_text()


def test_publish_is_done_by_the_running_worker_with_the_programme_key(
        core: Core, personas: Personas, settings: Settings, tmp_path: Path,
        processes: list[subprocess.Popen[bytes]]) -> None:
    minisign = require_binary("minisign")
    add_active(core, personas, "first.example.test")
    worker(settings, processes)
    url = settings.redis_url or ""

    r = blocklist(tmp_path / "ops", "publish", "--force", "--reason", "now", BLOCKLIST_REDIS_URL=url)

    assert r.returncode == 0, r.stderr
    version = int(r.stdout.splitlines()[-1])
    assert version == core.latest_version()
    pub = tmp_path / "programme.pub"
    pub.write_text(blocklist(tmp_path / "ops", "keys", "show", BLOCKLIST_REDIS_URL=url).stdout)
    snapshot = core.artifacts.path(f"snapshots/{version}.json")
    check = subprocess.run([minisign, "-Vm", str(snapshot), "-p", str(pub)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert list((tmp_path / "ops").iterdir()) == []
    rec = Keyring(core.store, settings.signing_key_file).require()
    assert rec.current.key_id == core.publisher.key.public.id_hex


def test_serve_pointed_at_an_existing_programme_without_its_key_makes_no_second_key(
        core: Core, settings: Settings, tmp_path: Path) -> None:
    before = core.store.programme_keys.raw()
    users = [u.name for u in core.users.list()]
    data = tmp_path / "new-host"

    r = blocklist(tmp_path / "ops", "serve", "--data-dir", str(data), "--web", "127.0.0.1:1", "--dns",
                  "127.0.0.1:1", BLOCKLIST_REDIS_URL=settings.redis_url or "")

    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert f"the programme's signing key {core.publisher.key.public.id_hex} is not in" in r.stderr
    assert not (data / "keys").exists()
    assert core.store.programme_keys.raw() == before
    assert [u.name for u in core.users.list()] == users


def test_a_worker_pointed_at_a_redis_holding_no_programme_exits_and_signs_nothing(
        settings: Settings, tmp_path: Path) -> None:
    url = (settings.redis_url or "").rsplit("/", 1)[0] + "/9"
    empty = connect(url)
    empty.flushdb()
    try:
        r = blocklist(tmp_path / "ops", "worker", BLOCKLIST_REDIS_URL=url,
                      BLOCKLIST_SIGNING_KEY_FILE=str(settings.signing_key_file))
        assert r.returncode != 0
        assert "names no programme signing key" in r.stderr and "Traceback" not in r.stderr
        assert empty.dbsize() == 0
    finally:
        empty.close()
