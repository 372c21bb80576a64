"""``blocklist xfrd``: the DNS transfer server (RPZ over AXFR/IXFR with TSIG, NOTIFY).

One asyncio loop serves UDP and TCP on ``BLOCKLIST_DNS_LISTEN`` and, when
``BLOCKLIST_XOT_LISTEN`` is set, TLS 1.3 (RFC 9103, XoT); the wire
work (rendering, TSIG, answers) is in :mod:`app.xfr`, which does no I/O.
A watcher thread does the blocking part: it waits on Redis for publications
(pub/sub, with a poll of the latest version every half second as a fallback),
builds the new version (from the previous one and the published delta when
it can, else from the zone file) and hands it to the loop; it also reloads
the ISPs (keys, address ACLs, NOTIFY targets) every few seconds.

What must stay true:

* The version served only changes as a whole: a transfer that started on
  one version finishes on it, the next request sees the new one.
* A version that cannot be loaded (a damaged file, a sha256 that does not
  match its publication record) is not served; the previous one stays.
* A slow or idle client never holds more than its own connection: reads and
  writes time out, writes honour backpressure, connections are capped.
* One source address cannot starve the others: it has its own cap on open
  connections and its own query rate (IPv6: per /64), and a connection is
  closed after ``BLOCKLIST_DNS_TCP_IDLE`` seconds without an authenticated
  request (unsigned SOA queries do not keep it open).
* Every refusal is logged with the peer address and the reason; every
  transfer is recorded as a pull of that ISP.
* SIGTERM or SIGINT stops the listeners and ends the process cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from app import rpz
from app.artifacts import ArtifactStore
from app.clock import system_clock
from app.config import Settings, parse_hostport
from app.errors import BlocklistError, ConfigError
from app.isps import Isp, Isps
from app.publication import DeltaRef, FileRef, Latest, Publication
from app.rpz import Layout
from app.store import Store
from app.xfr import (
    SIGN_EVERY,
    Access,
    Answer,
    BuildReport,
    Dispatcher,
    Rec,
    RecordZone,
    Snapshot,
    Step,
    Zone,
    ZoneDataError,
    ZoneInfo,
    apply_changes,
    base_digest,
    base_extras,
    base_names,
    build_snapshot,
    compose_steps,
    overlay_recs,
    zone_file_names,
)
from app.xot import ALPN, XotCertificate, ensure_certificate, server_context

log = logging.getLogger("blocklist.xfrd")

#: How often the ISPs (keys, ACLs, NOTIFY targets) are reloaded, seconds.
ACCESS_REFRESH = 2.0
#: How long the watcher waits on pub/sub before it polls the latest version.
POLL = 0.5
#: A transfer slower than this (bytes per second, after the idle allowance) is cut.
MIN_RATE = 16 * 1024
#: Transport write buffer above which the server waits for the client.
WRITE_HIGH = 256 * 1024
#: How long a base zone's ZONEMD digest stays shared in Redis, seconds.
DIGEST_TTL = 30 * 86400
#: Names a restarted server re-digests at most to answer IXFR from older
#: bases whose digest no server shared (two versions of a million names).
DIGEST_BUDGET = 4_000_000
#: Seconds between health-file touches.
HEALTH_EVERY = 5.0


# --------------------------------------------------------------------------- metrics


class Metrics:
    """The transfer server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("blocklist_xfr_requests", "DNS requests by type and result",
                                ["type", "result"], registry=r)
        self.bytes = Counter("blocklist_xfr_bytes", "Bytes of DNS answers sent", registry=r)
        self.refusals = Counter("blocklist_xfr_refusals", "Requests refused, by reason", ["reason"], registry=r)
        self.notify = Counter("blocklist_xfr_notify", "NOTIFY messages by outcome", ["result"], registry=r)
        self.serial = Gauge("blocklist_xfr_serial", "Version being served (the overlay zone's SOA serial)",
                            registry=r)
        self.base_serial = Gauge("blocklist_xfr_base_serial", "Version the base policy zone holds (its SOA serial)",
                                 registry=r)
        self.load_seconds = Gauge("blocklist_xfr_load_seconds", "Seconds to make the last version servable",
                                  registry=r)
        self.connections = Gauge("blocklist_xfr_connections", "Open TCP connections", registry=r)


