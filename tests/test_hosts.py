"""Several hosts, one system of record: real `blocklist web`, `worker` and
`xfrd` processes with their own data directories against one Redis.

Host A holds the signing key and runs the worker; host B holds no key. An
ISP must get the same bytes and the same zone from either host, and deleting
a host's cache directory must change nothing it sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.core import Core
from app.embedded import free_port
from tests.conftest import Personas, require_binary
from tests.test_publishing import activate
from tests.test_xfr_server import ZONE, kdig, records, soa_serial, tsig


@dataclass
class Host:
    name: str
    data: Path
    web_port: int
    dns_port: int

    @property
    def cache(self) -> Path:
        return self.data / "artifacts"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"


def host_env(core: Core, host: Host, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update({
        "BLOCKLIST_REDIS_URL": core.settings.redis_url or "", "BLOCKLIST_DATA_DIR": str(host.data),
        "BLOCKLIST_SECRET_KEY": "two-hosts-test", "BLOCKLIST_LOG_FORMAT": "text",
        "BLOCKLIST_WEB_LISTEN": f"127.0.0.1:{host.web_port}", "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{host.dns_port}",
        "BLOCKLIST_XFRD_METRICS_LISTEN": "", "BLOCKLIST_COOKIE_SECURE": "false",
        # The base zone follows every version (overlay off), as in tests/conftest.py.
        "BLOCKLIST_RPZ_FOLD_GRACE": "0", **extra,
    })
    return env


def start(processes: list[subprocess.Popen[bytes]], core: Core, host: Host, command: str,
          **extra: str) -> subprocess.Popen[bytes]:
    log = (host.data / f"{command}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", command], env=host_env(core, host, **extra),
                            stdout=log, stderr=subprocess.STDOUT)
    processes.append(proc)
    return proc


def get(host: Host, path: str, token: str) -> bytes:
    req = urllib.request.Request(f"{host.url}/feed/v1/{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return bytes(r.read())


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def feed_paths(core: Core, version: int) -> list[str]:
    import json

    manifest = json.loads(core.publisher.manifest()[0])  # type: ignore[index]
    paths = ["manifest.json", "manifest.json.minisig"]
    for art in manifest["artifacts"]:
        paths += [art["path"], art["path"] + ".minisig"]
    assert f"rpz/{version}.zone" in paths or any(p.startswith("deltas/") for p in paths)
    return paths


def everything(host: Host, core: Core, token: str, paths: list[str]) -> dict[str, bytes]:
    return {p: get(host, p, token) for p in paths}


def axfr(host: Host, isp: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = kdig(host.dns_port, "-y", tsig(isp), "AXFR", ZONE)
    assert out.returncode == 0, out.stderr
    got = records(out.stdout)
    assert got, out.stdout
    return got


def test_a_second_host_serves_the_same_feed_and_zone_and_a_deleted_cache_changes_nothing(
        core: Core, personas: Personas, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    a = Host("a", tmp_path / "host-a", free_port(), free_port())
    b = Host("b", tmp_path / "host-b", free_port(), free_port())
    for h in (a, b):
        h.data.mkdir()
    # Host A holds the programme's key (the one the store names); host B none.
    (a.data / "keys").mkdir()
    for f in core.settings.signing_key_file.parent.iterdir():
        shutil.copy2(f, a.data / "keys" / f.name)
    key = core.publisher.key
    isp = core.isps.add(personas.ada.actor, "acme")
    token = isp["feed_token"]
    activate(core, personas, "one.example.test", "two.example.test", "https://three.example.test/x")

    start(processes, core, a, "worker", BLOCKLIST_PUBLISH_INTERVAL="1")
    for h in (a, b):
        start(processes, core, h, "web")
        start(processes, core, h, "xfrd")
    v1 = wait_until(lambda: (core.publisher.latest() or {}).get("version"), 60, "the first publication")
    for h in (a, b):
        wait_until(lambda h=h: soa_serial(h.dns_port) == v1, 60, f"host {h.name}'s transfer server")
        wait_until(lambda h=h: get(h, "manifest.json", token), 60, f"host {h.name}'s web")

    activate(core, personas, "four.example.test")
    v2 = wait_until(lambda: (core.publisher.latest() or {}).get("version", 0) > v1 and
                    core.publisher.latest()["version"], 30, "the second publication")  # type: ignore[index]
    for h in (a, b):
        wait_until(lambda h=h: soa_serial(h.dns_port) == v2, 30, f"host {h.name} to load version {v2}")

    paths = feed_paths(core, v2)
    from_a = everything(a, core, token, paths)
    from_b = everything(b, core, token, paths)
    assert from_a == from_b
    zone_a, zone_b = axfr(a, isp), axfr(b, isp)
    assert zone_a == zone_b
    assert ("four.example.test.blocklist.rpz.", "CNAME", ".") in zone_b

    # The stock tool accepts what the keyless host serves.
    pub = tmp_path / "pinned.pub"
    pub.write_text(key.public.text())
    for rel in paths:
        if rel.endswith(".minisig"):
            continue
        (tmp_path / "got").write_bytes(from_b[rel])
        (tmp_path / "got.minisig").write_bytes(from_b[rel + ".minisig"])
        r = subprocess.run([require_binary("minisign"), "-Vm", str(tmp_path / "got"), "-p", str(pub)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (rel, r.stderr)

    # The keyless host's cache goes away: nothing an ISP sees changes, and
    # the files come back from Redis.
    shutil.rmtree(b.cache, ignore_errors=True)
    assert everything(b, core, token, paths) == from_a
    assert axfr(b, isp) == zone_a
    assert (b.cache / f"snapshots/{v2}.json").is_file() or not any(p.startswith("snapshots/") for p in paths)

    # The publisher's cache goes too: the next change still publishes, and
    # both hosts serve it alike.
    shutil.rmtree(a.cache, ignore_errors=True)
    activate(core, personas, "five.example.test")
    v3 = wait_until(lambda: (core.publisher.latest() or {}).get("version", 0) > v2 and
                    core.publisher.latest()["version"], 30, "the third publication")  # type: ignore[index]
    for h in (a, b):
        wait_until(lambda h=h: soa_serial(h.dns_port) == v3, 30, f"host {h.name} to load version {v3}")
    paths = feed_paths(core, v3)
    assert everything(a, core, token, paths) == everything(b, core, token, paths)
    assert axfr(a, isp) == axfr(b, isp)
