"""ISP resolvers configured from deploy/isp/, loading the zone from our server.

BIND 9 runs as a TSIG secondary with ``response-policy``, Unbound as an
``rpz:`` zone on an address ACL; both started in the foreground on free
ports in temporary directories, and always stopped. Offline, recursion
goes to a closed port, so a name that is not listed fails (SERVFAIL) and a
listed one gets the policy answer: NXDOMAIN with the RPZ zone's SOA.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from app.config import Settings
from app.core import Core
from app.embedded import free_port
from tests.conftest import Personas, offline_resolver_conf, publish, require_binary
from tests.test_xfr_server import ZONE, bulk_listed, kdig, listed, records, soa_serial, tsig, wait_for
from workers.xfrd import ServerThread

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "isp"
OVERLAY = "overlay." + ZONE
BASE_TRANSFER = r"transfer of 'blocklist\.rpz/IN' from [^:]+: Transfer completed: (\d+) messages, (\d+) records"


def render(template: Path, **values: object) -> str:
    """Fill the ``{{NAME}}`` placeholders of a deploy/isp file; all must be filled."""
    text = template.read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    assert not left, f"{template.name}: placeholders not filled: {left}"
    return text


class Peer:
    """A resolver process in the foreground, its log in a file."""

    def __init__(self, argv: list[str], log: Path, port: int) -> None:
        self.argv = argv
        self.log_path = log
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.log_file, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ask(self, name: str, timeout: float = 2.0, rdtype: str = "A") -> dns.message.Message | None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.argv[0]} exited:\n{self.log[-3000:]}"
        try:
            return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port,
                                 timeout=timeout)
        except (dns.exception.Timeout, OSError):
            return None


def blocked(r: dns.message.Message | None) -> bool:
    """A policy NXDOMAIN: NXDOMAIN with one of our zones' SOA in the additional section."""
    return (r is not None and r.rcode() == dns.rcode.NXDOMAIN
            and any(rr.rdtype == dns.rdatatype.SOA and rr.name.to_text() in (ZONE, OVERLAY) for rr in r.additional))


def _rcode(r: dns.message.Message | None) -> int | None:
    return None if r is None else int(r.rcode())


def _answer_with_records(r: dns.message.Message | None) -> dns.message.Message | None:
    return r if r is not None and r.answer else None


def answered_not_blocked(r: dns.message.Message | None) -> bool:
    return r is not None and not blocked(r)


