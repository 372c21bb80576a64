"""Prometheus metrics: the web tier's requests, and the service's figures read from Redis.

What must stay true:

* Requests are counted by endpoint (the Flask endpoint name, never the raw
  path: feed paths can carry a token and an unbounded version number),
  method and status, with their latency.
* Under gunicorn every worker is its own process. With
  ``PROMETHEUS_MULTIPROC_DIR`` set (``deploy/gunicorn.conf.py`` sees to it)
  each process writes its samples there and whichever process answers a
  scrape reports the sum of all of them.
* Publisher and ISP figures are not counted in any process: a collector
  reads them from Redis at scrape time, so every web process on every host
  reports the same values and a restart loses nothing. When Redis does not
  answer, the scrape still succeeds with ``blocklist_store_up 0``.
* ``/metrics`` answers loopback clients that did not come through a proxy,
  and requests that carry ``BLOCKLIST_METRICS_TOKEN`` as a bearer token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis.exceptions
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core import Core
from app.domain import Status, epoch
from app.errors import AuthenticationError, BlocklistError, PermissionDeniedError
from app.isp_lag import lags
from app.web import core_of
from app.web.common import bearer_token

log = logging.getLogger("blocklist.metrics")

bp = Blueprint("metrics", __name__)

#: Latency buckets, seconds: API calls take milliseconds, large feed files seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Headers that mark a request as relayed by a proxy, whatever address it came from.
_PROXY_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")
#: The classic text format, which every Prometheus 2 parses (all names here are plain ASCII).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Components whose heartbeat files are reported (``<BLOCKLIST_HEALTH_DIR>/<name>``).
HEARTBEATS = ("worker", "xfrd")


@dataclass
class WebMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram


def init_app(app: Flask) -> None:
    registry = CollectorRegistry(auto_describe=True)
    metrics = WebMetrics(
        registry=registry,
        requests=Counter(
            "blocklist_http_requests", "HTTP requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"], registry=registry,
        ),
        latency=Histogram(
            "blocklist_http_request_duration_seconds", "Time to answer an HTTP request, by endpoint and method.",
            ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=registry,
        ),
    )
    app.extensions["blocklist.metrics"] = metrics
    # First of all before-request steps: one of them (the stop page, sign-in)
    # may answer by itself, and that answer is counted too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_observe)
    app.register_blueprint(bp)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.get("metrics_started")
    if started is None:
        return response
    metrics: WebMetrics = current_app.extensions["blocklist.metrics"]
    endpoint = request.endpoint or "none"
    method = request.method
    metrics.requests.labels(endpoint, method, str(response.status_code)).inc()
    metrics.latency.labels(endpoint, method).observe(time.perf_counter() - started)
    return response


@bp.get("/metrics")
def metrics_view() -> Response:
    _authorise()
    core = core_of(current_app)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = current_app.extensions["blocklist.metrics"].registry
    registry_with_store = CollectorRegistry()
    registry_with_store.register(_Merged(registry))
    registry_with_store.register(StoreCollector(core))
    return Response(generate_latest(registry_with_store), headers={"Content-Type": CONTENT_TYPE,
                                                                   "Cache-Control": "no-store"})


def _authorise() -> None:
    token = core_of(current_app).settings.metrics_token
    if request.headers.get("Authorization"):
        value = bearer_token("metrics token", "<BLOCKLIST_METRICS_TOKEN>")
        if token and hmac.compare_digest(value.encode(), token.encode()):
            return
        raise AuthenticationError("the metrics token is not valid")
    if _direct_loopback():
        return
    raise PermissionDeniedError("metrics are served to local clients and to holders of the metrics token")


def _direct_loopback() -> bool:
    if any(h in request.headers for h in _PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address((request.remote_addr or "").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class _Merged(Collector):
    """Another registry's samples inside the scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from self.source.collect()


# --------------------------------------------------------------------------- figures read from Redis


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
    if value is not None:
        family.add_metric(list(labels.values()) if labels else [], value)
    return family


