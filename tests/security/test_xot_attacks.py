"""Attacks on the XoT door (zone transfers over TLS, RFC 9103), through the real door.

The attacker uses kdig or Python's own TLS client against a transfer server
listening for XoT with its self-signed certificate; each attack ends with
no zone data, a log line naming the peer and the reason, and nothing
recorded as an ISP's pull.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dns.message
import dns.tsig
import pytest

from app.config import Settings
from app.core import Core
from app.embedded import free_port
from tests.conftest import Personas, publish
from tests.test_xfr_server import ENTRIES, ZONE, kdig, listed, records, soa_serial, tsig, wait_for
from workers.xfrd import ServerThread

XOT_NAME = "xfr.programme.test"


@pytest.fixture
def xot_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xot_listen=("127.0.0.1", free_port()),
                   xot_name=XOT_NAME, xfrd_metrics_listen=None, notify_retries=0)


@pytest.fixture
def acme(core: Core, personas: Personas) -> dict[str, Any]:
    return core.isps.add(personas.ada.actor, "acme", allow_from=["127.0.0.0/8"])


def start(xot_settings: Settings, core: Core, personas: Personas, **changes: Any) -> ServerThread:
    listed(core, personas, ENTRIES)
    version = publish(core).version
    t = ServerThread(replace(xot_settings, **changes), core.store).__enter__()
    wait_for(lambda: soa_serial(t.port) == version)
    wait_for(lambda: t.server is not None and t.server.access.keys)
    return t


@pytest.fixture
def xot(xot_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any]) -> Iterator[ServerThread]:
    t = start(xot_settings, core, personas)
    try:
        yield t
    finally:
        t.__exit__()


def refusals(caplog: pytest.LogCaptureFixture, reason: str) -> list[Any]:
    return [r for r in caplog.records if r.name == "blocklist.xfrd" and getattr(r, "reason", None) == reason]


def tls_client(settings: Settings, **options: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(settings.data_dir / "xot" / "cert.pem"))
    for name, value in options.items():
        if name == "alpn":
            if value:
                ctx.set_alpn_protocols(value)
        else:
            setattr(ctx, name, value)
    return ctx


def signed_axfr(acme: dict[str, Any]) -> bytes:
    q = dns.message.make_query(ZONE, "AXFR")
    q.use_tsig(dns.tsig.Key(acme["tsig_key_name"], acme["tsig_secret"], dns.tsig.HMAC_SHA256))
    wire = q.to_wire()
    return struct.pack("!H", len(wire)) + wire


def everything(sock: socket.socket, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65535):
            data += chunk
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    return data


def test_plain_tcp_client_on_the_xot_port_gets_no_zone(
        core: Core, acme: dict[str, Any], xot: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_connection(("127.0.0.1", xot.xot_port), timeout=5) as sock:
        sock.sendall(signed_axfr(acme))  # a valid, signed request, but not in TLS
        got = everything(sock)
    assert b"csam-forum" not in got
    assert not got.startswith(b"\x00"), "no DNS message comes back"
    wait_for(lambda: refusals(caplog, "tls"))
    assert refusals(caplog, "tls")[0].peer == "127.0.0.1"
    out = kdig(xot.xot_port, "-y", tsig(acme), "+tcp", "AXFR", ZONE)
    assert out.returncode != 0
    assert not [r for r in records(out.stdout) if r[1] == "CNAME"]
    time.sleep(0.3)
    assert core.isps.get("acme").last_pull_at is None


def test_tls_client_checking_the_wrong_name_refuses_the_server(
        xot_settings: Settings, acme: dict[str, Any], xot: ServerThread) -> None:
    ca = xot_settings.data_dir / "xot" / "cert.pem"
    out = kdig(xot.xot_port, "-y", tsig(acme), "+tls", f"+tls-ca={ca}", "+tls-hostname=impostor.example",
               "AXFR", ZONE)
    assert out.returncode != 0
    assert "handshake failed" in out.stdout + out.stderr
    assert not [r for r in records(out.stdout) if r[1] == "CNAME"]
    # The certificate names only the configured name: Python's client refuses the wrong one too.
    with socket.create_connection(("127.0.0.1", xot.xot_port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        tls_client(xot_settings, alpn=["dot"]).wrap_socket(raw, server_hostname="impostor.example")


def test_unsigned_axfr_over_tls_is_refused(
        core: Core, xot_settings: Settings, acme: dict[str, Any], xot: ServerThread,
        caplog: pytest.LogCaptureFixture) -> None:
    ca = xot_settings.data_dir / "xot" / "cert.pem"
    out = kdig(xot.xot_port, "+tls", f"+tls-ca={ca}", f"+tls-hostname={XOT_NAME}", "AXFR", ZONE)
    assert "REFUSED" in out.stdout + out.stderr
    assert not [r for r in records(out.stdout) if r[1] == "CNAME"], "TLS does not replace TSIG"
    assert refusals(caplog, "no_tsig")[0].peer == "127.0.0.1"
    time.sleep(0.3)
    assert core.isps.get("acme").last_pull_at is None


@pytest.mark.parametrize(("options", "reason"), [
    ({"maximum_version": ssl.TLSVersion.TLSv1_2, "alpn": ["dot"]}, "tls"),
    ({"alpn": None}, "alpn"),
    ({"alpn": ["h2"]}, "alpn"),
])
def test_a_client_with_old_tls_or_without_alpn_dot_is_refused(
        xot_settings: Settings, acme: dict[str, Any], xot: ServerThread, caplog: pytest.LogCaptureFixture,
        options: dict[str, Any], reason: str) -> None:
    with socket.create_connection(("127.0.0.1", xot.xot_port), timeout=5) as raw:
        try:
            tls = tls_client(xot_settings, **options).wrap_socket(raw, server_hostname=XOT_NAME)
        except (ssl.SSLError, ConnectionError):
            got = b""
        else:
            with tls:
                try:
                    tls.sendall(signed_axfr(acme))
                except (ssl.SSLError, ConnectionError):
                    pass
                got = everything(tls)
    assert got == b"", "not one byte of an answer"
    wait_for(lambda: refusals(caplog, reason))


def test_half_open_tls_handshakes_from_one_address_cannot_fill_the_server(
        xot_settings: Settings, core: Core, personas: Personas, acme: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    t = start(xot_settings, core, personas, dns_max_connections=8, dns_max_connections_per_address=3,
              dns_tcp_idle=1.5)
    try:
        time.sleep(0.5)  # the SOA polls of start() (over TCP) are closed on the server side too
        stalled = [socket.create_connection(("127.0.0.1", t.xot_port), timeout=5) for _ in range(3)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", t.xot_port), timeout=5) as extra:
            assert everything(extra, 2.0) == b""
        wait_for(lambda: refusals(caplog, "connections_per_address"))
        # Another address is still served over TLS meanwhile.
        ca = xot_settings.data_dir / "xot" / "cert.pem"
        out = kdig(t.xot_port, "-b", "127.0.0.2", "-y", tsig(acme), "+tls", f"+tls-ca={ca}",
                   f"+tls-hostname={XOT_NAME}", "AXFR", ZONE)
        assert [r for r in records(out.stdout) if r[1] == "CNAME"], out.stdout + out.stderr
        # A handshake that never comes is given up after the idle time.
        t0 = time.monotonic()
        assert everything(stalled[0], 5.0) == b""
        assert time.monotonic() - t0 < 3.0
        for s in stalled:
            s.close()
        wait_for(lambda: refusals(caplog, "tls"))
    finally:
        t.__exit__()


def test_a_stolen_key_used_over_tls_from_outside_its_isps_addresses_is_refused(
        core: Core, personas: Personas, xot_settings: Settings, xot: ServerThread,
        caplog: pytest.LogCaptureFixture) -> None:
    beta = core.isps.add(personas.ada.actor, "beta", allow_from=["192.0.2.0/24"])
    wait_for(lambda: xot.server is not None and len(xot.server.access.keys) == 2, timeout=6)
    ca = xot_settings.data_dir / "xot" / "cert.pem"
    out = kdig(xot.xot_port, "-y", tsig(beta), "+tls", f"+tls-ca={ca}", f"+tls-hostname={XOT_NAME}", "AXFR", ZONE)
    assert "REFUSED" in out.stdout + out.stderr
    assert not [r for r in records(out.stdout) if r[1] == "CNAME"], "the address list applies over TLS too"
    line = refusals(caplog, "acl")[0]
    assert line.peer == "127.0.0.1"
