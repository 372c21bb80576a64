"""The transfer server as ISPs meet it: real Redis, real publications, kdig.

The server runs on its own event loop in a thread (``ServerThread``), fed
by the publisher through Redis exactly as ``blocklist xfrd`` is; one test
runs the real ``blocklist xfrd`` process.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.versioned
import dns.xfr
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from app.artifacts import compress
from app.config import Settings
from app.core import Core
from app.embedded import free_port
from app.rpz import Layout
from app.xfr import Access, BuildReport, RecordZone, Zone, build_snapshot
from tests.conftest import Personas, publish, require_binary
from tests.test_xfr_wire import mutated
from workers.xfrd import Loaded, ServerThread

ZONE = "blocklist.rpz."


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests follow the base zone version by version: overlay off
    (tests/test_zones.py covers the overlay)."""
    return replace(settings, rpz_fold_grace=0)


@pytest.fixture
def dns_settings(settings: Settings) -> Settings:
    # Every client here comes from 127.0.0.1: room for the many-clients and fuzz tests
    # (tests/security/ checks the per-address limits at their defaults).
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None, dns_tcp_idle=3.0,
                   notify_timeout=0.3, notify_retries=4, dns_max_connections_per_address=100,
                   dns_queries_per_second=10_000.0, dns_query_burst=10_000)


def listed(core: Core, p: Personas, entries: dict[str, bool]) -> dict[str, int]:
    """Submit (alice) and approve (bruno) domain entries; value -> id."""
    ids = {}
    for value, sub in entries.items():
        e = core.curation.submit(p.alice.actor, value, "domain", sub, None, "seen on a forum", "case-1")
        core.curation.act(p.bruno.actor, e.id, "approve")
        ids[value] = e.id
    return ids


def bulk_listed(core: Core, p: Personas, entries: dict[str, bool]) -> dict[str, bool]:
    """Import (alice) and approve in bulk (bruno) many domain entries."""
    from app.curation import parse_import

    lines = ["value,subdomains"] + [f"{v},{'yes' if s else 'no'}" for v, s in entries.items()]
    report = core.curation.import_rows(p.alice.actor, parse_import(lines), source="test", default_reason="bulk")
    assert report.accepted == len(entries), report.refused[:3]
    for start in range(0, len(report.ids), 5000):
        core.curation.approve_many(p.bruno.actor, report.ids[start:start + 5000])
    return entries


def zone_names(entries: dict[str, bool]) -> set[str]:
    """Owner names of the zone's CNAME records: the entries and the blocked canary."""
    out = {f"blocked.canary.{ZONE}"}
    for v, sub in entries.items():
        out.add(f"{v}.{ZONE}")
        if sub:
            out.add(f"*.{v}.{ZONE}")
    return out


def kdig(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("kdig"), "-p", str(port), "@127.0.0.1", "+time=5", "+retry=0", *args],
                          check=False, capture_output=True, text=True, timeout=60)


def records(output: str) -> list[tuple[str, str, str]]:
    """(owner, type, data) of the records kdig printed, TSIG left out."""
    out = []
    for line in output.splitlines():
        if not line or line.startswith(";"):
            continue
        parts = line.split(None, 4)
        if parts[3] != "TSIG":
            out.append((parts[0], parts[3], parts[4]))
    return out


def tsig(isp: dict[str, Any]) -> str:
    return f"hmac-sha256:{isp['tsig_key_name']}:{isp['tsig_secret']}"


def soa_serial(port: int, timeout: float = 1.0) -> int | None:
    q = dns.message.make_query(ZONE, "SOA")
    try:
        # Unsigned, over UDP, the answer is truncated (no amplification): the client retries over TCP.
        r, _ = dns.query.udp_with_fallback(q, "127.0.0.1", port=port, timeout=timeout)
    except (dns.exception.Timeout, OSError, EOFError):
        return None
    return int(r.answer[0][0].serial) if r.answer else None


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(step)


@pytest.fixture
def acme(core: Core, personas: Personas) -> dict[str, Any]:
    return core.isps.add(personas.ada.actor, "acme")


@pytest.fixture
def server(dns_settings: Settings, core: Core) -> Iterator[ServerThread]:
    with ServerThread(dns_settings, core.store) as t:
        yield t


ENTRIES = {"csam-forum.example": True, "mirror.bad-host.example": False, "deep.cdn.example": True}


