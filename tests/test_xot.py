"""Zone transfers over TLS (RFC 9103, XoT) as ISPs meet them: kdig +tls, a BIND
secondary configured from deploy/isp/bind, and what an eavesdropper sees.

The transfer server runs on its own loop in a thread (``ServerThread``)
with ``xot_listen`` set; its certificate is the self-signed pair it makes
in the data directory, or files given in the settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.core import Core
from app.embedded import free_port
from app.xot import self_signed, spki_pin
from tests.conftest import Personas, offline_resolver_conf, publish, require_binary
from tests.test_cli import run as cli
from tests.test_xfr_peers import DEPLOY, Peer, answered_not_blocked, blocked, render
from tests.test_xfr_server import ENTRIES, ZONE, kdig, listed, records, soa_serial, tsig, wait_for, zone_names
from workers.xfrd import ServerThread

XOT_NAME = "xfr.programme.test"  # (sent in clear as SNI: keep the zone name out of it)


@pytest.fixture
def xot_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xot_listen=("127.0.0.1", free_port()),
                   xot_name=XOT_NAME, xfrd_metrics_listen=None, notify_timeout=0.5, notify_retries=6)


@pytest.fixture
def acme(core: Core, personas: Personas) -> dict[str, Any]:
    return core.isps.add(personas.ada.actor, "acme")


@pytest.fixture
def xot(xot_settings: Settings, core: Core) -> Iterator[ServerThread]:
    with ServerThread(xot_settings, core.store) as t:
        yield t


def ca_file(settings: Settings) -> Path:
    return settings.data_dir / "xot" / "cert.pem"


def tls_args(settings: Settings, hostname: str = XOT_NAME) -> list[str]:
    return ["+tls", f"+tls-ca={ca_file(settings)}", f"+tls-hostname={hostname}"]


def cnames(output: str) -> set[str]:
    return {o for o, k, _ in records(output) if k == "CNAME"}


# --------------------------------------------------------------------------- kdig


def test_kdig_over_tls_transfers_the_zone_by_axfr_and_ixfr_with_tsig(
        xot_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any], xot: ServerThread,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "blocklist.xfrd")
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    wait_for(lambda: soa_serial(xot.port) == v1)
    out = kdig(xot.xot_port, "-y", tsig(acme), *tls_args(xot_settings), "AXFR", ZONE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert cnames(out.stdout) == zone_names(ENTRIES)
    core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
    v2 = publish(core).version
    wait_for(lambda: soa_serial(xot.port) == v2)
    out = kdig(xot.xot_port, "-y", tsig(acme), *tls_args(xot_settings), f"IXFR={v1}", ZONE)
    assert out.returncode == 0, out.stdout + out.stderr
    recs = [(o, k) for o, k, _ in records(out.stdout)]
    assert recs == [(ZONE, "SOA"), (ZONE, "SOA"), (ZONE, "ZONEMD"), (f"version.canary.{ZONE}", "TXT"),
                    (f"csam-forum.example.{ZONE}", "CNAME"), (f"*.csam-forum.example.{ZONE}", "CNAME"),
                    (ZONE, "SOA"), (ZONE, "ZONEMD"), (f"version.canary.{ZONE}", "TXT"), (ZONE, "SOA")]
    wait_for(lambda: any("over TLS" in r.getMessage() and "IXFR of version" in r.getMessage()
                         for r in caplog.records))
    wait_for(lambda: core.isps.get("acme").last_version == v2)


def test_the_pin_an_isp_is_given_is_the_pin_of_the_certificate_served(
        xot_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any], xot: ServerThread) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    wait_for(lambda: soa_serial(xot.port) == version)
    shown = cli(xot_settings, "isp", "show", "acme")
    assert shown.returncode == 0, shown.stderr
    pin = json.loads(shown.stdout)["xot"]["spki_pin_sha256"]
    pem = cli(xot_settings, "xot", "cert").stdout
    assert spki_pin(pem) == pin
    assert pem == ca_file(xot_settings).read_text()
    # kdig checks the pin alone (no CA, no name): the transfer goes through.
    out = kdig(xot.xot_port, "-y", tsig(acme), f"+tls-pin={pin}", "AXFR", ZONE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert cnames(out.stdout) == zone_names(ENTRIES)
    # A pin of another key is refused by the client.
    other = spki_pin(self_signed(XOT_NAME)[0].decode())
    bad = kdig(xot.xot_port, "-y", tsig(acme), f"+tls-pin={other}", "AXFR", ZONE)
    assert bad.returncode != 0
    assert not cnames(bad.stdout)


def test_the_self_signed_certificate_is_made_once_and_kept_and_configured_files_win(
        xot_settings: Settings, core: Core, tmp_path: Path) -> None:
    with ServerThread(xot_settings, core.store) as t:
        assert t.server is not None and t.server.xot_certificate is not None
        first = t.server.xot_certificate.pin
    assert (ca_file(xot_settings).parent / "key.pem").stat().st_mode & 0o077 == 0, "the key is private"
    with ServerThread(xot_settings, core.store) as t:
        assert t.server is not None and t.server.xot_certificate is not None
        assert t.server.xot_certificate.pin == first, "a restart keeps the certificate ISPs pinned"
    cert, key = self_signed("transfer.example.org")
    (tmp_path / "own.crt").write_bytes(cert)
    (tmp_path / "own.key").write_bytes(key)
    own = replace(xot_settings, xot_cert_file=tmp_path / "own.crt", xot_key_file=tmp_path / "own.key")
    with ServerThread(own, core.store) as t:
        assert t.server is not None and t.server.xot_certificate is not None
        assert t.server.xot_certificate.pin == spki_pin(cert.decode())
    assert core.store.isps.xot_cert() == cert.decode(), "the web and the CLI show the certificate now served"


def test_bad_xot_settings_stop_with_the_variable_name(tmp_path: Path) -> None:
    from app.errors import ConfigError

    with pytest.raises(ConfigError, match="BLOCKLIST_XOT_CERT_FILE and BLOCKLIST_XOT_KEY_FILE"):
        Settings.from_env({"BLOCKLIST_XOT_CERT_FILE": str(tmp_path / "a.crt")})
    with pytest.raises(ConfigError, match="BLOCKLIST_XOT_LISTEN"):
        Settings.from_env({"BLOCKLIST_XOT_LISTEN": "853"})
    s = Settings.from_env({"BLOCKLIST_XOT_LISTEN": "127.0.0.1:853",
                           "BLOCKLIST_PUBLIC_URL": "https://blocklist.example.org/admin"})
    assert (s.xot_listen, s.xot_name) == (("127.0.0.1", 853), "blocklist.example.org")
    assert Settings.from_env({}).xot_listen is None, "XoT is off unless asked for"


def test_xfrd_with_a_missing_certificate_file_stops_with_one_sentence_and_serves_nothing(
        xot_settings: Settings, tmp_path: Path) -> None:
    s = xot_settings
    env = {**os.environ, "BLOCKLIST_REDIS_URL": str(s.redis_url), "BLOCKLIST_DATA_DIR": str(s.data_dir),
           "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{s.dns_listen[1]}", "BLOCKLIST_XFRD_METRICS_LISTEN": "",
           "BLOCKLIST_XOT_CERT_FILE": str(tmp_path / "missing.crt"), "BLOCKLIST_XOT_KEY_FILE": str(tmp_path / "k")}
    r = subprocess.run([sys.executable, "-m", "app.cli", "xfrd", "--xot", f"127.0.0.1:{free_port()}"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == f"blocklist: BLOCKLIST_XOT_CERT_FILE: {tmp_path / 'missing.crt'} does not exist"
    assert "listening" not in r.stdout, "no listener was opened"


def test_the_blocklist_xfrd_process_serves_xot_with_the_xot_option(
        xot_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any]) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    s = xot_settings
    xot_port = free_port()
    env = {**os.environ, "BLOCKLIST_REDIS_URL": str(s.redis_url), "BLOCKLIST_DATA_DIR": str(s.data_dir),
           "BLOCKLIST_ARTIFACT_DIR": str(s.artifact_dir), "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{s.dns_listen[1]}",
           "BLOCKLIST_XFRD_METRICS_LISTEN": "", "BLOCKLIST_XOT_NAME": XOT_NAME}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "xfrd", "--xot", f"127.0.0.1:{xot_port}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: soa_serial(s.dns_listen[1], 0.3) == version, timeout=20, step=0.2)
        out = kdig(xot_port, "-y", tsig(acme), *tls_args(s), "AXFR", ZONE)
        assert cnames(out.stdout) == zone_names(ENTRIES), out.stdout + out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "XoT: TLS 1.3, ALPN dot" in stdout


# --------------------------------------------------------------------------- BIND over XoT


def test_bind_secondary_from_the_isp_guide_takes_the_zone_over_tls_and_blocks(
        tmp_path: Path, xot_settings: Settings, core: Core, personas: Personas,
        caplog: pytest.LogCaptureFixture) -> None:
    require_binary("named")
    caplog.set_level(logging.INFO, "blocklist.xfrd")
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, ENTRIES)
    v1 = publish(core).version
    with ServerThread(xot_settings, core.store) as xfrd:
        wait_for(lambda: soa_serial(xfrd.port) == v1)
        bind_dir = tmp_path / "bind"
        bind_dir.mkdir()
        zone_conf = render(DEPLOY / "bind" / "blocklist-rpz-xot.conf", ZONE=ZONE.rstrip("."),
                           PRIMARY_ADDR="127.0.0.1", XOT_PORT=xfrd.xot_port, XOT_NAME=XOT_NAME,
                           CA_FILE=ca_file(xot_settings), TSIG_NAME=acme["tsig_key_name"],
                           TSIG_SECRET=acme["tsig_secret"], ZONE_FILE=bind_dir / "blocklist.rpz.db",
                           OVERLAY_ZONE="overlay." + ZONE.rstrip("."),
                           OVERLAY_ZONE_FILE=bind_dir / "overlay.blocklist.rpz.db")
        policy = render(DEPLOY / "bind" / "response-policy.conf", ZONE=ZONE.rstrip("."),
                        OVERLAY_ZONE="overlay." + ZONE.rstrip("."), POLICY="given")
        (bind_dir / "blocklist-rpz.conf").write_text(zone_conf)
        conf = bind_dir / "named.conf"
        conf.write_text(offline_resolver_conf(bind_dir, bind_dir, named_port, policy)
                        + f'include "{bind_dir}/blocklist-rpz.conf";\n')
        check = subprocess.run([require_binary("named-checkconf"), str(conf)], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        bind = Peer([require_binary("named"), "-g", "-u", "root", "-c", str(conf)], bind_dir / "named.log",
                    named_port)
        bind.start()
        try:
            wait_for(lambda: blocked(bind.ask("csam-forum.example")), timeout=20, step=0.1)
            assert blocked(bind.ask("a.b.csam-forum.example"))
            assert answered_not_blocked(bind.ask("innocent.example"))
            core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
            publish(core)
            wait_for(lambda: answered_not_blocked(bind.ask("csam-forum.example", 0.5)), timeout=10, step=0.05)
            assert blocked(bind.ask("exact-only.example")) or blocked(bind.ask("mirror.bad-host.example"))
        finally:
            bind.stop()
    transfers = [r.getMessage() for r in caplog.records if "XFR of version" in r.getMessage()
                 and "acme" in r.getMessage()]
    assert transfers, "BIND transferred the zone"
    assert all("over TLS" in t for t in transfers), transfers
    assert re.search(r"Transfer completed", bind.log), bind.log[-3000:]


# --------------------------------------------------------------------------- on the wire


class Recorder:
    """A loopback TCP relay that forwards one port to another and keeps every byte it carries."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                with self.lock:
                    self.seen += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_an_eavesdropper_reads_listed_names_from_a_tcp_transfer_but_none_from_an_xot_one(
        xot_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any], xot: ServerThread) -> None:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    wait_for(lambda: soa_serial(xot.port) == version)
    labels = [b"csam-forum", b"bad-host", b"deep"]
    with Recorder(xot.port) as plain:
        out = kdig(plain.port, "-y", tsig(acme), "+tcp", "AXFR", ZONE)
        assert cnames(out.stdout) == zone_names(ENTRIES)
    assert all(label in plain.seen for label in labels), "plain TCP carries the list readably"
    with Recorder(xot.xot_port) as tls:
        out = kdig(tls.port, "-y", tsig(acme), *tls_args(xot_settings), "AXFR", ZONE)
        assert cnames(out.stdout) == zone_names(ENTRIES)
    assert len(tls.seen) > 500, "the transfer did go through the relay"
    assert not [label for label in [*labels, b"blocklist", b"acme"] if label in tls.seen], "nothing readable"


