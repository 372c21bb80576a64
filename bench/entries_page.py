"""The entries page of the admin with 1,000,000 entries, beside raw redis-py.

Loads a million entries into the embedded Redis the product ships (through
``store.entries.put_new``, in atomic chunks, with a realistic mix of states),
starts the web app on a real socket, signs in, and times the signed-in GET of
the entries page over HTTP:

* the first page (all states, newest first),
* a deep page (950,000 entries in),
* a state filter (pending) and a deep page of it,
* an exact search for one name.

The reference is the raw redis-py calls that fetch the same page (the ids,
the 50 records in one pipeline, the counts), with no HTTP, session, sign-in
check, rendering or anything else, measured in the same run against the
same server. The goal is under 300 ms a page.

    .venv/bin/python bench/entries_page.py [--count 1000000] [--runs 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from werkzeug.serving import make_server

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM, Entry, EntryType, Status, index_key
from app.embedded import EmbeddedRedis, free_port
from app.store import K, Txn, entry_key, status_key, value_field, value_key
from app.web import create_app

PASSWORD = "benchmark password 1234"
CHUNK = 10_000
PER_PAGE = 50
# Share of each state in the loaded list (the rest is active).
MIX = [(Status.PENDING, 0.15), (Status.EXPIRED, 0.05), (Status.DELISTED, 0.04), (Status.REJECTED, 0.01),
       (Status.SUSPENDED, 0.005)]


def name(i: int) -> str:
    return f"site{i:07d}-forum.example-bench.test"


def load(core: Core, n: int) -> float:
    """Write ``n`` entries in chunks of one state each; returns seconds."""
    t0 = time.perf_counter()
    chunks = (n + CHUNK - 1) // CHUNK
    plan: list[Status] = []
    for status, share in MIX:
        plan += [status] * round(chunks * share)
    plan += [Status.ACTIVE] * (chunks - len(plan))
    # Spread the states over the id range, as a real list's history would.
    step = 7919 if chunks % 7919 else 7907
    plan = [plan[(i * step) % chunks] for i in range(chunks)]
    now = int(time.time()) - 86400
    done = 0
    for c, status in enumerate(plan):
        size = min(CHUNK, n - done)
        if size <= 0:
            break
        first = core.store.entries.allocate_ids(size)
        items = []
        for entry_id in range(first, first + size):
            e = Entry(id=entry_id, type=EntryType.DOMAIN, value=name(entry_id), subdomains=True, category="csam",
                      status=status, reason="national list import", evidence_ref=f"case-{entry_id % 977}",
                      submitted_by="alice", agency="Agency A", submitted_at=now, updated_at=now, history=[1])
            if status is not Status.PENDING:
                e.approved_by, e.approved_agency, e.approved_at = "bruno", "Agency B", now
                e.listed_since = e.verified_at = now
            items.append((entry_id, e.key, e.to_json(), None))
        txn = Txn()
        core.store.entries.put_new(txn, items, status.value, float(now + c))
        core.store.commit(txn)
        done += size
        if c % 10 == 0:
            print(f"\r  loaded {done:,} entries", end="", flush=True)
    print(f"\r  loaded {done:,} entries in {time.perf_counter() - t0:.1f} s")
    return time.perf_counter() - t0


class Http:
    """A signed-in browser, reduced to what the benchmark needs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""

    def request(self, method: str, path: str, body: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        data = None
        if body is not None:
            data = urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        cookie = resp.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        conn.close()
        return resp.status, text, dict(resp.getheaders())

    def sign_in(self, user: str) -> None:
        _, page, _ = self.request("GET", "/login")
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert token, "no CSRF token on the sign-in page"
        status, _, _ = self.request("POST", "/login", {"csrf_token": token.group(1), "username": user,
                                                       "password": PASSWORD})
        assert status == 302, f"sign-in failed with {status}"


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    n, runs = args.count, args.runs
    deep = max(0, n - 50_000)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        with EmbeddedRedis(data / "redis", port=free_port(), fsync="everysec") as server:
            settings = Settings(redis_url=server.url, data_dir=data, artifact_dir=data / "artifacts",
                                signing_key_file=data / "keys" / "key", secret_key="bench", cookie_secure=False)
            core = Core.from_settings(settings)
            r = core.store.r
            r.flushdb()
            load_s = load(core, n)
            core.users.add(SYSTEM, "audrey", "auditor", "Oversight", PASSWORD)
            counts = core.curation.counts()
            pending = counts["pending"]
            app = create_app(core=core)
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            port = free_port()
            web = make_server("127.0.0.1", port, app, threaded=True)
            thread = threading.Thread(target=web.serve_forever, daemon=True)
            thread.start()
            try:
                browser = Http(port)
                browser.sign_in("audrey")
                target = name(n * 3 // 4 + 7)
                pages = {
                    "first page": ("/entries", name(n)),
                    "deep page": (f"/entries?offset={deep}", name(n - deep)),
                    "state filter": ("/entries?status=pending", "pending"),
                    "deep state page": (f"/entries?status=pending&offset={max(0, pending - 1000)}", "pending"),
                    "exact search": (f"/entries?q={target}", target),
                }
                for label, (path, expect) in pages.items():
                    status, body, _ = browser.request("GET", path)
                    assert status == 200, (label, status)
                    assert expect in body, f"{label}: {expect} is not on the page"
                    assert body.count('<tr>') >= (1 if label == "exact search" else PER_PAGE), label

                last = core.store.entries.last_id()

                def raw_all(offset: int) -> None:
                    top = int(r.get(K.entry_seq) or 0)
                    ids = range(top - offset, max(0, top - offset - PER_PAGE), -1)
                    pipe = r.pipeline(transaction=False)
                    for i in ids:
                        pipe.hget(entry_key(i), str(i))
                    for s in Status:
                        pipe.zcard(status_key(s.value))
                    pipe.execute()

                def raw_status(offset: int) -> None:
                    ids = r.zrevrange(status_key("pending"), offset, offset + PER_PAGE - 1)
                    pipe = r.pipeline(transaction=False)
                    pipe.zcard(status_key("pending"))
                    for i in ids:
                        pipe.hget(entry_key(int(i)), str(i))
                    pipe.execute()

                def raw_exact() -> None:
                    key = index_key(EntryType.DOMAIN, target)
                    found = r.hget(value_key(key), value_field(key))
                    assert found is not None
                    r.hget(entry_key(int(found)), str(found))

                references = {
                    "first page": lambda: raw_all(0),
                    "deep page": lambda: raw_all(deep),
                    "state filter": lambda: raw_status(0),
                    "deep state page": lambda: raw_status(max(0, pending - 1000)),
                    "exact search": raw_exact,
                }
                results = {}
                for label, (path, _) in pages.items():
                    product = timed(lambda p=path: browser.request("GET", p), runs)
                    reference = timed(references[label], runs)
                    results[label] = (product, reference)
            finally:
                web.shutdown()
                thread.join(5)
            memory = core.store.memory_used()
            redis_version = r.info("server")["redis_version"]
    print(f"entries page with {n:,} entries ({counts['active']:,} active, {counts['pending']:,} pending; "
          f"last id {last:,}); Redis {redis_version}, {memory / 2**20:.0f} MB; {runs} runs each")
    print(f"  {'page':<16} {'product median':>15} {'p95':>8} {'max':>8}   {'raw redis median':>16} {'p95':>7}"
          f"   goal")
    summary = {}
    for label, (product, reference) in results.items():
        pm, p95 = statistics.median(product), sorted(product)[int(len(product) * 0.95) - 1]
        rm, r95 = statistics.median(reference), sorted(reference)[int(len(reference) * 0.95) - 1]
        verdict = "ok" if p95 < 300 else "SLOW"
        print(f"  {label:<16} {pm:>12.1f} ms {p95:>5.1f} ms {max(product):>5.1f} ms   {rm:>13.2f} ms {r95:>4.2f} ms"
              f"   < 300 ms: {verdict}")
        summary[label] = {"product_median_ms": round(pm, 1), "product_p95_ms": round(p95, 1),
                          "product_max_ms": round(max(product), 1), "raw_redis_median_ms": round(rm, 2)}
    print(json.dumps({"entries": n, "load_s": round(load_s, 1), "pages": summary}))


if __name__ == "__main__":
    main()