# --------------------------------------------------------------------------- kdig


def test_kdig_axfr_with_tsig_returns_exactly_the_published_entries(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread) -> None:
    listed(core, personas, ENTRIES)
    core.curation.submit(personas.alice.actor, "pending-only.example", "domain", True, None, "not yet vetted")
    url = core.curation.submit(personas.alice.actor, "https://host.example/path", "url", None, None, "a page")
    core.curation.act(personas.bruno.actor, url.id, "approve")
    version = publish(core).version
    wait_for(lambda: soa_serial(server.port) == version)
    out = kdig(server.port, "-y", tsig(acme), "+tcp", "AXFR", ZONE)
    assert out.returncode == 0, out.stderr
    recs = records(out.stdout)
    assert recs[0][1] == recs[-1][1] == "SOA"
    assert recs[0][2].split()[2] == str(version)
    cnames = [(owner, data) for owner, kind, data in recs if kind == "CNAME"]
    assert {owner for owner, _ in cnames} == zone_names(ENTRIES)
    assert len(cnames) == len(zone_names(ENTRIES))
    assert {data for _, data in cnames} == {"."}
    wait_for(lambda: core.isps.get("acme").last_pull_via == "xfr:axfr")
    assert core.isps.get("acme").last_version == version


def test_kdig_ixfr_with_tsig_returns_just_the_change(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread) -> None:
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "the site is gone")
    listed(core, personas, {"new-site.example": False})
    v2 = publish(core).version
    wait_for(lambda: soa_serial(server.port) == v2)
    out = kdig(server.port, "-y", tsig(acme), f"IXFR={v1}", ZONE)
    assert out.returncode == 0, out.stderr
    recs = [(owner, kind, data.split()[2] if kind == "SOA" else data.split()[0] if kind == "ZONEMD" else data)
            for owner, kind, data in records(out.stdout)]
    assert recs == [
        (ZONE, "SOA", str(v2)), (ZONE, "SOA", str(v1)),
        (ZONE, "ZONEMD", str(v1)), (f"version.canary.{ZONE}", "TXT", f'"{v1}"'),
        (f"csam-forum.example.{ZONE}", "CNAME", "."), (f"*.csam-forum.example.{ZONE}", "CNAME", "."),
        (ZONE, "SOA", str(v2)),
        (ZONE, "ZONEMD", str(v2)), (f"version.canary.{ZONE}", "TXT", f'"{v2}"'),
        (f"new-site.example.{ZONE}", "CNAME", "."),
        (ZONE, "SOA", str(v2)),
    ]
    current = kdig(server.port, "-y", tsig(acme), f"IXFR={v2}", ZONE)
    assert [kind for _, kind, _ in records(current.stdout)] == ["SOA"]


def test_without_tsig_or_with_a_wrong_key_the_transfer_is_refused_and_logged(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread,
        caplog: pytest.LogCaptureFixture) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    wait_for(lambda: soa_serial(server.port) == version)
    plain = kdig(server.port, "+tcp", "AXFR", ZONE)
    assert plain.returncode != 0
    assert "REFUSED" in plain.stdout + plain.stderr
    assert not [r for r in records(plain.stdout) if r[1] == "CNAME"]
    wrong = base64.b64encode(os.urandom(32)).decode()
    bad = kdig(server.port, "-y", f"hmac-sha256:{acme['tsig_key_name']}:{wrong}", "AXFR", ZONE)
    assert bad.returncode != 0
    assert "BADSIG" in bad.stdout + bad.stderr
    unknown = kdig(server.port, "-y", f"hmac-sha256:stranger.tsig.:{wrong}", "AXFR", ZONE)
    assert "BADKEY" in unknown.stdout + unknown.stderr
    refusals = [r for r in caplog.records if r.name == "blocklist.xfrd" and getattr(r, "reason", None)]
    assert {r.reason for r in refusals} >= {"no_tsig", "badsig", "badkey"}  # type: ignore[attr-defined]
    assert all(r.peer == "127.0.0.1" for r in refusals)  # type: ignore[attr-defined]