class AddressLimits:
    """Budgets per source address (IPv6 addresses share one per /64, which
    one host usually holds): open connections, and a token bucket of
    queries refilled at ``rate`` a second up to ``burst``."""

    #: Buckets kept before the full (idle) ones are forgotten.
    MAX_TRACKED = 100_000

    def __init__(self, max_connections: int, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = max_connections
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.connections: dict[str, int] = {}
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    @staticmethod
    def key(peer: str) -> str:
        try:
            ip = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return peer
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped:
                return str(ip.ipv4_mapped)
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def open(self, peer: str) -> bool:
        """Count a new connection; False (and not counted) over the cap."""
        k = self.key(peer)
        n = self.connections.get(k, 0)
        if n >= self.max_connections:
            return False
        self.connections[k] = n + 1
        return True

    def close(self, peer: str) -> None:
        k = self.key(peer)
        n = self.connections.get(k, 0) - 1
        if n > 0:
            self.connections[k] = n
        else:
            self.connections.pop(k, None)

    def query(self, peer: str) -> bool:
        """Take one query from the address's bucket; False when it is empty."""
        k = self.key(peer)
        now = self.clock()
        tokens, at = self.buckets.get(k, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self.buckets[k] = (tokens, now)
            return False
        self.buckets[k] = (tokens - 1.0, now)
        if len(self.buckets) > self.MAX_TRACKED:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing."""
        full = self.burst / self.rate
        for k, (_tokens, at) in list(self.buckets.items()):
            if now - at >= full:
                del self.buckets[k]
        if len(self.buckets) > self.MAX_TRACKED:  # a flood of fresh addresses: start afresh
            self.buckets.clear()


class _LogLimiter:
    """At most ``limit`` log lines per (peer, reason) a minute: a flood of bad
    packets must not become a flood of log lines."""

    def __init__(self, limit: int = 20, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}

    def allow(self, peer: str, reason: str) -> bool:
        now = time.monotonic()
        start, count = self.seen.get((peer, reason), (now, 0))
        if now - start > self.window:
            start, count = now, 0
        self.seen[(peer, reason)] = (start, count + 1)
        if len(self.seen) > 10_000:
            self.seen.clear()
        return count < self.limit


# --------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """Both served zones of one version: the base (at ``layout.base``) and
    the overlay (at the version itself)."""

    zone: Zone
    overlay: RecordZone
    layout: Layout
    how: str  # "full" | "incremental" (how the base zone was built; "kept" when unchanged)
    seconds: float
    report: BuildReport
    base_seconds: float = 0.0  # building the base zone and its ZONEMD, when it changed

    @property
    def version(self) -> int:
        return self.overlay.serial


class VersionLoader:
    """Builds the served zones from published versions (Redis metadata and
    artifact files). Blocking; runs in the watcher thread.

    Everything it serves is a function of the published data: the version's
    layout (``zones`` in its metadata, see :class:`app.rpz.Layout`) says
    which version the base zone holds and which bases the overlay covers;
    the names come from the latest zone file and the deltas between
    versions. Any two transfer servers therefore serve the same zones."""

    def __init__(self, store: Store, artifacts: ArtifactStore, info: ZoneInfo, history: int,
                 overlay_info: ZoneInfo | None = None) -> None:
        self.store = store
        self.artifacts = artifacts
        self.info = info
        self.overlay_info = overlay_info or ZoneInfo.from_params(
            replace(info.params, zone="overlay." + info.params.zone))
        self.history = history
        self.steps: dict[int, Step] = {}  # by the version a delta leads to
        self.layouts: dict[int, Layout] = {}
        self._under: dict[tuple[int, tuple[str, ...]], set[str]] = {}

    def meta(self, version: int) -> Publication | None:
        raw = self.store.pubs.version_raw(version)
        return Publication.from_json(raw) if raw else None

    def _read(self, ref: FileRef | DeltaRef) -> bytes:
        data = self.artifacts.read(ref.path)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ZoneDataError(f"{ref.path} does not match the sha256 recorded at publication")
        return data

    def step(self, meta: Publication | Latest) -> Step | None:
        """The name difference a version's delta records, or None without one."""
        version = meta.version
        cached = self.steps.get(version)
        if cached is not None:
            return cached
        delta, prev = meta.delta, meta.previous_version
        if delta is None or not prev:
            return None
        try:
            data = json.loads(self._read(delta))
        except (BlocklistError, OSError, ValueError):
            return None
        deleted, added = rpz.delta_names(data)
        s = Step(int(prev), version, frozenset(deleted - rpz.RESERVED), frozenset(added - rpz.RESERVED))
        self.steps[version] = s
        return s

    def _follow(self, latest: Latest) -> None:
        """Read the layouts and deltas of the versions before ``latest``
        (as far as history goes and they are not cached yet)."""
        meta: Publication | Latest | None = latest
        newest = latest.version
        while meta is not None:
            version = meta.version
            if version not in self.layouts:
                self.layouts[version] = Layout.from_json(meta.zones, version)
            s = self.step(meta)
            # Stop where history ends, or where an earlier call already went.
            if s is None or newest - s.old >= self.history or s.old in self.layouts:
                break
            meta = self.meta(s.old)
        floor = newest - 2 * self.history
        for cache in (self.steps, self.layouts):
            for v in [v for v in cache if v < floor]:
                del cache[v]

    def diff(self, old: int, new: int) -> tuple[set[str], set[str]] | None:
        """(deleted, added) names from version ``old`` to ``new``, or None
        when a delta in between is missing."""
        chain: list[Step] = []
        v = new
        while v > old:
            s = self.steps.get(v)
            if s is None:
                return None
            chain.append(s)
            v = s.old
        if v != old:
            return None
        return compose_steps(list(reversed(chain)))

    def overlay_recs(self, version: int, layout: Layout, report: BuildReport, base: Zone) -> list[Rec]:
        blocked: set[str] = set()
        passed: set[str] = set()
        for cover in layout.covers:
            d = self.diff(cover, version)
            if d is None:
                raise ZoneDataError(f"version {version}: the deltas from base version {cover} are not available")
            passed |= d[0]
            blocked |= d[1]
        # The first zone that matches decides, whatever the specificity: a
        # "*.x CNAME rpz-passthru." in the overlay would also pass the names
        # under x that the version still lists on their own, so those go in
        # the overlay too.
        parents = {n[2:] for n in passed if n.startswith("*.")}
        if parents:
            blocked |= self.names_under(base, version, parents)
        return overlay_recs(self.overlay_info, version, blocked, passed, report)

    def names_under(self, base: Zone, version: int, parents: set[str]) -> set[str]:
        """The names ``version`` lists strictly under any of ``parents``:
        those of the base zone held (one scan per base and set of parents,
        cached), moved to ``version`` through the deltas in between."""
        suffixes = tuple(sorted("." + p for p in parents))
        key = (base.serial, suffixes)
        found = self._under.get(key)
        if found is None:
            found = {n for n in base.snapshot.names() if n.endswith(suffixes)}
            if len(self._under) >= 8:
                self._under.pop(next(iter(self._under)))
            self._under[key] = found
        if base.serial <= version:
            d = self.diff(base.serial, version)
            gone, back = (d[0], d[1]) if d is not None else (set(), set())
        else:
            d = self.diff(version, base.serial)
            gone, back = (d[1], d[0]) if d is not None else (set(), set())
        if d is None:
            raise ZoneDataError(f"version {version}: the deltas from base version {base.serial} are not available")
        return (found - gone) | {n for n in back if n.endswith(suffixes)}

    def _base_extras(self, snap: Snapshot) -> tuple[bytes, ...]:
        """The base zone's extra records, its ZONEMD digest computed once
        per base version and shared through Redis with the other servers."""
        digest = base_digest(self.info, snap)
        try:
            self.store.pubs.set_zone_digest(self.info.params.zone, snap.serial, digest, DIGEST_TTL)
        except redis.exceptions.RedisError as e:
            log.warning("cannot share the ZONEMD digest of version %s: %s", snap.serial, e)
        return base_extras(self.info, snap.serial, digest)

    def _past_digest(self, snap: Snapshot, serial: int, deleted: set[str], added: set[str],
                     budget: list[int]) -> bytes | None:
        """The digest of an older base version (for IXFR from it): from
        Redis, else recomputed while the budget of names lasts."""
        try:
            digest = self.store.pubs.zone_digest(self.info.params.zone, serial)
        except redis.exceptions.RedisError:
            digest = None
        if digest is not None or budget[0] < snap.records:
            return digest
        budget[0] -= snap.records
        # Back from the current base: what it added goes, what it deleted returns.
        old = apply_changes(self.info, snap, serial, added, deleted)
        return base_digest(self.info, old)

    def base_history(self, snap: Snapshot, base: int) -> tuple[list[Step], dict[int, tuple[bytes, ...]]]:
        """The differences to ``base`` from the older bases still in history,
        with those bases' extra records, so a restarted server answers IXFR
        from them as the others do."""
        older = sorted({lay.base for lay in self.layouts.values() if lay.base < base}, reverse=True)
        steps: list[Step] = []
        past: dict[int, tuple[bytes, ...]] = {}
        budget = [DIGEST_BUDGET]
        newer = base
        for b in older:
            back = self.diff(b, base)
            d = self.diff(b, newer)
            if back is None or d is None:
                break
            digest = self._past_digest(snap, b, back[0], back[1], budget)
            if digest is None:
                break
            steps.append(Step(b, newer, frozenset(d[0]), frozenset(d[1])))
            past[b] = base_extras(self.info, b, digest)
            newer = b
        return list(reversed(steps)), past

    def full_base(self, latest: Latest, base: int, report: BuildReport) -> Zone:
        """The base zone built from the newest full zone file (the latest
        version's, or the one its metadata names as ``base``), taken to the
        base version through the deltas in between, in either direction."""
        version = latest.version
        file_version = latest.base or version
        file_meta = self.meta(file_version) if file_version != version else None
        zone_file = latest.rpz if file_version == version else (file_meta.rpz if file_meta else None)
        if zone_file is None:
            raise ZoneDataError(f"the full zone file of version {file_version} is no longer stored")
        text = self._read(zone_file).decode("utf-8")
        serial, names = zone_file_names(text)
        if serial != file_version:
            raise ZoneDataError(f"{zone_file.path} has serial {serial}, not {file_version}")
        del text
        if base != file_version:
            forward = base > file_version
            d = self.diff(file_version, base) if forward else self.diff(base, file_version)
            if d is None:
                raise ZoneDataError(f"the deltas between versions {base} and {file_version} are not available")
            gone, back = (d[0], d[1]) if forward else (d[1], d[0])
            names = [n for n in names if n not in gone] if gone else names
            names.extend(back)
        snapshot = build_snapshot(self.info, base, base_names(names), report)
        del names
        steps, past = self.base_history(snapshot, base)
        return Zone(self.info, snapshot, steps, self.history, self._base_extras(snapshot), past)

    def overlay_history(self, version: int, report: BuildReport, base: Zone) -> RecordZone:
        """The overlay of ``version`` with the versions before it that the
        cached layouts and deltas allow, so IXFR works from them too."""
        olds: list[int] = []
        v = version
        while v in self.steps and len(olds) < self.history:
            v = self.steps[v].old
            if v not in self.layouts:
                break
            olds.append(v)
        zone: RecordZone | None = None
        for v in reversed(olds):
            try:
                recs = self.overlay_recs(v, self.layouts[v], BuildReport(), base)
            except ZoneDataError:
                zone = None
                continue
            zone = RecordZone(self.overlay_info, v, recs, (), self.history) if zone is None else zone.advance(v, recs)
        recs = self.overlay_recs(version, self.layouts[version], report, base)
        if zone is None:
            return RecordZone(self.overlay_info, version, recs, (), self.history)
        return zone.advance(version, recs)

    def load(self, current: Loaded | None, latest: Latest) -> Loaded:
        """Both zones for ``latest``: the base built from the current base
        and the deltas in between when they reach it (else from the zone
        file), the overlay from the deltas since the bases it covers.

        When the base moves while the overlay still covers the current base
        (the second step of a fold), the base is left as it is ("deferred"):
        the new overlay is correct over it and goes out at once, and
        :meth:`finish_base` builds the new base (and its ZONEMD, seconds at
        a million names) afterwards."""
        t0 = time.perf_counter()
        version = latest.version
        if current is not None and version <= current.version:
            log.error("the published version went from %s back to %s; serving %s", current.version, version,
                      version, extra={"version": version})
            current = None
            self.steps.clear()
            self.layouts.clear()
        self._follow(latest)
        layout = self.layouts[version]
        report = BuildReport()
        if current is not None and current.zone.serial != layout.base and current.zone.serial in layout.covers:
            base_zone, how, base_seconds = current.zone, "deferred", 0.0
        else:
            base_zone, how, base_seconds = self._base(current.zone if current else None, latest, layout, report)
        if current is not None and current.overlay.serial < version:
            overlay = current.overlay.advance(version, self.overlay_recs(version, layout, report, base_zone))
        else:
            overlay = self.overlay_history(version, report, base_zone)
        return Loaded(base_zone, overlay, layout, how, time.perf_counter() - t0, report, base_seconds)

    def finish_base(self, loaded: Loaded, latest: Latest) -> Loaded:
        """The base zone a deferred load left behind, built now."""
        t0 = time.perf_counter()
        report = BuildReport()
        base_zone, how, base_seconds = self._base(loaded.zone, latest, loaded.layout, report)
        return Loaded(base_zone, loaded.overlay, loaded.layout, how, time.perf_counter() - t0, report, base_seconds)

    def _base(self, current: Zone | None, latest: Latest, layout: Layout,
              report: BuildReport) -> tuple[Zone, str, float]:
        """(base zone, how it was built, seconds) for ``layout.base``."""
        d0 = time.perf_counter()
        if current is not None and current.serial == layout.base:
            return current, "kept", 0.0
        if current is not None and current.serial < layout.base:
            d = self.diff(current.serial, layout.base)
            if d is not None:
                deleted, added = d
                candidate = current.advance(layout.base, deleted, added, report, self._base_extras)
                if report.consistent:
                    return candidate, "incremental", time.perf_counter() - d0
                log.warning("the deltas to version %s do not fit version %s (%d missing, %d already present); "
                            "loading the zone file instead", layout.base, current.serial, report.missing,
                            report.present, extra={"version": layout.base})
                report.missing = report.present = 0
        zone = self.full_base(latest, layout.base, report)
        return zone, "full", time.perf_counter() - d0


# --------------------------------------------------------------------------- server


class XfrServer:
    """The asyncio side: UDP and TCP listeners, answers, NOTIFY, accounting."""

    def __init__(self, settings: Settings, *, isps: Isps | None = None, metrics: Metrics | None = None,
                 sign_every: int = SIGN_EVERY) -> None:
        self.settings = settings
        self.info = ZoneInfo.from_params(rpz.soa_params(settings))
        self.overlay_info = ZoneInfo.from_params(rpz.soa_params(settings, overlay=True))
        self.dispatcher = Dispatcher(self.info, sign_every=sign_every, overlay_info=self.overlay_info)
        self.isps = isps
        self.metrics = metrics or Metrics()
        self.limiter = _LogLimiter()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.notify_tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None
        self.limits = AddressLimits(settings.dns_max_connections_per_address, settings.dns_queries_per_second,
                                    settings.dns_query_burst)
        self.xot: asyncio.Server | None = None
        self.xot_address: tuple[str, int] | None = None
        self.xot_certificate: XotCertificate | None = None
        self._tls: ssl.SSLContext | None = None

    @property
    def zone(self) -> Zone | None:
        return self.dispatcher.zone

    @property
    def overlay(self) -> RecordZone | None:
        return self.dispatcher.overlay

    @property
    def access(self) -> Access:
        return self.dispatcher.access

    # -- lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.settings.xot_listen is not None:  # a bad certificate stops the start before any listener
            cert = await self.loop.run_in_executor(None, ensure_certificate, self.settings)
            self._tls = server_context(cert)
            self.xot_certificate = cert
        host, port = self.settings.dns_listen
        self.tcp = await asyncio.start_server(self._tcp, host, port, reuse_address=True,
                                              limit=70_000, backlog=256)
        sock = self.tcp.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp, _ = await self.loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, self.address[1]),
                                                           family=family)
        self.udp = udp
        log.info("listening on %s port %s (UDP and TCP) for zone %s", host, self.address[1], self.settings.rpz_zone)
        if self.settings.xot_listen is not None:
            await self._start_xot(self.settings.xot_listen)

    async def _start_xot(self, listen: tuple[str, int]) -> None:
        cert = self.xot_certificate
        assert cert is not None
        host, port = listen
        # The TLS handshake runs inside the connection handler, after the
        # per-address limits, so a failed one is logged and counted.
        self.xot = await asyncio.start_server(self._xot, host, port, reuse_address=True, limit=70_000, backlog=256)
        sock = self.xot.sockets[0].getsockname()
        self.xot_address = (sock[0], sock[1])
        log.info("listening on %s port %s (XoT: TLS 1.3, ALPN %s) with the certificate %s, SPKI pin %s", host,
                 sock[1], ALPN, cert.cert_file, cert.pin)

    async def stop(self) -> None:
        for t in list(self.notify_tasks):
            t.cancel()
        if self.tcp is not None:
            self.tcp.close()
        if self.xot is not None:
            self.xot.close()
        if self.udp is not None:
            self.udp.close()
        for w in list(self.writers):
            w.close()
        if self.tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.tcp.wait_closed(), 2)
        await asyncio.gather(*self.notify_tasks, return_exceptions=True)

    # -- state from the watcher (called in the loop thread)

    def install_access(self, access: Access) -> None:
        self.dispatcher.access = access

    def install_zone(self, loaded: Loaded) -> None:
        """Serve both zones of a version at once (one assignment each, in the
        loop thread: no request sees one without the other), then NOTIFY
        each zone whose serial changed."""
        zone, overlay = loaded.zone, loaded.overlay
        previous, previous_overlay = self.dispatcher.zone, self.dispatcher.overlay
        self.dispatcher.zone = zone
        self.dispatcher.overlay = overlay
        self.metrics.serial.set(overlay.serial)
        self.metrics.base_serial.set(zone.serial)
        self.metrics.load_seconds.set(loaded.seconds)
        log.info("serving version %s: overlay %s records over base version %s (%s records, %s, %s) "
                 "in %.3f s; IXFR from %s (base) and %s (overlay)", overlay.serial, overlay.records, zone.serial,
                 zone.records, loaded.how, loaded.layout.phase, loaded.seconds, zone.oldest, overlay.oldest,
                 extra={"version": overlay.serial, "zone": self.settings.rpz_zone})
        if loaded.report.skipped:
            log.warning("version %s: %d names cannot be served as DNS names and were left out, e.g. %s",
                        overlay.serial, len(loaded.report.skipped), loaded.report.skipped[0][:80],
                        extra={"version": overlay.serial})
        changed: list[tuple[ZoneInfo, int]] = []
        if previous_overlay is None or previous_overlay.serial != overlay.serial:
            changed.append((self.overlay_info, overlay.serial))
        if previous is None or previous.serial != zone.serial:
            changed.append((self.info, zone.serial))
        if changed:
            self.notify_all(changed)

    # -- answering

    def dispatch(self, wire: bytes, peer: str, tcp: bool) -> Answer:
        answer = self.dispatcher.handle(wire, peer, tcp)
        self.metrics.requests.labels(answer.kind, answer.result).inc()
        if answer.result == "servfail" and answer.error is not None:
            log.error("SERVFAIL for %s: %s", peer, answer.detail, exc_info=answer.error,
                      extra={"peer": peer, "qtype": answer.kind})
        elif answer.result == "servfail":
            if self.limiter.allow(peer, answer.reason or "servfail"):
                log.info("SERVFAIL %s from %s: %s", answer.kind.upper(), peer, answer.detail,
                         extra={"peer": peer, "reason": answer.reason, "qtype": answer.kind})
        elif answer.result in ("refused", "notauth") or (answer.result == "formerr" and answer.reason):
            reason = answer.reason or answer.result
            self.metrics.refusals.labels(reason).inc()
            if self.limiter.allow(peer, reason):
                level = logging.INFO if answer.result == "formerr" else logging.WARNING
                log.log(level, "%s %s from %s: %s", answer.result.upper(), answer.kind.upper(), peer,
                        answer.detail, extra={"peer": peer, "reason": reason, "qtype": answer.kind,
                                              "isp": answer.isp.name if answer.isp else None})
        return answer

    def transferred(self, answer: Answer, peer: str, messages: int, size: int, seconds: float,
                    over: str = "TCP") -> None:
        isp = answer.isp
        what = "IXFR" if answer.transfer == "xfr:ixfr" else "AXFR"
        log.info("%s of version %s to %s (%s) over %s: %d messages, %d bytes, %.3f s", what, answer.serial,
                 isp.name if isp else "?", peer, over, messages, size, seconds,
                 extra={"peer": peer, "isp": isp.name if isp else None, "version": answer.serial,
                        "qtype": answer.kind})
        if isp is not None and self.isps is not None and answer.transfer and self.loop is not None:
            pull = self.loop.run_in_executor(None, self._record_pull, isp, answer.serial, answer.transfer)
            pull.add_done_callback(lambda f: f.exception())

    def _record_pull(self, isp: Isp, serial: int | None, via: str) -> None:
        assert self.isps is not None
        try:
            self.isps.record_pull(isp, serial, via)
        except (redis.exceptions.RedisError, BlocklistError) as e:
            log.warning("could not record the transfer of %s: %s", isp.name, e, extra={"isp": isp.name})

    def refuse(self, peer: str, reason: str, message: str, *args: object) -> None:
        """Count a refusal by the network side and log it (rate-limited per peer and reason)."""
        self.metrics.refusals.labels(reason).inc()
        if self.limiter.allow(peer, reason):
            log.warning(message, *args, extra={"peer": peer, "reason": reason})

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._connection(reader, writer, None)

    async def _xot(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._connection(reader, writer, self._tls)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          tls: ssl.SSLContext | None) -> None:
        assert self.loop is not None
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if peername else "?"
        over = "TLS" if tls is not None else "TCP"
        if len(self.writers) >= self.settings.dns_max_connections:
            self.refuse(peer, "connections", "too many connections: closing one from %s", peer)
            writer.close()
            return
        if not self.limits.open(peer):
            self.refuse(peer, "connections_per_address", "%s has %d connections open already: closing a new %s one",
                        peer, self.limits.max_connections, over)
            writer.close()
            return
        self.writers.add(writer)
        self.metrics.connections.set(len(self.writers))
        idle = self.settings.dns_tcp_idle
        try:
            if tls is not None and not await self._handshake(writer, tls, peer, idle):
                return
            writer.transport.set_write_buffer_limits(high=WRITE_HIGH)
            # The idle clock starts at the connection and is reset only by an
            # authenticated request: unsigned queries do not keep it open.
            trusted_at = self.loop.time()
            unsigned = 0
            while True:
                left = idle - (self.loop.time() - trusted_at)
                try:
                    if left <= 0:
                        raise TimeoutError
                    head = await asyncio.wait_for(reader.readexactly(2), left)
                    # The rest of the message within the same budget (a second at least, for a signed
                    # request that arrives just as it runs out).
                    wire = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")),
                                                  max(1.0, idle - (self.loop.time() - trusted_at)))
                except TimeoutError:
                    if unsigned:
                        self.refuse(peer, "idle", "closed a %s connection from %s after %.0f s without an "
                                    "authenticated request (%d unauthenticated ones)", over, peer, idle, unsigned)
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                if not self.limits.query(peer):
                    self.refuse(peer, "rate", "%s sends more than %g queries a second: closing its %s connection",
                                peer, self.limits.rate, over)
                    break
                answer = self.dispatch(wire, peer, tcp=True)
                if answer.authenticated:
                    trusted_at, unsigned = self.loop.time(), 0
                else:
                    unsigned += 1
                if not await self._send(writer, answer, peer, over):
                    break
                if answer.authenticated:
                    trusted_at = self.loop.time()  # a long transfer does not count as idle time
                if answer.result == "formerr" and answer.reason in ("short", "response"):
                    break
        except Exception:
            log.exception("%s connection from %s failed", over, peer, extra={"peer": peer})
        finally:
            self.limits.close(peer)
            self.writers.discard(writer)
            self.metrics.connections.set(len(self.writers))
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _handshake(self, writer: asyncio.StreamWriter, tls: ssl.SSLContext, peer: str, idle: float) -> bool:
        """TLS 1.3 with ALPN ``dot`` (RFC 9103); False, logged and counted, when it fails."""
        try:
            await writer.start_tls(tls, ssl_handshake_timeout=idle)
        except (ssl.SSLError, OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            self.refuse(peer, "tls", "TLS handshake with %s failed (%s): a plain TCP client, an old TLS version, "
                        "or a client that does not trust our certificate", peer, _tls_reason(e))
            return False
        tls_object = writer.get_extra_info("ssl_object")
        alpn = tls_object.selected_alpn_protocol() if tls_object is not None else None
        if alpn != ALPN:
            self.refuse(peer, "alpn", "XoT client %s did not offer ALPN %r (RFC 9103): closing", peer, ALPN)
            return False
        return True

    async def _send(self, writer: asyncio.StreamWriter, answer: Answer, peer: str, over: str = "TCP") -> bool:
        """Write an answer; False when the client is gone or too slow."""
        assert self.loop is not None
        idle = self.settings.dns_tcp_idle
        start = self.loop.time()
        sent = count = 0
        transport = writer.transport
        try:
            for message in answer.messages:
                if transport.is_closing():
                    return False
                writer.write(message)
                sent += len(message)
                count += 1
                if transport.get_write_buffer_size() > WRITE_HIGH:
                    await asyncio.wait_for(writer.drain(), idle)
                    if self.loop.time() - start > idle + sent / MIN_RATE:
                        raise TimeoutError
            await asyncio.wait_for(writer.drain(), idle)
        except (TimeoutError, ConnectionError):
            self.metrics.bytes.inc(sent)
            if self.limiter.allow(peer, "slow"):
                log.warning("%s to %s stopped after %d bytes: the client is too slow or gone",
                            answer.transfer or answer.kind, peer, sent,
                            extra={"peer": peer, "reason": "slow", "qtype": answer.kind})
            return False
        self.metrics.bytes.inc(sent)
        if answer.transfer and answer.result == "ok" and count:
            self.transferred(answer, peer, count, sent, self.loop.time() - start, over)
        return True

    # -- NOTIFY (RFC 1996)

    def notify_all(self, zones: list[tuple[ZoneInfo, int]]) -> None:
        """NOTIFY every active ISP target of new zone serials; a newer
        version replaces the NOTIFYs still being retried for the same zone."""
        if self.loop is None or self.settings.notify_retries <= 0:
            return
        for info, serial in zones:
            for t in list(self.notify_tasks):
                if t.get_name() == f"notify {info.origin}":
                    t.cancel()
            for isp, target in self.access.notify:
                task = self.loop.create_task(self._notify(isp, target, info, serial), name=f"notify {info.origin}")
                self.notify_tasks.add(task)
                task.add_done_callback(self.notify_tasks.discard)

    def _notify_message(self, isp: Isp, info: ZoneInfo, serial: int) -> dns.message.Message:
        msg = dns.message.make_query(info.origin, dns.rdatatype.SOA)
        msg.flags = dns.flags.AA  # and no RD; the opcode lives in the flags, so it is set after
        msg.set_opcode(dns.opcode.NOTIFY)
        p = info.params
        msg.answer.append(dns.rrset.from_text(
            info.origin, p.ttl, "IN", "SOA",
            f"{p.mname} {p.rname} {serial} {p.refresh} {p.retry} {p.expire} {p.minimum}"))
        if isp.tsig_secret:
            msg.use_tsig(dns.tsig.Key(isp.tsig_name, isp.tsig_secret, dns.tsig.HMAC_SHA256))
        return msg

    async def _notify(self, isp: Isp, target: str, info: ZoneInfo, serial: int) -> None:
        assert self.loop is not None
        try:
            host, port = parse_hostport(target, "notify target")
        except ConfigError:
            log.warning("%s has a bad NOTIFY target %r", isp.name, target, extra={"isp": isp.name})
            return
        msg = self._notify_message(isp, info, serial)
        proto = _NotifyProtocol(msg.id)
        try:
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: proto, remote_addr=(host, port),
                family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as e:
            self.metrics.notify.labels("failed").inc()
            log.warning("NOTIFY of %s serial %s to %s (%s): %s", info.origin, serial, target, isp.name, e,
                        extra={"isp": isp.name, "peer": host, "version": serial})
            return
        timeout = self.settings.notify_timeout
        try:
            for attempt in range(self.settings.notify_retries):
                if attempt:
                    self.metrics.notify.labels("retry").inc()
                proto.reset()
                transport.sendto(msg.to_wire())  # signed afresh: the time stays within the fudge
                try:
                    rcode = await asyncio.wait_for(asyncio.shield(proto.answer), timeout)
                except TimeoutError:
                    timeout *= 2
                    continue
                if rcode == dns.rcode.NOERROR:
                    self.metrics.notify.labels("acked").inc()
                    log.info("NOTIFY of %s serial %s acknowledged by %s (%s)", info.origin, serial, target, isp.name,
                             extra={"isp": isp.name, "peer": host, "version": serial})
                else:
                    self.metrics.notify.labels("failed").inc()
                    log.warning("NOTIFY of %s serial %s to %s (%s) answered %s", info.origin, serial, target, isp.name,
                                dns.rcode.to_text(dns.rcode.Rcode.make(rcode)), extra={"isp": isp.name, "peer": host})
                return
            self.metrics.notify.labels("failed").inc()
            log.warning("NOTIFY of %s serial %s to %s (%s): no answer after %d attempts", info.origin, serial, target,
                        isp.name, self.settings.notify_retries, extra={"isp": isp.name, "peer": host})
        finally:
            transport.close()


def _tls_reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, TimeoutError):
        return "timed out"
    return type(e).__name__


