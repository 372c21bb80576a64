"""Zone transfers over TLS (XoT, RFC 9103) beside plain TCP, both with TSIG, our server beside BIND.

One run, one machine, one published zone:

* the list is written as the product stores it (active entries, each
  covering its subdomains: 2 records per domain), then published by the
  real publisher;
* ``blocklist xfrd --xot`` (a separate process) serves it over TCP and over
  TLS 1.3 with its self-signed certificate; BIND 9 ``named`` loads the
  published zone file as a primary and serves it over TCP and over TLS 1.3
  (``listen-on ... tls``) with the same certificate and key;
* the same client reads a full AXFR, signed with the ISP's TSIG key, from
  each of the four (ours TCP, ours TLS, BIND TCP, BIND TLS) ``--runs``
  times, in turn, counting bytes and messages and stopping at the closing
  SOA. Over TLS the time includes the TCP and TLS handshakes.

    .venv/bin/python bench/xot.py [--count 100000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import dns.message
import dns.tsig
from axfr import axfr_query, domain_names, read_transfer, rss_mb, soa_serial, start_named, stop, wait  # bench/axfr.py
from common import load_active, programme_key  # bench/common.py (run as: python bench/xot.py)

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from app.embedded import EmbeddedRedis, free_port

XOT_NAME = "xfr.programme.test"


def start_xfrd(settings: Settings, work: Path, xot_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BLOCKLIST_REDIS_URL": str(settings.redis_url), "BLOCKLIST_DATA_DIR": str(work),
           "BLOCKLIST_ARTIFACT_DIR": str(settings.artifact_dir),
           "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{settings.dns_listen[1]}", "BLOCKLIST_XFRD_METRICS_LISTEN": "",
           "BLOCKLIST_LOG_FORMAT": "text", "BLOCKLIST_XOT_NAME": XOT_NAME, "BLOCKLIST_NOTIFY_RETRIES": "0",
           # The benchmark polls from one address far faster than any ISP should.
           "BLOCKLIST_DNS_QUERIES_PER_SECOND": "100000", "BLOCKLIST_DNS_QUERY_BURST": "100000"}
    log = (work / "xfrd.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "xfrd", "--xot", f"127.0.0.1:{xot_port}"], env=env,
                            stdout=log, stderr=log)


def bind_primary(work: Path, zone_file: Path, key: dns.tsig.Key, secret: str) -> tuple[subprocess.Popen[bytes],
                                                                                          int, int]:
    """BIND serving the same zone over TCP and over TLS 1.3 with our certificate and key."""
    d = work / "bind-primary"
    d.mkdir()
    shutil.copy(zone_file, d / "blocklist.rpz.zone")
    port, tls_port = free_port(), free_port()
    conf = d / "named.conf"
    conf.write_text(f"""
tls local-tls {{
    cert-file "{work}/xot/cert.pem";
    key-file "{work}/xot/key.pem";
    protocols {{ TLSv1.3; }};
}};
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on port {tls_port} tls local-tls {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    notify no;
    recursion no;
    transfers-out 50;
}};
controls {{ }};
key "{key.name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "blocklist.rpz" {{ type primary; file "{d}/blocklist.rpz.zone"; allow-transfer {{ key "{key.name}"; }}; }};
""")
    check = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True, check=False)
    if check.returncode:
        raise RuntimeError(check.stdout + check.stderr)
    return start_named(conf, d / "named.log"), port, tls_port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-xot-"))
    procs: list[subprocess.Popen[bytes]] = []
    servers = ["ours TCP", "ours TLS", "BIND TCP", "BIND TLS"]
    rows: dict[str, list[tuple[float, int, int]]] = {name: [] for name in servers}
    r: dict[str, object] = {"entries": args.count, "records": 2 * args.count + 3}
    try:
        with EmbeddedRedis(work / "redis", port=free_port(), fsync="everysec") as redis_server:
            settings = Settings(redis_url=redis_server.url, data_dir=work, artifact_dir=work / "artifacts",
                                signing_key_file=work / "keys" / "blocklist.key",
                                dns_listen=("127.0.0.1", free_port()))
            core = Core.from_settings(settings)
            programme_key(core)
            core.curation.set_policy(SYSTEM, {"guard_add_max": 10**9, "guard_add_pct": 10**6})
            print(f"writing {args.count:,} active entries and publishing ...", flush=True)
            load_active(core, domain_names(args.count, random.Random(7)))
            version = core.publisher.publish(reason="bench").version
            latest = core.publisher.latest()
            assert latest is not None
            isp = core.isps.add(SYSTEM, "bench")
            core.isps.add(SYSTEM, "bench-soa", allow_from=["127.0.0.1"], address_only=True)  # unsigned SOA polls
            key = dns.tsig.Key(isp["tsig_key_name"], isp["tsig_secret"], dns.tsig.HMAC_SHA256)
            print("starting blocklist xfrd --xot and BIND ...", flush=True)
            xot_port = free_port()
            xfrd = start_xfrd(settings, work, xot_port)
            procs.append(xfrd)
            wait(lambda: soa_serial(settings.dns_listen[1]) == version, 600, 0.05)
            named, bind_port, bind_tls = bind_primary(work, core.artifacts.path(latest["rpz"]["path"]), key,
                                                      isp["tsig_secret"])
            procs.append(named)
            wait(lambda: soa_serial(bind_port) == version, 600, 0.05)
            client = ssl.create_default_context(cafile=str(work / "xot" / "cert.pem"))
            client.minimum_version = ssl.TLSVersion.TLSv1_3
            client.set_alpn_protocols(["dot"])
            ports = {"ours TCP": (settings.dns_listen[1], None), "ours TLS": (xot_port, client),
                     "BIND TCP": (bind_port, None), "BIND TLS": (bind_tls, client)}
            print(f"signed AXFR x{args.runs} from each ...", flush=True)
            for _ in range(args.runs):
                for name in servers:
                    port, tls = ports[name]
                    query, key_wire = axfr_query(key)
                    assert key_wire is not None
                    rows[name].append(read_transfer(port, query, 2, key_wire, tls=tls, server_hostname=XOT_NAME))
            r["rss_mb_ours"], r["rss_mb_bind"] = round(rss_mb(xfrd.pid)), round(rss_mb(named.pid))
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"Signed AXFR of {args.count:,} domains ({2 * args.count + 3:,} records), median of {args.runs}")
    print(f"{'':12}{'time':>10}{'bytes':>14}{'messages':>10}")
    for name in servers:
        t = statistics.median(x[0] for x in rows[name])
        r[name.replace(" ", "_").lower() + "_s"] = round(t, 3)
        r[name.replace(" ", "_").lower() + "_runs_s"] = [round(x[0], 3) for x in rows[name]]
        print(f"{name:12}{t:>8.3f} s{rows[name][0][1]:>14,}{rows[name][0][2]:>10,}")
    for who in ("ours", "bind"):
        r[f"{who}_tls_over_tcp"] = round(float(str(r[f"{who}_tls_s"])) / float(str(r[f"{who}_tcp_s"])), 2)
    print(f"TLS costs ours x{r['ours_tls_over_tcp']}, BIND x{r['bind_tls_over_tcp']} the plain TCP time")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
