"""Publication to effect at a BIND resolver, 1,000,000 domains: overlay beside one zone.

One run, one machine, one list:

* the list is written as the product stores it and published; ``blocklist
  xfrd`` (a separate process) serves it;
* **one zone** (the overlay off, ``BLOCKLIST_RPZ_FOLD_GRACE=0``): a BIND
  secondary lists only the base zone, which carries every version; an
  approval is published and the time from its commit to NXDOMAIN at BIND
  is measured, then its delisting to the name being answered again;
* **overlay** (the defaults): a BIND secondary configured from deploy/isp/
  lists the overlay first and the base after it; the same measurements;
* **the worker** (default settings, nobody asks to publish): the same
  BIND, the time from a curator's approval, and from a delisting, to the
  answer changing;
* ZONEMD: the base zone's digest at this size (once per base version),
  and an overlay version of 1,000 names built with and without its digest.

    .venv/bin/python bench/resolver_latency.py [--count 1000000] [--rounds 3]

BIND applies any change to a policy zone by walking the whole zone (4-5.6 s
at a million names); a small zone listed first is applied in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from axfr import (  # bench/axfr.py (run as: python bench/resolver_latency.py)
    ALICE,
    BRUNO,
    DEPLOY,
    CommitClock,
    domain_names,
    named_options,
    render,
    start_named,
    start_xfrd,
    stop,
    wait,
)
from common import load_active, programme_key

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from app.embedded import EmbeddedRedis, free_port
from app.rpz import soa_params
from app.xfr import RecordZone, ZoneInfo, base_digest, build_snapshot, overlay_recs, zone_file_names, zonemd_digest

RESOLVER = """    recursion yes;
    allow-query {{ 127.0.0.1; }};
    forwarders {{ 127.0.0.1 port 9; }};
    forward only;
    servfail-ttl 0;
    dnssec-validation no;
{policy}"""


def single_zone_secondary(work: Path, port: int, primary: int, isp: dict[str, str]) -> subprocess.Popen[bytes]:
    """BIND listing only the base zone, as ISPs did before the overlay."""
    d = work / "bind-single"
    d.mkdir()
    policy = ('response-policy { zone "blocklist.rpz" policy given; } break-dnssec yes qname-wait-recurse no '
              "min-update-interval 0;\n")
    conf = d / "named.conf"
    conf.write_text(named_options(d, port, RESOLVER.format(policy=policy)) + f"""
key "{isp['tsig_key_name']}" {{ algorithm hmac-sha256; secret "{isp['tsig_secret']}"; }};
zone "blocklist.rpz" {{
    type secondary;
    primaries port {primary} {{ 127.0.0.1 key "{isp['tsig_key_name']}"; }};
    file "{d}/blocklist.rpz.db";
    allow-notify {{ 127.0.0.1; }};
    request-ixfr yes;
}};
""")
    return start_named(conf, d / "named.log")


def overlay_secondary(work: Path, port: int, primary: int, isp: dict[str, str]) -> subprocess.Popen[bytes]:
    """BIND configured from deploy/isp/bind: the overlay first, the base after it."""
    d = work / "bind-overlay"
    d.mkdir()
    zones = render(DEPLOY / "bind" / "blocklist-rpz.conf", ZONE="blocklist.rpz", OVERLAY_ZONE="overlay.blocklist.rpz",
                   PRIMARY_ADDR="127.0.0.1", PRIMARY_PORT=primary, TSIG_NAME=isp["tsig_key_name"],
                   TSIG_SECRET=isp["tsig_secret"], ZONE_FILE=d / "blocklist.rpz.db",
                   OVERLAY_ZONE_FILE=d / "overlay.blocklist.rpz.db")
    policy = render(DEPLOY / "bind" / "response-policy.conf", ZONE="blocklist.rpz",
                    OVERLAY_ZONE="overlay.blocklist.rpz", POLICY="given")
    conf = d / "named.conf"
    conf.write_text(named_options(d, port, RESOLVER.format(policy=policy)) + zones)
    return start_named(conf, d / "named.log")


def soa_serial(port: int) -> int | None:
    """The base zone's serial at our server (unsigned UDP is truncated: TCP fallback)."""
    try:
        r, _ = dns.query.udp_with_fallback(dns.message.make_query("blocklist.rpz.", "SOA"), "127.0.0.1",
                                           port=port, timeout=0.5)
    except (dns.exception.Timeout, OSError, EOFError):
        return None
    return int(r.answer[0][0].serial) if r.rcode() == dns.rcode.NOERROR and r.answer else None


