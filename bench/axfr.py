"""Zone transfers of a 1,000,000-domain published version: our server beside BIND.

One run, one machine, the same published zone file for both servers:

* the list is written as the product stores it (active entries, approved
  by a second agency, every one covering its subdomains: 2,000,003
  records), then published by the real publisher;
* ``blocklist xfrd`` (a separate process) loads it from Redis and the
  artifact store; BIND 9 ``named`` loads the published zone file as a
  primary; both are timed from process start to answering the new serial;
* the same raw TCP client reads a full AXFR from each, five times (without
  TSIG, and with TSIG: our server signs every 100th message, BIND every
  message), counting bytes and messages and stopping at the closing SOA;
* 100 entries are added and published: the time until our server serves
  the new version, and the IXFR of that change read by the raw client;
* a BIND secondary configured from deploy/isp/ (TSIG, NOTIFY, IXFR,
  ``min-update-interval 0``) loads the zone from our server; one more entry
  is published and the time until that secondary answers NXDOMAIN for it
  is measured.

    .venv/bin/python bench/axfr.py [--count 1000000] [--runs 5]

Reference figures on this kind of machine (PEERS.md): BIND 2.65 s per AXFR
and 7.95 s to load; NSD 0.21 s and 2.6 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
from common import load_active, programme_key  # bench/common.py (run as: python bench/axfr.py)

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM, Actor, Role
from app.embedded import EmbeddedRedis, free_port

ZONE = "blocklist.rpz."
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "isp"
ALICE = Actor("alice", Role.CURATOR, "Agency A")
BRUNO = Actor("bruno", Role.VETTER, "Agency B")
TLDS = ["com"] * 8 + ["net"] * 3 + ["org"] * 2 + ["ru", "info", "xyz", "top", "cc", "biz", "to", "me", "io", "su"]
SYLLABLES = ["ka", "ri", "mo", "ne", "to", "la", "vi", "xo", "pa", "zu", "be", "do", "fi", "gu", "ho", "ja",
             "pic", "vid", "img", "cam", "hub", "box", "kid", "teen", "free", "hot", "top", "new"]


def domain_names(n: int, rng: random.Random) -> list[str]:
    """n distinct, varied domain names (2 to 5 syllables, a number now and then, 17 TLDs)."""
    out: set[str] = set()
    while len(out) < n:
        label = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 5)))
        if rng.random() < 0.5:
            label += str(rng.randrange(1000))
        if rng.random() < 0.15:
            label += "-" + rng.choice(SYLLABLES) + rng.choice(SYLLABLES)
        out.add(f"{label}.{rng.choice(TLDS)}")
    return sorted(out)


def add_entries(core: Core, values: list[str]) -> None:
    """New entries through the curation rules: submitted by one agency, approved by another."""
    ids = [core.curation.submit(ALICE, v, "domain", True, None, "bench").id for v in values]
    core.curation.approve_many(BRUNO, ids)


# --------------------------------------------------------------------------- raw client


def soa_tail(first: bytes) -> bytes:
    """The last 20 bytes (serial and timers) of the first answer record, an SOA."""
    pos = 12
    while first[pos] != 0:  # the question name
        if first[pos] & 0xC0:
            pos += 1
            break
        pos += first[pos] + 1
    pos += 1 + 4
    while first[pos] != 0:  # the first answer's owner name
        if first[pos] & 0xC0:
            pos += 1
            break
        pos += first[pos] + 1
    pos += 1
    rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", first[pos:pos + 10])
    assert rtype == 6, "the first answer record is not the SOA"
    end = pos + 10 + rdlen
    return first[end - 20:end]


def read_transfer(port: int, query: bytes, soas: int, key_wire: bytes | None = None, *,
                  tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> tuple[float, int, int]:
    """Send one AXFR/IXFR over TCP (or TLS, with ``tls``) and read the answer
    until the ``soas``-th copy of the new SOA. Returns (seconds, bytes,
    messages). The client parses only message lengths and the SOA, so it
    costs the same for any server."""
    t0 = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=120)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    with tls.wrap_socket(raw, server_hostname=server_hostname) if tls is not None else raw as s:
        s.sendall(struct.pack("!H", len(query)) + query)
        buf = bytearray()
        view_start = 0
        total = messages = seen = 0
        tail = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the server closed the connection mid-transfer")
            buf += chunk
            total += len(chunk)
            while len(buf) - view_start >= 2:
                n = struct.unpack_from("!H", buf, view_start)[0]
                if len(buf) - view_start - 2 < n:
                    break
                msg = bytes(buf[view_start + 2 : view_start + 2 + n])
                view_start += 2 + n
                messages += 1
                if msg[3] & 0x0F:
                    raise RuntimeError(f"the server answered rcode {msg[3] & 0x0F}")
                if struct.unpack_from("!H", msg, 10)[0] and key_wire is not None:
                    cut = msg.rfind(key_wire + b"\x00\xfa\x00\xff")
                    msg = msg[:cut]
                if not tail:
                    tail = soa_tail(msg)
                seen += msg.count(tail)
                if seen >= soas:
                    return time.perf_counter() - t0, total, messages
            if view_start > 1 << 22:
                del buf[:view_start]
                view_start = 0


def axfr_query(key: dns.tsig.Key | None) -> tuple[bytes, bytes | None]:
    q = dns.message.make_query(ZONE, "AXFR", use_edns=False)
    if key is not None:
        q.use_tsig(key)
    return q.to_wire(), (key.name.to_wire() if key else None)


def ixfr_query(serial: int, key: dns.tsig.Key | None) -> tuple[bytes, bytes | None]:
    q = dns.message.make_query(ZONE, "IXFR", use_edns=False)
    q.authority.append(dns.rrset.from_text(ZONE, 0, "IN", "SOA", f". . {serial} 0 0 0 0"))
    if key is not None:
        q.use_tsig(key)
    return q.to_wire(), (key.name.to_wire() if key else None)


def soa_serial(port: int) -> int | None:
    try:
        r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=0.5)
    except (dns.exception.Timeout, OSError):
        return None
    return int(r.answer[0][0].serial) if r.rcode() == dns.rcode.NOERROR and r.answer else None


def wait(predicate, timeout: float, step: float = 0.005):  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError("the benchmark waited too long")


class CommitClock:
    """The moment a publication is committed (its pub/sub message), which is
    when the version becomes visible; publish() returns a little later, after
    writing the manifest file."""

    def __init__(self, core: Core) -> None:
        self.pubsub = core.store.pubs.subscribe()
        while self.pubsub.get_message(timeout=0.2) is not None:
            pass
        self.at = 0.0
        self.wall = 0.0
        self.thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        while not self.at:
            m = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if m is not None:
                self.at = time.perf_counter()
                self.wall = time.time()

    def __enter__(self) -> CommitClock:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(10)
        self.pubsub.close()


def secondary_timeline(log: str, serial: int, since: float) -> dict[str, float]:
    """When the secondary got the NOTIFY for ``serial``, finished the transfer
    and finished applying it to its response policy (seconds after ``since``,
    a wall-clock time; BIND logs milliseconds)."""
    marks = {"notify": rf"notify from [^ ]+: serial {serial}$",
             "transfer_done": rf"Transfer completed: .*serial {serial}\)",
             "policy_applied": r"rpz: .*reload done"}
    out: dict[str, float] = {}
    for line in log.splitlines():
        try:
            at = datetime.datetime.strptime(line[:24], "%d-%b-%Y %H:%M:%S.%f").timestamp()
        except ValueError:
            continue
        if at < since - 0.5:
            continue
        for name, pattern in marks.items():
            if name not in out and re.search(pattern, line):
                out[name] = round(at - since, 3)
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --------------------------------------------------------------------------- servers


def start_xfrd(settings: Settings, work: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BLOCKLIST_REDIS_URL": str(settings.redis_url), "BLOCKLIST_DATA_DIR": str(work),
           "BLOCKLIST_ARTIFACT_DIR": str(settings.artifact_dir),
           "BLOCKLIST_DNS_LISTEN": f"127.0.0.1:{settings.dns_listen[1]}",
           "BLOCKLIST_XFRD_METRICS_LISTEN": f"127.0.0.1:{metrics_port}", "BLOCKLIST_LOG_FORMAT": "text",
           "BLOCKLIST_NOTIFY_TIMEOUT": "0.5",
           # The benchmark polls from one address far faster than any ISP should.
           "BLOCKLIST_DNS_QUERIES_PER_SECOND": "100000", "BLOCKLIST_DNS_QUERY_BURST": "100000"}
    log = (work / "xfrd.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "xfrd"], env=env, stdout=log, stderr=log)


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} ([0-9.e+-]+)$", body, re.M)
    return float(m.group(1)) if m else float("nan")


def start_named(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([shutil.which("named") or "/usr/sbin/named", "-g", "-u", "root", "-c", str(conf)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def named_options(d: Path, port: int, extra: str = "") -> str:
    return f"""options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    notify no;
{extra}
}};
controls {{ }};
"""


def bind_primary(work: Path, zone_file: Path, key: dns.tsig.Key, secret: str) -> tuple[subprocess.Popen[bytes], int]:
    d = work / "bind-primary"
    d.mkdir()
    shutil.copy(zone_file, d / "blocklist.rpz.zone")
    port = free_port()
    conf = d / "named.conf"
    conf.write_text(named_options(d, port, "    recursion no;\n    allow-transfer { any; };\n"
                                           "    transfers-out 50;") + f"""