class _NotifyProtocol(asyncio.DatagramProtocol):
    """Waits for the answer to one NOTIFY (same id, a NOTIFY response)."""

    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def reset(self) -> None:
        if self.answer.done():
            self.answer = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            msg = dns.message.from_wire(data, keyring=False)
        except Exception:  # anything unparsable is not the answer we wait for
            return
        answers = msg.id == self.qid and msg.flags & dns.flags.QR and msg.opcode() == dns.opcode.NOTIFY
        if answers and not self.answer.done():
            self.answer.set_result(int(msg.rcode()))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the retry timer handles it.
        pass


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: XfrServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is None:
            return
        peer = str(addr[0])
        if not self.server.limits.query(peer):
            self.server.refuse(peer, "rate", "%s sends more than %g queries a second: dropping its UDP queries",
                               peer, self.server.limits.rate)
            return
        answer = self.server.dispatch(data, peer, tcp=False)
        size = 0
        for message in answer.messages:
            self.transport.sendto(message, addr)
            size += len(message)
        self.server.metrics.bytes.inc(size)
        if answer.transfer and answer.result == "ok" and answer.isp is not None:
            self.server.transferred(answer, str(addr[0]), 1, size, 0.0, "UDP")

    def error_received(self, exc: Exception) -> None:
        pass