def ask(port: int, name: str) -> dns.message.Message | None:
    try:
        return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.2)
    except (dns.exception.Timeout, OSError):
        return None


def is_blocked(r: dns.message.Message | None) -> bool:
    return r is not None and r.rcode() == dns.rcode.NXDOMAIN and any(
        rr.rdtype == dns.rdatatype.SOA for rr in r.additional)


def measure(core: Core, port: int, names: list[str]) -> dict[str, list[float]]:
    """For each name: approve and publish, time to NXDOMAIN; delist and
    publish, time to an answer that is not the policy's."""
    out: dict[str, list[float]] = {"block_s": [], "unblock_s": []}
    for name in names:
        e = core.curation.submit(ALICE, name, "domain", True, None, "bench")
        core.curation.approve_many(BRUNO, [e.id])
        with CommitClock(core) as commit:
            core.publisher.publish(reason="bench: approval")
        wait(lambda n=name: is_blocked(ask(port, n)), 120, 0.002)
        out["block_s"].append(round(time.perf_counter() - commit.at, 3))
        core.curation.act(BRUNO, e.id, "delist", "bench")
        with CommitClock(core) as commit:
            core.publisher.publish(reason="bench: delisting")
        wait(lambda n=name: (r := ask(port, n)) is not None and not is_blocked(r), 120, 0.002)
        out["unblock_s"].append(round(time.perf_counter() - commit.at, 3))
    return out


def measure_decisions(core: Core, port: int, names: list[str]) -> dict[str, list[float]]:
    """As :func:`measure`, but nobody publishes: the running worker (default
    settings) does, so each time runs from the curator's decision."""
    out: dict[str, list[float]] = {"block_s": [], "unblock_s": []}
    for name in names:
        e = core.curation.submit(ALICE, name, "domain", True, None, "bench")
        core.curation.approve_many(BRUNO, [e.id])
        t0 = time.perf_counter()
        wait(lambda n=name: is_blocked(ask(port, n)), 120, 0.002)
        out["block_s"].append(round(time.perf_counter() - t0, 3))
        core.curation.act(BRUNO, e.id, "delist", "bench")
        t0 = time.perf_counter()
        wait(lambda n=name: (r := ask(port, n)) is not None and not is_blocked(r), 120, 0.002)
        out["unblock_s"].append(round(time.perf_counter() - t0, 3))
    return out