key "{key.name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "blocklist.rpz" {{ type primary; file "{d}/blocklist.rpz.zone"; }};
""")
    return start_named(conf, d / "named.log"), port


def render(template: Path, **values: object) -> str:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    assert not left, f"{template}: unfilled placeholders {left}"
    return text


def bind_secondary(work: Path, port: int, primary_port: int, isp: dict[str, str]) -> subprocess.Popen[bytes]:
    d = work / "bind-secondary"
    d.mkdir()
    zone_conf = render(DEPLOY / "bind" / "blocklist-rpz.conf", ZONE="blocklist.rpz", PRIMARY_ADDR="127.0.0.1",
                       PRIMARY_PORT=primary_port, TSIG_NAME=isp["tsig_key_name"], TSIG_SECRET=isp["tsig_secret"],
                       ZONE_FILE=d / "blocklist.rpz.db", OVERLAY_ZONE="overlay.blocklist.rpz",
                       OVERLAY_ZONE_FILE=d / "overlay.blocklist.rpz.db")
    policy = render(DEPLOY / "bind" / "response-policy.conf", ZONE="blocklist.rpz",
                    OVERLAY_ZONE="overlay.blocklist.rpz", POLICY="given")
    conf = d / "named.conf"
    # Offline, recursion goes to a closed port. servfail-ttl 0: without it the
    # SERVFAIL of a poll made before the name was listed is cached for a
    # second and hides the policy answer.
    conf.write_text(named_options(d, port, "    recursion yes;\n    allow-query { 127.0.0.1; };\n"
                                           "    forwarders { 127.0.0.1 port 9; };\n    forward only;\n"
                                           "    servfail-ttl 0;\n"
                                           "    dnssec-validation no;\n" + policy) + zone_conf)
    return start_named(conf, d / "named.log")


def blocked(port: int, name: str) -> bool:
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.2)
    except (dns.exception.Timeout, OSError):
        return False
    return r.rcode() == dns.rcode.NXDOMAIN and any(rr.rdtype == dns.rdatatype.SOA for rr in r.additional)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(11)
    work = Path(tempfile.mkdtemp(prefix="bench-axfr-"))
    procs: list[subprocess.Popen[bytes]] = []
    r: dict[str, object] = {"entries": args.count}
    try:
        with EmbeddedRedis(work / "redis", port=free_port(), fsync="everysec") as redis_server:
            # One zone that follows every version (overlay off): this benchmark
            # measures transfers of the whole list; bench/resolver_latency.py
            # compares with the overlay.
            settings = Settings(redis_url=redis_server.url, data_dir=work, artifact_dir=work / "artifacts",
                                signing_key_file=work / "keys" / "blocklist.key",
                                dns_listen=("127.0.0.1", free_port()), rpz_fold_grace=0)
            core = Core.from_settings(settings)
            programme_key(core)
            core.curation.set_policy(SYSTEM, {"guard_add_max": 10**9, "guard_add_pct": 10**6,
                                              "guard_remove_pct": 100})
            values = domain_names(args.count + 200, rng)
            fresh, values = values[: 200], values[200:]
            print(f"writing {args.count:,} active entries ...", flush=True)
            r["write_entries_s"] = round(load_active(core, values), 1)
            t0 = time.perf_counter()
            v1 = core.publisher.publish(reason="bench").version
            r["publish_s"] = round(time.perf_counter() - t0, 1)
            latest = core.publisher.latest()
            assert latest is not None
            assert v1 is not None
            zone_file = core.artifacts.path(latest["rpz"]["path"])
            secondary_port = free_port()
            isp = core.isps.add(SYSTEM, "bench", notify=[f"127.0.0.1:{secondary_port}"], allow_from=["127.0.0.1"])
            # The unsigned runs (and SOA polls) come from an address-only registration of this host.
            core.isps.add(SYSTEM, "bench-unsigned", allow_from=["127.0.0.1"], address_only=True)
            key = dns.tsig.Key(isp["tsig_key_name"], isp["tsig_secret"], dns.tsig.HMAC_SHA256)

            # Load: process start to answering the published serial.
            print("starting blocklist xfrd and BIND (primary) ...", flush=True)
            metrics_port = free_port()
            t0 = time.perf_counter()
            xfrd = start_xfrd(settings, work, metrics_port)
            procs.append(xfrd)
            wait(lambda: soa_serial(settings.dns_listen[1]) == v1, 300)
            ours_load = time.perf_counter() - t0
            ours_build = metric(metrics_port, "blocklist_xfr_load_seconds")
            t0 = time.perf_counter()
            named_primary, bind_port = bind_primary(work, zone_file, key, isp["tsig_secret"])
            procs.append(named_primary)
            wait(lambda: soa_serial(bind_port) == v1, 300)
            bind_load = time.perf_counter() - t0

            # Full AXFR, same client, alternating servers.
            results: dict[str, list[tuple[float, int, int]]] = {"ours": [], "bind": [], "ours_tsig": [],
                                                                 "bind_tsig": []}
            plain, _ = axfr_query(None)
            print(f"AXFR x{args.runs} from each ...", flush=True)
            for _ in range(args.runs):
                results["ours"].append(read_transfer(settings.dns_listen[1], plain, 2))
                results["bind"].append(read_transfer(bind_port, plain, 2))
                signed, key_wire = axfr_query(key)
                results["ours_tsig"].append(read_transfer(settings.dns_listen[1], signed, 2, key_wire))
                signed, key_wire = axfr_query(key)
                results["bind_tsig"].append(read_transfer(bind_port, signed, 2, key_wire))
            mem_ours, mem_bind = rss_mb(xfrd.pid), rss_mb(named_primary.pid)
            stop(named_primary)

            # A 100-entry change: time to serve it, and its IXFR.
            add_entries(core, fresh[:100])
            t0 = time.perf_counter()
            with CommitClock(core) as commit:
                v2 = core.publisher.publish(reason="bench: 100 new entries").version
            published = time.perf_counter()
            wait(lambda: soa_serial(settings.dns_listen[1]) == v2, 60, 0.001)
            incremental_serve = time.perf_counter() - commit.at
            incremental_build = metric(metrics_port, "blocklist_xfr_load_seconds")
            r["publish_100_s"] = round(published - t0, 2)
            ixfr = []
            for _ in range(args.runs):
                wire, key_wire = ixfr_query(v1, key)
                ixfr.append(read_transfer(settings.dns_listen[1], wire, 3, key_wire))

            # Publication to blocking at a BIND secondary configured from the ISP guide.
            print("BIND secondary: first full transfer from our server ...", flush=True)
            t0 = time.perf_counter()
            secondary = bind_secondary(work, secondary_port, settings.dns_listen[1], isp)
            procs.append(secondary)
            try:
                wait(lambda: blocked(secondary_port, "www." + fresh[0]), 60, 0.05)
            except TimeoutError:
                print((work / "bind-secondary" / "named.log").read_text()[-3000:], file=sys.stderr)
                raise
            secondary_initial = time.perf_counter() - t0
            target = fresh[150]
            add_entries(core, [target])
            t0 = time.perf_counter()
            with CommitClock(core) as commit:
                core.publisher.publish(reason="bench: one more")
            published = time.perf_counter()
            wait(lambda: blocked(secondary_port, target), 60, 0.005)
            to_block = time.perf_counter() - commit.at
            r["publish_1_s"] = round(published - t0, 2)
            secondary_log = (work / "bind-secondary" / "named.log").read_text()
            transfers = re.findall(r"Transfer completed: (\d+) messages, (\d+) records", secondary_log)
            latest_now = core.publisher.latest()
            timeline = secondary_timeline(secondary_log, int(latest_now["version"]) if latest_now else 0,
                                          commit.wall)
            stop(secondary)
            stop(xfrd)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)

    def med(rows: list[tuple[float, int, int]]) -> float:
        return statistics.median(x[0] for x in rows)

    ours, bind = med(results["ours"]), med(results["bind"])
    r.update({
        "records": args.count * 2 + 3,
        "axfr_ours_s": round(ours, 3), "axfr_bind_s": round(bind, 3), "axfr_ratio": round(ours / bind, 3),
        "axfr_ours_runs_s": [round(x[0], 3) for x in results["ours"]],
        "axfr_bind_runs_s": [round(x[0], 3) for x in results["bind"]],
        "axfr_tsig_ours_s": round(med(results["ours_tsig"]), 3),
        "axfr_tsig_bind_s": round(med(results["bind_tsig"]), 3),
        "axfr_bytes_ours": results["ours"][0][1], "axfr_bytes_bind": results["bind"][0][1],
        "axfr_messages_ours": results["ours"][0][2], "axfr_messages_bind": results["bind"][0][2],
        "load_ours_s": round(ours_load, 2), "load_ours_build_s": round(ours_build, 2),
        "load_bind_s": round(bind_load, 2),
        "new_version_100_serving_s": round(incremental_serve, 3),
        "new_version_100_build_s": round(incremental_build, 4),
        "ixfr_100_s": round(med(ixfr), 4), "ixfr_100_bytes": ixfr[0][1],
        "secondary_initial_load_s": round(secondary_initial, 1),
        "publication_to_nxdomain_s": round(to_block, 3),
        "secondary_last_transfer": {"messages": int(transfers[-1][0]), "records": int(transfers[-1][1])}
        if transfers else None,
        "secondary_timeline_s": timeline,
        "rss_mb_ours": round(mem_ours), "rss_mb_bind": round(mem_bind),
    })
    print()
    print(f"RPZ transfer of {args.count:,} domains ({args.count * 2 + 3:,} records), median of {args.runs}")
    print(f"{'':34}{'ours':>12}{'BIND 9.18':>12}")
    print(f"{'AXFR, raw TCP client':34}{ours:>10.3f} s{bind:>10.3f} s   ratio {ours / bind:.2f} (goal <= 1.0)")
    print(f"{'AXFR with TSIG':34}{med(results['ours_tsig']):>10.3f} s{med(results['bind_tsig']):>10.3f} s")
    print(f"{'AXFR size':34}{results['ours'][0][1] / 1e6:>9.1f} MB{results['bind'][0][1] / 1e6:>9.1f} MB")
    print(f"{'AXFR messages':34}{results['ours'][0][2]:>12,}{results['bind'][0][2]:>12,}")
    print(f"{'start to serving the version':34}{ours_load:>10.2f} s{bind_load:>10.2f} s   (zone build: "
          f"{ours_build:.2f} s)")
    print(f"{'memory (RSS) after the AXFRs':34}{mem_ours:>9.0f} MB{mem_bind:>9.0f} MB")
    print(f"{'new version (+100) servable':34}{incremental_serve * 1000:>9.1f} ms   after its commit "
          f"(build {incremental_build * 1000:.1f} ms; publish took {r['publish_100_s']} s)")
    print(f"{'IXFR of the 100-entry change':34}{med(ixfr) * 1000:>9.2f} ms   {ixfr[0][1]:,} bytes (goal < 20 ms)")
    print(f"{'BIND secondary, first AXFR+load':34}{secondary_initial:>10.1f} s")
    print(f"{'publication to NXDOMAIN at BIND':34}{to_block:>10.3f} s   from the commit (goal < 2 s; last "
          f"transfer {transfers[-1][1] if transfers else '?'} records; publish took {r['publish_1_s']} s)")
    print(f"{'  at the secondary (after commit)':34}" + ", ".join(f"{k} {v:.3f} s" for k, v in timeline.items()))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