# --------------------------------------------------------------------------- watcher


class Watcher(threading.Thread):
    """Follows publications and ISP changes in Redis and hands them to the loop."""

    def __init__(self, server: XfrServer, store: Store, loader: VersionLoader, isps: Isps,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="xfrd-watcher", daemon=True)
        self.server = server
        self.store = store
        self.loader = loader
        self.isps = isps
        self.loop = loop
        self.stopping = threading.Event()
        self.loaded: Loaded | None = None
        self.last_raw: str | None = None
        self.last_access = 0.0
        self.retry_at = 0.0
        self.failed_raw: str | None = None  # a version that failed to load, retried every 10 s
        self.errors = 0

    def stop(self) -> None:
        self.stopping.set()

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def run(self) -> None:
        pubsub: Any = None
        while not self.stopping.is_set():
            try:
                if pubsub is None:
                    pubsub = self.store.pubs.subscribe()
                # Wakes at once on a publication (then takes any others
                # already queued without waiting); otherwise polls every POLL s.
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL)
                while message is not None:
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0)
                self.step()
                self.errors = 0
            except (redis.exceptions.RedisError, OSError) as e:
                self.errors += 1
                if self.errors in (1, 10) or self.errors % 120 == 0:
                    log.warning("cannot read publications from Redis (%s); still serving version %s", e,
                                self.loaded.version if self.loaded else None)
                with contextlib.suppress(Exception):
                    if pubsub is not None:
                        pubsub.close()
                pubsub = None
                self.stopping.wait(1.0)
            except Exception:
                log.exception("the publication watcher failed; retrying")
                self.stopping.wait(1.0)
        with contextlib.suppress(Exception):
            if pubsub is not None:
                pubsub.close()

    def step(self) -> bool:
        """One look at Redis; True when a new version was installed."""
        raw = self.store.pubs.latest_raw()
        changed = raw is not None and raw != self.last_raw
        now = time.monotonic()
        if changed or now - self.last_access >= ACCESS_REFRESH:
            self._call(self.server.install_access, Access.from_isps(self.isps.list()))
            self.last_access = now
        if not changed or raw is None or (raw == self.failed_raw and now < self.retry_at):
            return False
        try:
            latest = Latest.from_json(raw)
        except (ValueError, KeyError, TypeError) as e:
            log.error("cannot read the latest publication record: %s; still serving %s (retrying in 10 s)", e,
                      self.loaded.version if self.loaded else "nothing")
            self.retry_at = now + 10.0
            self.failed_raw = raw
            return False
        if self.loaded is not None and latest.version == self.loaded.version:
            self.last_raw = raw
            return False
        try:
            loaded = self.loader.load(self.loaded, latest)
        except (BlocklistError, ZoneDataError, OSError, ValueError, KeyError) as e:
            log.error("cannot load version %s: %s; still serving %s (retrying in 10 s)", latest.version,
                      getattr(e, "message", e), self.loaded.version if self.loaded else "nothing",
                      extra={"version": latest.version})
            self.retry_at = now + 10.0
            self.failed_raw = raw
            return False
        self.loaded = loaded
        self.last_raw = raw
        self._call(self.server.install_zone, loaded)
        if loaded.how == "deferred":
            try:
                loaded = self.loader.finish_base(loaded, latest)
            except (BlocklistError, ZoneDataError, OSError, ValueError, KeyError) as e:
                # The overlay in force covers the base still served: correct, only larger.
                log.error("cannot build base version %s: %s; still serving base %s", loaded.layout.base,
                          getattr(e, "message", e), loaded.zone.serial, extra={"version": loaded.version})
                return True
            self.loaded = loaded
            self._call(self.server.install_zone, loaded)
        return True