def zonemd_costs(settings: Settings, zone_file: Path) -> dict[str, float]:
    info = ZoneInfo.from_params(soa_params(settings))
    overlay_info = ZoneInfo.from_params(soa_params(settings, overlay=True))
    _serial, names = zone_file_names(zone_file.read_text())
    snap = build_snapshot(info, 1, names)
    t0 = time.perf_counter()
    base_digest(info, snap)
    base_s = time.perf_counter() - t0
    blocked = names[: 1000]
    timings_with, timings_digest = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        z = RecordZone(overlay_info, 7, overlay_recs(overlay_info, 7, blocked, []))
        timings_with.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        zonemd_digest(overlay_info, 7, [overlay_info.ns_rec(), *overlay_recs(overlay_info, 7, blocked, [])])
        timings_digest.append(time.perf_counter() - t0)
    assert z.records > 1000
    with_ms = statistics.median(timings_with) * 1000
    digest_ms = statistics.median(timings_digest) * 1000
    return {"base_zonemd_s": round(base_s, 2), "base_records": snap.records,
            "overlay_1000_with_zonemd_ms": round(with_ms, 2),
            "overlay_1000_without_zonemd_ms": round(with_ms - digest_ms, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import random

    rng = random.Random(29)
    work = Path(tempfile.mkdtemp(prefix="bench-resolver-"))
    procs: list[subprocess.Popen[bytes]] = []
    r: dict[str, object] = {"entries": args.count, "rounds": args.rounds}
    try:
        with EmbeddedRedis(work / "redis", port=free_port(), fsync="everysec") as redis_server:
            overlay_settings = Settings(redis_url=redis_server.url, data_dir=work, artifact_dir=work / "artifacts",
                                        signing_key_file=work / "keys" / "blocklist.key",
                                        dns_listen=("127.0.0.1", free_port()))
            single_settings = replace(overlay_settings, rpz_fold_grace=0)
            core = Core.from_settings(single_settings)
            programme_key(core)
            core.curation.set_policy(SYSTEM, {"guard_add_max": 10**9, "guard_add_pct": 10**6,
                                              "guard_remove_pct": 100})
            values = domain_names(args.count + 6 * args.rounds, rng)
            fresh, values = values[: 6 * args.rounds], values[6 * args.rounds:]
            print(f"writing {args.count:,} active entries ...", flush=True)
            load_active(core, values)
            v1 = core.publisher.publish(reason="bench").version
            latest = core.publisher.latest()
            assert latest is not None
            print("ZONEMD costs ...", flush=True)
            r.update(zonemd_costs(single_settings, core.artifacts.path(latest["rpz"]["path"])))
            single_port, overlay_port = free_port(), free_port()
            isp = core.isps.add(SYSTEM, "bench", notify=[f"127.0.0.1:{single_port}", f"127.0.0.1:{overlay_port}"])
            xfrd = start_xfrd(single_settings, work, free_port())
            procs.append(xfrd)
            wait(lambda: soa_serial(single_settings.dns_listen[1]) == v1, 300, 0.1)

            print("one zone: BIND loads the base zone ...", flush=True)
            bind = single_zone_secondary(work, single_port, single_settings.dns_listen[1], isp)
            procs.append(bind)
            wait(lambda: is_blocked(ask(single_port, values[0])), 300, 0.05)
            print("one zone: approvals and delistings ...", flush=True)
            single = measure(core, single_port, fresh[: args.rounds])
            stop(bind)

            print("overlay: BIND loads both zones ...", flush=True)
            core.publisher.settings = overlay_settings
            bind = overlay_secondary(work, overlay_port, overlay_settings.dns_listen[1], isp)
            procs.append(bind)
            wait(lambda: is_blocked(ask(overlay_port, values[0])), 300, 0.05)
            print("overlay: approvals and delistings ...", flush=True)
            overlay = measure(core, overlay_port, fresh[args.rounds: 2 * args.rounds])
            print("overlay, the worker publishing with its default settings: approvals and delistings ...",
                  flush=True)
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"], stdout=(work / "worker.log").open("wb"),
                stderr=subprocess.STDOUT,
                env={**os.environ, "BLOCKLIST_REDIS_URL": overlay_settings.redis_url or "",
                     "BLOCKLIST_DATA_DIR": str(work), "BLOCKLIST_ARTIFACT_DIR": str(work / "artifacts"),
                     "BLOCKLIST_SIGNING_KEY_FILE": str(overlay_settings.signing_key_file)})
            procs.append(worker)
            wait(lambda: bool(core.store.health.workers_alive()), 120, 0.1)
            time.sleep(2)  # its start-up steps are done
            decisions = measure_decisions(core, overlay_port, fresh[2 * args.rounds: 3 * args.rounds])
            stop(worker)
            log = (work / "bind-overlay" / "named.log").read_text()
            stop(bind)
            stop(xfrd)
            xfrd_log = (work / "xfrd.log").read_text()
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    r.update({
        "one_zone_publication_to_nxdomain_s": single["block_s"],
        "one_zone_delisting_to_answer_s": single["unblock_s"],
        "overlay_publication_to_nxdomain_s": overlay["block_s"],
        "overlay_delisting_to_answer_s": overlay["unblock_s"],
        "one_zone_median_s": statistics.median(single["block_s"] + single["unblock_s"]),
        "overlay_median_s": statistics.median(overlay["block_s"] + overlay["unblock_s"]),
        "worker_approval_to_nxdomain_s": decisions["block_s"],
        "worker_delisting_to_answer_s": decisions["unblock_s"],
        "overlay_reloads_of_base_during_overlay_rounds": log.count("rpz: blocklist.rpz: reload done"),
        "xfrd_serving_lines": [line[-160:] for line in xfrd_log.splitlines() if "serving version" in line][-4:],
    })
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