class StoreCollector(Collector):
    """Publisher, manifest, entry and ISP figures, read at scrape time."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def describe(self) -> Iterator[Metric]:
        # Reading Redis to describe would make registration do I/O.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        try:
            figures = list(self._figures())
        except (redis.exceptions.RedisError, BlocklistError) as e:
            log.warning("metrics: cannot read the store: %s", getattr(e, "message", e))
            yield _gauge("blocklist_store_up", "1 if Redis answered the scrape, else 0.", 0)
            return
        yield _gauge("blocklist_store_up", "1 if Redis answered the scrape, else 0.", 1)
        yield from figures
        yield from self._heartbeats()

    def _figures(self) -> Iterator[Metric]:
        core = self.core
        store = core.store
        now = core.clock()
        latest = core.publisher.latest_record()
        version = latest.version if latest else 0
        yield _gauge("blocklist_publication_version", "Latest published version (0: none yet).", version)
        yield _gauge("blocklist_publication_entries", "Entries in the latest published version.",
                     latest.count if latest else 0)
        yield _gauge("blocklist_publication_last_timestamp_seconds",
                     "When the latest version was published (Unix time).",
                     epoch(latest.published_at) if latest else None)
        pub = core.publisher.record(version) if version else None
        yield _gauge("blocklist_publication_build_seconds", "Time the publisher took to build the latest version.",
                     pub.build_seconds if pub else None)
        changes = GaugeMetricFamily("blocklist_publication_changes",
                                    "Entries added, removed and changed by the latest version.", labels=["kind"])
        for kind, n in (pub.changes if pub else {}).items():
            changes.add_metric([str(kind)], float(n))
        yield changes

        held = core.publisher.held()
        yield _gauge("blocklist_publication_held", "1 while a publication waits for an admin's release.",
                     1 if held else 0)
        held_changes = GaugeMetricFamily("blocklist_publication_held_changes",
                                         "Entries the held publication would add or remove.", labels=["kind"])
        if held:
            for kind in ("added", "removed", "changed"):
                held_changes.add_metric([kind], float(held.get(kind, 0)))
        yield held_changes
        yield _gauge("blocklist_publication_pending_changes",
                     "Changed entries not yet taken up by a publication.", store.changes.count())
        yield _gauge("blocklist_publication_deltas_since_full",
                     "Versions published as deltas since the last full snapshot (compaction resets it).",
                     pub.chain_length if pub else None)
        workers = GaugeMetricFamily("blocklist_workers",
                                    "Live workers, by whether they hold the signing key and can publish.",
                                    labels=["can_publish"])
        alive = store.health.workers_alive()
        for label, signs in (("yes", True), ("no", False)):
            workers.add_metric([label], float(sum(1 for w in alive if bool(w.get("signs")) == signs)))
        yield workers

        manifest = store.pubs.manifest()
        expires = signed = manifest_version = None
        if manifest is not None:
            body = json.loads(manifest[0])
            expires = epoch(body.get("expires_at"))
            signed = float(manifest[2])
            manifest_version = int(body.get("version", 0))
        yield _gauge("blocklist_manifest_expiry_timestamp_seconds",
                     "When the signed manifest ISPs fetch expires (Unix time).", expires)
        yield _gauge("blocklist_manifest_signed_timestamp_seconds",
                     "When the manifest was last signed (Unix time); the worker re-signs it regularly.", signed)
        yield _gauge("blocklist_manifest_version", "Version the current manifest describes.", manifest_version)

        entries = GaugeMetricFamily("blocklist_entries", "Entries by status.", labels=["status"])
        for status, n in store.entries.count_by_status([s.value for s in Status]).items():
            entries.add_metric([status], float(n))
        yield entries
        yield _gauge("blocklist_audit_records", "Records in the audit log.", store.audit.length())

        yield from self._isps(version, now)

    def _isps(self, latest: int, now: float) -> Iterator[Metric]:
        core = self.core
        isps = [i for i in core.isps.list() if i.active]
        behind_by = lags(core, isps)
        labels = ["isp"]
        count = _gauge("blocklist_isps", "ISPs with access (not revoked).", len(isps))
        last_version = GaugeMetricFamily("blocklist_isp_last_version",
                                         "Latest version the ISP fetched (feed or zone transfer).", labels=labels)
        behind = GaugeMetricFamily("blocklist_isp_versions_behind",
                                   "Published versions the ISP has not fetched yet.", labels=labels)
        behind_for = GaugeMetricFamily(
            "blocklist_isp_behind_seconds",
            "How long the ISP has lacked a published version: time since the first version it does not have "
            "was published, or since it was added if later (0 when up to date).", labels=labels)
        last_pull = GaugeMetricFamily("blocklist_isp_last_pull_timestamp_seconds",
                                      "When the ISP last fetched anything (Unix time).", labels=labels)
        since_pull = GaugeMetricFamily("blocklist_isp_seconds_since_last_pull",
                                       "Seconds since the ISP last fetched anything.", labels=labels)
        enforced = GaugeMetricFamily("blocklist_isp_enforced_version",
                                     "Version the ISP's resolvers were last seen enforcing (enforcement reports; "
                                     "0: they enforce nothing; absent for an ISP that never reported).",
                                     labels=labels)
        enforcing_behind = GaugeMetricFamily(
            "blocklist_isp_enforcing_behind_seconds",
            "How long the ISP's resolvers have lacked a published version: time since the first version they "
            "were not seen enforcing was published (0 when up to date; absent without reports).", labels=labels)
        last_report = GaugeMetricFamily("blocklist_isp_last_enforcement_report_timestamp_seconds",
                                        "When the ISP last reported what its resolvers enforce (Unix time).",
                                        labels=labels)
        enforcing = GaugeMetricFamily(
            "blocklist_isp_resolvers_enforcing",
            "1 if every resolver in the ISP's last report enforced the list, else 0; absent before the first "
            "report.", labels=labels)
        for isp in isps:
            lag = behind_by[isp.name]
            if isp.enforced_at is not None:
                enforcing.add_metric([isp.name], 0.0 if isp.enforced_version is None else 1.0)
            if isp.last_version is not None:
                last_version.add_metric([isp.name], float(isp.last_version))
            behind.add_metric([isp.name], float(max(0, latest - (isp.last_version or 0))))
            if latest == 0 or lag.fetched_behind_since is not None or (isp.last_version or 0) >= latest:
                behind_for.add_metric([isp.name], lag.behind_for(now) or 0.0)
            if isp.last_pull_at is not None:
                last_pull.add_metric([isp.name], float(isp.last_pull_at))
                since_pull.add_metric([isp.name], max(0.0, now - isp.last_pull_at))
            if lag.reported:
                enforced.add_metric([isp.name], float(lag.enforced or 0))
                enforcing_behind.add_metric([isp.name], lag.behind_for(now, "enforced") or 0.0)
            if lag.enforced_at is not None:
                last_report.add_metric([isp.name], float(lag.enforced_at))
        yield from (count, last_version, behind, behind_for, last_pull, since_pull, enforced, enforcing_behind,
                    last_report, enforcing)

    def _heartbeats(self) -> Iterator[Metric]:
        health_dir = self.core.settings.health_dir
        family = GaugeMetricFamily("blocklist_heartbeat_timestamp_seconds",
                                   "Last heartbeat of a process on this host (Unix time), from "
                                   "BLOCKLIST_HEALTH_DIR.", labels=["component"])
        if health_dir is not None:
            for name in HEARTBEATS:
                stamp = _heartbeat(Path(health_dir) / name)
                if stamp is not None:
                    family.add_metric([name], stamp)
        yield family


def _heartbeat(path: Path) -> float | None:
    """A heartbeat file holds Unix time; its modification time serves when it is empty."""
    try:
        text = path.read_text().strip()
        return float(text) if text else path.stat().st_mtime
    except (OSError, ValueError):
        return None
