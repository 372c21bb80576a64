"""Key rotation without a flag day, end to end with the real parts.

The real publisher (`blocklist worker`), the real web feed on a socket, the
real pull tool (`blocklist-pull once` as a process, configured like
deploy/pull.example.toml) and the stock `minisign`: the ISP pins only the
old key and never edits its configuration, yet keeps applying new versions
across a rotation, because every manifest signed by the old key announced
the new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from tests.conftest import LiveServer, Personas, require_binary
from tests.test_publishing import validate

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update(BLOCKLIST_REDIS_URL=settings.redis_url or "", BLOCKLIST_DATA_DIR=str(settings.data_dir),
               BLOCKLIST_ARTIFACT_DIR=str(settings.artifact_dir),
               BLOCKLIST_SIGNING_KEY_FILE=str(settings.signing_key_file), BLOCKLIST_LOG_FORMAT="text", **extra)
    return env


def pull_config(isp_dir: Path, feed_url: str, token: str, pinned: str) -> Path:
    """An ISP's pull.toml, as deploy/pull.example.toml shows it."""
    isp_dir.mkdir()
    (isp_dir / "feed-token").write_text(token + "\n")
    os.chmod(isp_dir / "feed-token", 0o600)
    (isp_dir / "out").mkdir()
    cfg = isp_dir / "pull.toml"
    cfg.write_text(
        f'feed_url = "{feed_url}/feed/v1"\n'
        'token_file = "feed-token"\n'
        f'public_keys = ["{pinned}"]\n'
        f'state_dir = "{isp_dir / "state"}"\n'
        "max_version_jump = 10000\n"
        "[[output]]\n"
        'format = "domains"\n'
        f'path = "{isp_dir / "out" / "domains.txt"}"\n'
        'style = "wildcard"\n'
    )
    return cfg


def test_a_rotation_keeps_the_isp_applying_new_versions_without_touching_its_config(
        core: Core, personas: Personas, settings: Settings, live_server: LiveServer, tmp_path: Path,
        processes: list[subprocess.Popen[bytes]]) -> None:
    minisign = require_binary("minisign")
    # The manifest job runs every 10 s; a re-signing merely due comes only after 40 s.
    env = service_env(settings, BLOCKLIST_KEY_ROTATION_OVERLAP="25", BLOCKLIST_MANIFEST_REFRESH="40")
    ops = tmp_path / "ops"
    ops.mkdir()

    def blocklist(*args: str) -> subprocess.CompletedProcess[str]:
        r = run("blocklist", *args, env=env, cwd=ops)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def list_entry(value: str) -> None:
        e = core.curation.submit(personas.alice.actor, value)
        core.curation.act(personas.bruno.actor, e.id, "approve")

    def publish() -> int:
        return int(blocklist("publish", "--force", "--reason", "test").stdout.splitlines()[-1])

    token = core.isps.add(SYSTEM, "acme")["feed_token"]
    old_pub = blocklist("keys", "show").stdout
    old_id = old_pub.splitlines()[0].rsplit(" ", 1)[1]
    isp = tmp_path / "isp"
    cfg = pull_config(isp, live_server.url, token, old_pub.splitlines()[1])
    config_before = cfg.read_bytes()
    processes.append(subprocess.Popen([str(BIN / "blocklist"), "worker"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))

    def pull() -> dict[str, object]:
        r = run("blocklist-pull", "-c", str(cfg), "once", env={**os.environ})
        assert r.returncode == 0, (r.stdout, r.stderr)
        return dict(json.loads((isp / "state" / "state.json").read_text()))

    def learned() -> dict[str, object]:
        path = isp / "state" / "keys.json"
        return dict(json.loads(path.read_text())) if path.exists() else {"learned": [], "retired": []}

    list_entry("one.example.test")
    v1 = publish()
    assert pull()["version"] == v1

    # The operator starts the rotation on the publisher host.
    r = blocklist("keys", "rotate")
    new_pub = r.stdout
    new_id = new_pub.splitlines()[0].rsplit(" ", 1)[1]
    assert new_id != old_id
    assert blocklist("keys", "show", "--next").stdout == new_pub
    # The worker re-signs the manifest with the announcement by itself, without a new version.
    deadline = time.monotonic() + 20
    while "next_key" not in (manifest := json.loads(core.store.pubs.manifest()[0])):  # type: ignore[index]
        assert time.monotonic() < deadline, "the manifest did not announce the next key"
        time.sleep(0.5)
    assert manifest["version"] == v1
    assert manifest["key_id"] == old_id and manifest["next_key"]["key_id"] == new_id
    assert manifest["next_key"]["public_key"] == new_pub.splitlines()[1]
    validate("manifest", manifest)  # the announcement is part of the published format
    state = pull()
    assert state["version"] == v1 and state["key_id"] == old_id
    assert [k["key_id"] for k in learned()["learned"]] == [new_id]  # type: ignore[index]
    list_entry("two.example.test")
    v2 = publish()
    state = pull()
    assert state["version"] == v2 and state["key_id"] == old_id
    assert [k["key_id"] for k in learned()["learned"]] == [new_id]  # type: ignore[index]
    status = run("blocklist-pull", "-c", str(cfg), "status", env={**os.environ}).stdout
    assert new_id in status  # what the ISP reads to compare over a second channel

    # After the overlap the new key takes over; the old one is retired.
    early = run("blocklist", "keys", "rotate", "--complete", env=env, cwd=ops)
    assert early.returncode == 1 and "lasts until" in early.stderr
    starts = json.loads(blocklist("keys", "status", "--json").stdout)["next_from_ts"]
    time.sleep(max(0.0, starts - time.time()) + 0.5)
    done = blocklist("keys", "rotate", "--complete")
    v3 = int(done.stdout.splitlines()[-1])
    assert v3 > v2
    assert blocklist("keys", "show").stdout == new_pub
    state = pull()
    assert state["version"] == v3 and state["key_id"] == new_id
    assert learned()["retired"] == [old_id]

    # Stock minisign accepts the new artifacts with the new public key, and not with the old one.
    (tmp_path / "new.pub").write_text(new_pub)
    (tmp_path / "old.pub").write_text(old_pub)
    for rel in (f"snapshots/{v3}.json", f"rpz/{v3}.zone", "manifest.json"):
        path = core.artifacts.path(rel)
        ok = subprocess.run([minisign, "-Vm", str(path), "-p", str(tmp_path / "new.pub")], capture_output=True)
        assert ok.returncode == 0, (rel, ok.stderr)
        bad = subprocess.run([minisign, "-Vm", str(path), "-p", str(tmp_path / "old.pub")], capture_output=True)
        assert bad.returncode != 0, rel

    # And the ISP keeps applying new versions, its configuration untouched.
    list_entry("three.example.test")
    v4 = publish()
    assert pull()["version"] == v4
    domains = (isp / "out" / "domains.txt").read_text()
    assert "three.example.test" in domains and "one.example.test" in domains
    assert cfg.read_bytes() == config_before