# --------------------------------------------------------------------------- process


class Health:
    """Touches ``<BLOCKLIST_HEALTH_DIR>/xfrd`` while the server is serving."""

    def __init__(self, health_dir: Path | None) -> None:
        self.path = health_dir / "xfrd" if health_dir else None

    def touch(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(f"{int(time.time())}\n")
        except OSError as e:
            log.warning("cannot write the health file %s: %s", self.path, e)


async def serve(settings: Settings, store: Store, stop: asyncio.Event,
                started: Callable[[XfrServer], None] | None = None) -> None:
    """Run the transfer server until ``stop`` is set."""
    isps = Isps(store, system_clock)
    metrics = Metrics()
    server = XfrServer(settings, isps=isps, metrics=metrics)
    await server.start()
    loop = asyncio.get_running_loop()
    if server.xot_certificate is not None:
        # The web and the CLI show ISPs the pin of the certificate actually served.
        await loop.run_in_executor(None, store.isps.set_xot_cert, server.xot_certificate.pem)
    loader = VersionLoader(store, ArtifactStore(settings.artifact_dir, store), server.info, settings.dns_history,
                           server.overlay_info)
    watcher = Watcher(server, store, loader, isps, loop)
    watcher.start()
    http = None
    if settings.xfrd_metrics_listen is not None:
        host, port = settings.xfrd_metrics_listen
        try:
            http, _thread = start_http_server(port, host, registry=metrics.registry)
        except OSError as e:
            log.warning("metrics are off: cannot listen on %s:%s: %s", host, port, e)
    health = Health(settings.health_dir)
    if started is not None:
        started(server)
    try:
        while not stop.is_set():
            health.touch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEALTH_EVERY)
    finally:
        watcher.stop()
        await server.stop()
        await loop.run_in_executor(None, watcher.join, 5)
        if http is not None:
            http.shutdown()
            http.server_close()
        log.info("transfer server stopped")


def main(settings: Settings | None = None) -> None:
    from app.logs import setup_logging

    settings = settings or Settings.from_env()
    setup_logging(settings, "xfrd")
    if not settings.redis_url:
        raise ConfigError("BLOCKLIST_REDIS_URL is not set (blocklist serve starts an embedded Redis)")
    store = Store.from_url(settings.redis_url)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, store, stop)

    asyncio.run(run())


class ServerThread:
    """The transfer server on its own loop in a thread (tests, benchmarks):
    ``with ServerThread(settings, store) as t: t.port``."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.server: XfrServer | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="xfrd", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def started(server: XfrServer) -> None:
                self.server = server
                self._ready.set()

            await serve(self.settings, self.store, self._stop, started)

        try:
            asyncio.run(run())
        except BaseException as e:
            self._error = e
            self._ready.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        assert self.server.address is not None
        return self.server.address[1]

    @property
    def xot_port(self) -> int:
        assert self.server is not None
        assert self.server.xot_address is not None
        return self.server.xot_address[1]

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)


if __name__ == "__main__":
    main()