def test_serve_with_xot_prints_the_pin_that_isp_add_gives_and_kdig_checks(tmp_path: Path) -> None:
    data = tmp_path / "var"
    web, dns_port, xot_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLIST_")}
    env.update(BLOCKLIST_LOG_FORMAT="text", BLOCKLIST_XOT_NAME=XOT_NAME, BLOCKLIST_XFRD_METRICS_LISTEN="")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--data-dir", str(data), "--web",
                             f"127.0.0.1:{web}", "--dns", f"127.0.0.1:{dns_port}", "--xot", f"127.0.0.1:{xot_port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        while "press Ctrl-C" not in (line := proc.stdout.readline()):
            assert line, "\n".join(lines)
            lines.append(line)
        printed = re.search(r"XoT \(TLS\):\s+127\.0\.0\.1 port (\d+), name (\S+), SPKI pin (\S+)", "".join(lines))
        assert printed, "".join(lines)
        assert printed.groups()[:2] == (str(xot_port), XOT_NAME)
        pin = printed.group(3)
        cli_env = {**env, "BLOCKLIST_DATA_DIR": str(data)}

        def blocklist(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "app.cli", *args], env=cli_env, capture_output=True,
                                  text=True, timeout=60, check=False)

        # Once the transfer server serves TLS it has stored its certificate.
        pem = wait_for(lambda: blocklist("xot", "cert").stdout, timeout=30, step=0.3)
        assert spki_pin(pem) == pin
        r = blocklist("isp", "add", "acme")
        assert r.returncode == 0, r.stderr
        created = json.loads(r.stdout)
        assert created["xot"]["spki_pin_sha256"] == pin
        assert created["xot"]["name"] == XOT_NAME
        # The TLS session checked against the pin, then a signed answer (SERVFAIL: nothing published yet)
        # once the transfer server has loaded the new key (it reloads the ISPs every 2 s).
        def answered() -> str | None:
            out = kdig(xot_port, "-y", tsig(created), f"+tls-pin={pin}", "SOA", ZONE).stdout
            return out if "status: SERVFAIL" in out else None

        out = wait_for(answered, timeout=10, step=0.5)
        assert "TLS session (TLS1.3)" in out
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