@contextmanager
def named(tmp: Path, primary_port: int, isp: dict[str, Any], policy: str = "given", extra: str = "",
          port: int | None = None, base_only: str | None = None) -> Iterator[Peer]:
    """BIND configured from deploy/isp/bind; ``base_only`` replaces the zone
    file with a template that lists only the base zone (older ISP setups)."""
    require_binary("named")
    port = port or free_port()
    values = {"ZONE": ZONE.rstrip("."), "PRIMARY_ADDR": "127.0.0.1", "OVERLAY_ZONE": OVERLAY.rstrip("."),
              "PRIMARY_PORT": primary_port, "TSIG_NAME": isp["tsig_key_name"], "TSIG_SECRET": isp["tsig_secret"],
              "ZONE_FILE": tmp / "blocklist.rpz.db", "OVERLAY_ZONE_FILE": tmp / "overlay.blocklist.rpz.db"}
    if base_only is None:
        zone_conf = render(DEPLOY / "bind" / "blocklist-rpz.conf", **values)
        policy_conf = render(DEPLOY / "bind" / "response-policy.conf", ZONE=ZONE.rstrip("."),
                             OVERLAY_ZONE=OVERLAY.rstrip("."), POLICY=policy)
    else:
        (tmp / "base-only.conf.in").write_text(base_only)
        zone_conf = render(tmp / "base-only.conf.in", **values)
        policy_conf = (f'response-policy {{ zone "{ZONE.rstrip(".")}" policy {policy}; }} break-dnssec yes '
                       "qname-wait-recurse no min-update-interval 0;")
    (tmp / "blocklist-rpz.conf").write_text(zone_conf)
    conf = tmp / "named.conf"
    conf.write_text(offline_resolver_conf(tmp, tmp, port, policy_conf) + f"""include "{tmp}/blocklist-rpz.conf";
{extra}
""")
    check = subprocess.run([require_binary("named-checkconf"), str(conf)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    peer = Peer([require_binary("named"), "-g", "-u", "root", "-c", str(conf)], tmp / "named.log", port)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The base zone follows every version here (overlay off); the overlay
    at real resolvers is tested in tests/test_zones_peers.py."""
    return replace(settings, rpz_fold_grace=0)


@pytest.fixture
def dns_settings(settings: Settings) -> Settings:
    return replace(settings, dns_listen=("127.0.0.1", free_port()), xfrd_metrics_listen=None,
                   notify_timeout=0.5, notify_retries=6, dns_queries_per_second=1000.0, dns_query_burst=1000)


ENTRIES = {"csam-forum.example": True, "exact-only.example": False}
# Enough to need many messages: every one of them must carry a TSIG for BIND.
FILLER = {f"filler{i:05d}.example": i % 2 == 0 for i in range(900)}


def test_bind_secondary_from_the_isp_guide_blocks_and_follows_publications_by_notify_and_ixfr(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    named_port = free_port()
    acme = core.isps.add(personas.ada.actor, "acme", notify=[f"127.0.0.1:{named_port}"])
    ids = listed(core, personas, ENTRIES)
    bulk_listed(core, personas, FILLER)
    v1 = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: soa_serial(xfrd.port) == v1)
        with named(tmp_path, xfrd.port, acme, port=named_port) as bind:
            wait_for(lambda: blocked(bind.ask("csam-forum.example")), timeout=20, step=0.1)
            assert blocked(bind.ask("a.b.csam-forum.example")), "subdomains of a subdomain entry are blocked"
            assert blocked(bind.ask("exact-only.example"))
            assert answered_not_blocked(bind.ask("sub.exact-only.example")), "an exact entry covers only itself"
            assert answered_not_blocked(bind.ask("innocent.example"))
            first = re.findall(BASE_TRANSFER, bind.log)
            assert first, bind.log[-3000:]

            core.curation.act(personas.bruno.actor, ids["csam-forum.example"], "delist", "taken down")
            t0 = time.monotonic()
            v2 = publish(core).version
            wait_for(lambda: answered_not_blocked(bind.ask("csam-forum.example", 0.5)), timeout=10, step=0.05)
            elapsed = time.monotonic() - t0
            assert blocked(bind.ask("exact-only.example")), "the rest of the list is still applied"
            log = bind.log
    # Prompted by NOTIFY: the SOA refresh interval is minutes, this took seconds.
    assert elapsed < 3, elapsed
    assert re.search(r"notify from 127\.0\.0\.1#\d+: serial " + str(v2), log), log[-3000:]
    # Incrementally: the last transfer carried SOA, old SOA, old ZONEMD and
    # canary TXT, the 2 deleted records, SOA, new ZONEMD and TXT, SOA.
    transfers = re.findall(BASE_TRANSFER, log)
    messages, recs = (int(x) for x in first[0])
    # SOA, NS, ZONEMD, canary TXT and CNAME, the entries, closing SOA.
    assert recs == 3 * len(FILLER) // 2 + 3 + 6, "the first transfer was the whole zone"
    assert messages > 3
    assert transfers[-1] == ("1", "10"), transfers
    # And our server gives the same answer to kdig: just the deletion.
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: soa_serial(xfrd.port) == v2)
        out = kdig(xfrd.port, "-y", tsig(acme), f"IXFR={v1}", ZONE)
    recs = [(o, k) for o, k, _ in records(out.stdout)]
    assert recs == [(ZONE, "SOA"), (ZONE, "SOA"), (ZONE, "ZONEMD"), (f"version.canary.{ZONE}", "TXT"),
                    (f"csam-forum.example.{ZONE}", "CNAME"), (f"*.csam-forum.example.{ZONE}", "CNAME"),
                    (ZONE, "SOA"), (ZONE, "ZONEMD"), (f"version.canary.{ZONE}", "TXT"), (ZONE, "SOA")]


def test_bind_with_the_isps_own_stop_page(tmp_path: Path, dns_settings: Settings, core: Core,
                                          personas: Personas) -> None:
    acme = core.isps.add(personas.ada.actor, "acme")
    listed(core, personas, ENTRIES)
    version = publish(core).version
    stop_zone = tmp_path / "isp.example.db"
    stop_zone.write_text("$TTL 60\n@ SOA ns.isp.example. hostmaster.isp.example. 1 60 60 600 60\n"
                         "@ NS ns.isp.example.\nns A 192.0.2.53\nstop A 192.0.2.80\n")
    extra = f'zone "isp.example" {{ type primary; file "{stop_zone}"; }};'
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: soa_serial(xfrd.port) == version)
        with named(tmp_path, xfrd.port, acme, policy="cname stop.isp.example", extra=extra) as bind:
            r = wait_for(lambda: _answer_with_records(bind.ask("www.csam-forum.example")), timeout=20, step=0.1)
    kinds = {(rr.rdtype, rr[0].to_text()) for rr in r.answer}
    assert (dns.rdatatype.CNAME, "stop.isp.example.") in kinds
    assert (dns.rdatatype.A, "192.0.2.80") in kinds


@contextmanager
def unbound(tmp: Path, primary_port: int, port: int | None = None) -> Iterator[Peer]:
    require_binary("unbound")
    port = port or free_port()
    rpz_conf = render(DEPLOY / "unbound" / "blocklist-rpz.conf", ZONE=ZONE.rstrip("."), PRIMARY_ADDR="127.0.0.1",
                      OVERLAY_ZONE=OVERLAY.rstrip("."), PRIMARY_PORT=primary_port,
                      ZONE_FILE=tmp / "blocklist.rpz.zone", OVERLAY_ZONE_FILE=tmp / "overlay.blocklist.rpz.zone")
    (tmp / "blocklist-rpz.conf").write_text(rpz_conf)
    conf = tmp / "unbound.conf"
    conf.write_text(f"""
server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    chroot: ""
    username: ""
    directory: "{tmp}"
    pidfile: "{tmp}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    local-zone: "example." nodefault
    local-data: "innocent.example. 60 IN A 192.0.2.1"
include: "{tmp}/blocklist-rpz.conf"
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@9
remote-control:
    control-enable: no
""")
    check = subprocess.run([require_binary("unbound-checkconf"), str(conf)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    peer = Peer([require_binary("unbound"), "-d", "-c", str(conf)], tmp / "unbound.log", port)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def test_unbound_from_the_isp_guide_loads_the_zone_as_an_address_only_isp_and_blocks(
        tmp_path: Path, dns_settings: Settings, core: Core, personas: Personas) -> None:
    core.isps.add(personas.ada.actor, "resolver", allow_from=["127.0.0.1/32"], address_only=True)
    listed(core, personas, ENTRIES)
    version = publish(core).version
    with ServerThread(dns_settings, core.store) as xfrd:
        wait_for(lambda: soa_serial(xfrd.port) == version)
        wait_for(lambda: xfrd.server is not None and xfrd.server.access.address_only)
        with unbound(tmp_path, xfrd.port) as ub:
            # NXDOMAIN from the policy (the log says so), while an unlisted name resolves.
            wait_for(lambda: _rcode(ub.ask("csam-forum.example")) == dns.rcode.NXDOMAIN, timeout=20, step=0.1)
            assert _rcode(ub.ask("deep.down.csam-forum.example")) == dns.rcode.NXDOMAIN
            other = ub.ask("innocent.example")
            assert other is not None
            assert other.rcode() == dns.rcode.NOERROR
            assert other.answer[0][0].to_text() == "192.0.2.1"
            assert "rpz: applied [blocklist] csam-forum.example." in ub.log, ub.log[-2000:]