def test_an_address_only_isp_transfers_without_tsig(core: Core, personas: Personas, server: ServerThread) -> None:
    core.isps.add(personas.ada.actor, "resolver", allow_from=["127.0.0.0/8"], address_only=True)
    listed(core, personas, ENTRIES)
    version = publish(core).version
    wait_for(lambda: soa_serial(server.port) == version)
    wait_for(lambda: server.server is not None and server.server.access.address_only)
    out = kdig(server.port, "+tcp", "AXFR", ZONE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {o for o, k, _ in records(out.stdout) if k == "CNAME"} == zone_names(ENTRIES)


# --------------------------------------------------------------------------- versions and ISPs


def test_a_new_publication_is_served_at_once_and_never_later_than_a_second(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread) -> None:
    listed(core, personas, ENTRIES)
    v1 = publish(core).version
    wait_for(lambda: soa_serial(server.port) == v1)
    listed(core, personas, {"fresh.example": True})
    v2 = publish(core).version
    t0 = time.monotonic()
    wait_for(lambda: soa_serial(server.port) == v2, timeout=3, step=0.005)
    # Pub/sub wakes the server: well under the half-second poll that backs it up.
    assert time.monotonic() - t0 < 0.4


def test_the_server_starts_from_the_latest_version_with_history_for_ixfr(
        dns_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any]) -> None:
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    core.curation.act(personas.bruno.actor, ids["deep.cdn.example"], "delist", "gone")
    v2 = publish(core).version
    listed(core, personas, {"third.example": False})
    v3 = publish(core).version
    with ServerThread(dns_settings, core.store) as t:
        wait_for(lambda: soa_serial(t.port) == v3)
        assert t.server is not None
        zone = t.server.zone
        assert zone is not None
        assert zone.oldest == v1
        out = kdig(t.port, "-y", tsig(acme), f"IXFR={v1}", ZONE)
        changed = [(o, k) for o, k, _ in records(out.stdout) if k == "CNAME"]
        assert changed == [(f"deep.cdn.example.{ZONE}", "CNAME"), (f"*.deep.cdn.example.{ZONE}", "CNAME"),
                           (f"third.example.{ZONE}", "CNAME")]
    assert v2 == v1 + 1


def test_a_version_whose_files_do_not_match_their_publication_record_is_not_served(
        dns_settings: Settings, core: Core, personas: Personas, caplog: pytest.LogCaptureFixture) -> None:
    ids = listed(core, personas, ENTRIES)
    publish(core)
    core.curation.act(personas.bruno.actor, ids["deep.cdn.example"], "delist", "gone")
    v2 = publish(core).version
    meta = core.publisher.version_meta(v2)
    assert meta is not None
    for ref in (meta["rpz"], meta["delta"]):
        # Damage the stored bytes themselves (Redis holds the artifacts).
        stored = core.artifacts.ref(ref["path"])
        assert stored is not None
        data = core.artifacts.read(ref["path"]).replace(b"csam-forum", b"innocent-site")
        blob = f"bl:art:blob:{stored.sha256}"
        core.store.r.delete(blob)
        # As many chunks as recorded: the damaged bytes first, then empty ones.
        core.store.r.rpush(blob, compress(data), *[compress(b"")] * (stored.chunks - 1))
    with ServerThread(dns_settings, core.store) as t:
        wait_for(lambda: any("cannot load version" in r.getMessage() for r in caplog.records))
        assert soa_serial(t.port) is None, "nothing is served rather than a damaged version"
        listed(core, personas, {"third.example": False})
        v3 = publish(core).version
        wait_for(lambda: soa_serial(t.port) == v3, timeout=15, step=0.1)
    assert "does not match the sha256 recorded at publication" in caplog.text


def test_revoking_an_isp_refuses_its_key_within_seconds(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    wait_for(lambda: soa_serial(server.port) == version)
    assert kdig(server.port, "-y", tsig(acme), "AXFR", ZONE).returncode == 0
    core.isps.revoke(personas.ada.actor, "acme", "contract ended")
    t0 = time.monotonic()
    wait_for(lambda: "REFUSED" in kdig(server.port, "-y", tsig(acme), "AXFR", ZONE).stderr, timeout=6, step=0.2)
    assert time.monotonic() - t0 < 4


# --------------------------------------------------------------------------- connections


def _send(sock: socket.socket, q: dns.message.Message) -> None:
    wire = q.to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)


def _read(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    return exactly(struct.unpack("!H", exactly(2))[0])


def test_several_queries_and_transfers_share_one_tcp_connection(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    wait_for(lambda: soa_serial(server.port) == version)
    key = dns.tsig.Key(acme["tsig_key_name"], acme["tsig_secret"], dns.tsig.HMAC_SHA256)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for _ in range(2):
            q = dns.message.make_query(ZONE, "SOA")
            _send(sock, q)
            assert dns.message.from_wire(_read(sock)).answer[0][0].serial == version
            q = dns.message.make_query(ZONE, "AXFR")
            q.use_tsig(key)
            _send(sock, q)
            names: set[str] = set()
            soas = 0
            ctx = None
            while soas < 2:
                r = dns.message.from_wire(_read(sock), keyring=key, request_mac=q.mac, xfr=True, multi=True,
                                          tsig_ctx=ctx, one_rr_per_rrset=True)
                ctx = r.tsig_ctx
                assert r.id == q.id
                for rr in r.answer:
                    soas += rr.rdtype == dns.rdatatype.SOA
                    if rr.rdtype == dns.rdatatype.CNAME:
                        names.add(rr.name.to_text())
            assert names == zone_names(ENTRIES)


def test_idle_connections_are_closed(dns_settings: Settings, core: Core) -> None:
    with ServerThread(replace(dns_settings, dns_tcp_idle=0.5), core.store) as t:
        with socket.create_connection(("127.0.0.1", t.port), timeout=5) as sock:
            t0 = time.monotonic()
            assert sock.recv(10) == b""
            assert 0.4 < time.monotonic() - t0 < 3


def _install(server: ServerThread, zone: Zone) -> None:
    assert server.server is not None
    assert server.server.loop is not None
    done = threading.Event()

    def install() -> None:
        assert server.server is not None
        overlay = RecordZone(server.server.overlay_info, zone.serial, [])
        server.server.install_zone(Loaded(zone, overlay, Layout(zone.serial, (zone.serial,), 0.0), "full", 0.0,
                                          BuildReport()))
        done.set()

    server.server.loop.call_soon_threadsafe(install)
    assert done.wait(5)


def test_a_client_that_stops_reading_is_cut_off_without_stalling_others(
        dns_settings: Settings, core: Core, personas: Personas, caplog: pytest.LogCaptureFixture) -> None:
    core.isps.add(personas.ada.actor, "resolver", allow_from=["127.0.0.1"], address_only=True)
    names = []
    for i in range(200_000):
        names += [f"slow-client-test-{i:06d}.example", f"*.slow-client-test-{i:06d}.example"]
    with ServerThread(replace(dns_settings, dns_tcp_idle=1.0), core.store) as t:
        assert t.server is not None
        info = t.server.info
        _install(t, Zone(info, build_snapshot(info, 42, names)))
        wait_for(lambda: t.server is not None and t.server.access.address_only)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", t.port))
        _send(slow, dns.message.make_query(ZONE, "AXFR"))
        wait_for(lambda: t.server is not None and len(t.server.writers) == 1)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.5:
            assert soa_serial(t.port) == 42  # others are served meanwhile
        wait_for(lambda: t.server is not None and not t.server.writers, timeout=10)
        assert time.monotonic() - t0 < 6
        slow.close()
    assert any("too slow" in r.getMessage() for r in caplog.records)


def test_many_clients_transfer_at_once(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread) -> None:
    entries = {f"site{i:04d}.example": i % 2 == 0 for i in range(300)}
    listed_all = bulk_listed(core, personas, entries)
    version = publish(core).version
    wait_for(lambda: soa_serial(server.port) == version)
    key = dns.tsig.Key(acme["tsig_key_name"], acme["tsig_secret"], dns.tsig.HMAC_SHA256)

    def transfer(_: int) -> set[str]:
        zone = dns.versioned.Zone(ZONE)
        q = dns.message.make_query(ZONE, "AXFR")
        q.use_tsig(key)
        dns.query.inbound_xfr("127.0.0.1", zone, q, port=server.port, timeout=20, lifetime=60)
        return {f"{n}.{ZONE}" for n in zone.nodes if n.to_text() != "@"}

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(transfer, range(40)))
    assert all(r == zone_names(listed_all) | {f"version.canary.{ZONE}"} for r in results)


# --------------------------------------------------------------------------- NOTIFY


class FakeSecondary:
    """A UDP socket that records NOTIFYs of the base zone, answers them from
    the n-th attempt on, and answers those of the overlay zone at once."""

    def __init__(self, answer_from: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answer_from = answer_from
        self.received: list[tuple[float, dns.message.Message]] = []
        self.overlay: list[dns.message.Message] = []
        self.keyring: dict[Any, Any] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            msg = dns.message.from_wire(data, keyring=self.keyring)  # verifies the TSIG
            if msg.question[0].name.to_text() != ZONE:
                self.overlay.append(msg)
                self.sock.sendto(dns.message.make_response(msg).to_wire(), addr)
                continue
            self.received.append((time.monotonic(), msg))
            if len(self.received) >= self.answer_from:
                self.sock.sendto(dns.message.make_response(msg).to_wire(), addr)

    def __enter__(self) -> FakeSecondary:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_notify_reaches_every_target_signed_and_is_retried_with_backoff_until_answered(
        dns_settings: Settings, core: Core, personas: Personas) -> None:
    with FakeSecondary(answer_from=3) as a, FakeSecondary(answer_from=1) as b:
        acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{a.port}"])
        beta = core.isps.add(personas.ada.actor, "beta", notify=[f"127.0.0.1:{b.port}"])
        for fake, isp in ((a, acme), (b, beta)):
            name = dns.name.from_text(isp["tsig_key_name"])
            fake.keyring[name] = dns.tsig.Key(name, isp["tsig_secret"], dns.tsig.HMAC_SHA256)
        listed(core, personas, ENTRIES)
        version = publish(core).version
        with ServerThread(dns_settings, core.store) as t:
            wait_for(lambda: len(a.received) >= 3 and len(b.received) >= 1, timeout=5)
            time.sleep(0.8)
            assert t.server is not None
            metrics = t.server.metrics
            assert metrics.notify.labels("acked")._value.get() == 2 + 2, "both zones, both targets"
            assert metrics.notify.labels("retry")._value.get() == 2
        assert len(a.received) == 3, "answered NOTIFYs are not repeated"
        assert len(b.received) == 1
        for fake in (a, b):
            msg = fake.received[0][1]
            assert msg.opcode() == dns.opcode.NOTIFY
            assert msg.had_tsig
            assert msg.question[0].name.to_text() == ZONE
            assert msg.answer[0][0].serial == version
            assert [m.question[0].name.to_text() for m in fake.overlay] == [f"overlay.{ZONE}"]
            assert fake.overlay[0].answer[0][0].serial == version
        gaps = [b_[0] - a_[0] for a_, b_ in zip(a.received, a.received[1:], strict=False)]
        assert 0.2 < gaps[0] < gaps[1], f"the retry interval doubles: {gaps}"


# --------------------------------------------------------------------------- operations


def test_metrics_and_the_health_file_show_what_is_served(
        dns_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    s = replace(dns_settings, xfrd_metrics_listen=("127.0.0.1", port), health_dir=tmp_path / "health")
    listed(core, personas, ENTRIES)
    version = publish(core).version
    with ServerThread(s, core.store) as t:
        wait_for(lambda: soa_serial(t.port) == version)
        assert kdig(t.port, "-y", tsig(acme), "AXFR", ZONE).returncode == 0
        kdig(t.port, "+tcp", "AXFR", ZONE)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        health = (tmp_path / "health" / "xfrd").read_text()
    assert f"blocklist_xfr_serial {float(version)}" in body
    assert 'blocklist_xfr_requests_total{result="ok",type="axfr"} 1.0' in body
    assert 'blocklist_xfr_requests_total{result="refused",type="axfr"} 1.0' in body
    assert 'blocklist_xfr_refusals_total{reason="no_tsig"} 1.0' in body
    assert "blocklist_xfr_load_seconds " in body
    assert "blocklist_xfr_connections " in body
    assert "blocklist_xfr_bytes_total " in body
    assert abs(int(health) - time.time()) < 10


def test_the_blocklist_xfrd_process_serves_and_stops_on_sigterm(
        dns_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any]) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    s = dns_settings
    env = {**os.environ, "BLOCKLIST_REDIS_URL": str(s.redis_url), "BLOCKLIST_DATA_DIR": str(s.data_dir),
           "BLOCKLIST_ARTIFACT_DIR": str(s.artifact_dir), "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{s.dns_listen[1]}",
           "BLOCKLIST_XFRD_METRICS_LISTEN": "", "BLOCKLIST_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "xfrd"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: soa_serial(s.dns_listen[1], 0.3) == version, timeout=20, step=0.2)
        out = kdig(s.dns_listen[1], "-y", tsig(acme), "AXFR", ZONE)
        assert {o for o, k, _ in records(out.stdout) if k == "CNAME"} == zone_names(ENTRIES)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert '"component": "xfrd"' in stdout
    assert "transfer server stopped" in stdout


# --------------------------------------------------------------------------- fuzz


SEED_QUERIES = [
    dns.message.make_query(ZONE, "SOA").to_wire(),
    dns.message.make_query(ZONE, "AXFR").to_wire(),
    dns.message.make_query(ZONE, "IXFR").to_wire(),
]


def test_random_and_mutated_packets_do_not_stop_correct_answers(
        core: Core, personas: Personas, acme: dict[str, Any], server: ServerThread) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    wait_for(lambda: soa_serial(server.port) == version)
    port = server.port

    @hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(packet=st.one_of(st.binary(max_size=300), *[mutated(w) for w in SEED_QUERIES]), tcp=st.booleans())
    def throw(packet: bytes, tcp: bool) -> None:
        if tcp:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(0.3)
                s.sendall(struct.pack("!H", len(packet)) + packet)
                try:
                    s.recv(65535)
                except (TimeoutError, ConnectionError):
                    pass
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(packet, ("127.0.0.1", port))
        assert soa_serial(port) == version

    throw()
    key = dns.tsig.Key(acme["tsig_key_name"], acme["tsig_secret"], dns.tsig.HMAC_SHA256)
    zone = dns.versioned.Zone(ZONE)
    q = dns.message.make_query(ZONE, "AXFR")
    q.use_tsig(key)
    dns.query.inbound_xfr("127.0.0.1", zone, q, port=port, timeout=5)
    assert {f"{n}.{ZONE}" for n in zone.nodes if n.to_text() != "@"} == zone_names(ENTRIES) | {
        f"version.canary.{ZONE}"}
    assert server.server is not None
    assert server.server.metrics.requests.labels("other", "formerr")._value.get() > 0
    assert server.server.metrics.requests.labels("other", "servfail")._value.get() == 0


def test_access_is_rebuilt_from_the_isps(core: Core, personas: Personas) -> None:
    core.isps.add(personas.ada.actor, "acme", notify=["192.0.2.53:53"], allow_from=["192.0.2.0/24"])
    core.isps.add(personas.ada.actor, "unbound", allow_from=["198.51.100.0/24"], address_only=True)
    core.isps.add(personas.ada.actor, "gone")
    core.isps.revoke(personas.ada.actor, "gone", "left the programme")
    access = Access.from_isps(core.isps.list())
    assert [i.name for i in access.address_only] == ["unbound"], "an ISP with a key must always sign"
    assert [(i.name, t) for i, t in access.notify] == [("acme", "192.0.2.53:53")]
    assert {n.to_text() for n in access.keys} == {"acme.tsig."}
    assert {n.to_text() for n in access.revoked} == {"gone.tsig."}


def test_per_address_limits_group_an_ipv6_host_by_its_slash_64_and_forget_idle_buckets() -> None:
    from workers.xfrd import AddressLimits

    now = [0.0]
    limits = AddressLimits(max_connections=2, rate=1.0, burst=2, clock=lambda: now[0])
    assert limits.open("2001:db8:1:2::1") and limits.open("2001:db8:1:2:ffff::9")
    assert not limits.open("2001:db8:1:2::77"), "one /64 is one host's budget"
    assert limits.open("2001:db8:1:3::1"), "the next /64 is another"
    assert limits.open("::ffff:192.0.2.1") and limits.open("192.0.2.1")
    assert not limits.open("192.0.2.1"), "an IPv4-mapped address is the IPv4 address"
    limits.close("192.0.2.1")
    assert limits.open("192.0.2.1")
    assert [limits.query("198.51.100.1") for _ in range(3)] == [True, True, False]
    now[0] = 1.0
    assert limits.query("198.51.100.1"), "the bucket refills at the rate"
    limits.MAX_TRACKED = 1
    now[0] = 100.0
    assert limits.query("198.51.100.2")
    assert list(limits.buckets) == ["198.51.100.2"], "full buckets are forgotten"
