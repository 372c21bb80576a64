"""Import 100,000 domains through the product, beside a raw redis-py pipeline.

Both write the same records to the same kind of Redis server (the embedded
one the product ships, same configuration), one after the other in one run:

* product: ``blocklist import``'s path (parse, normalise, safety checks,
  duplicate checks, atomic chunks with audit records);
* reference: a redis-py pipeline writing the same entry JSON, value index
  and status index, with no checks at all.

Then the entries are approved (as a second vetter would, in bulk) and the
Redis memory per active entry is reported, after the publisher's change feed
is consumed (as it is after every publication).

    .venv/bin/python bench/import.py [--count 100000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from app.config import Settings
from app.core import Core
from app.curation import parse_import
from app.domain import SYSTEM, Entry, EntryType, Status
from app.embedded import EmbeddedRedis, free_port
from app.store import K, entry_key, status_key, value_key


def write_file(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(f"site{i:07d}-forum.example-bench.test\n")


def product_import(core: Core, path: Path) -> tuple[float, int]:
    alice = core.users.add(SYSTEM, "alice", "curator", "Agency A")
    t0 = time.perf_counter()
    with path.open() as f:
        report = core.curation.import_rows(alice.actor, parse_import(f), source=path.name,
                                           default_reason="national list import")
    return time.perf_counter() - t0, report.accepted


def raw_pipeline(core: Core, path: Path) -> float:
    """Write what the product writes (same JSON, same keys), without any checks."""
    r = core.store.r
    values = [line.strip() for line in path.open()]
    t0 = time.perf_counter()
    now = int(time.time())
    pipe = r.pipeline(transaction=False)
    for i, v in enumerate(values, start=1):
        e = Entry(id=i, type=EntryType.DOMAIN, value=v.lower().rstrip("."), subdomains=True,
                  category="csam", status=Status.PENDING, reason="national list import",
                  evidence_ref="", submitted_by="alice", agency="Agency A", submitted_at=now,
                  updated_at=now, history=[1])
        pipe.hset(entry_key(i), str(i), e.to_json())
        pipe.hset(value_key(e.key), e.key, str(i))
        pipe.zadd(status_key("pending"), {str(i): now})
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    args = ap.parse_args()
    n = args.count
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        path = data / "domains.txt"
        write_file(path, n)
        with EmbeddedRedis(data / "redis", port=free_port()) as server:
            core = Core.from_settings(Settings(redis_url=server.url))
            r = core.store.r
            r.flushdb()
            base = core.store.memory_used()
            raw_s = raw_pipeline(core, path)
            raw_mem = (core.store.memory_used() - base) / n
            r.flushdb()
            base = core.store.memory_used()
            prod_s, accepted = product_import(core, path)
            assert accepted == n, f"only {accepted} of {n} accepted"
            pending_mem = (core.store.memory_used() - base) / n
            bob = core.users.add(SYSTEM, "bob", "vetter", "Agency B")
            t0 = time.perf_counter()
            for start in range(1, n + 1, 5000):
                core.curation.approve_many(bob.actor, list(range(start, min(start + 5000, n + 1))))
            approve_s = time.perf_counter() - t0
            r.delete(K.dirty)  # what a publication consumes
            active_mem = (core.store.memory_used() - base) / n
            result = {
                "entries": n,
                "product_import_s": round(prod_s, 2),
                "raw_pipeline_s": round(raw_s, 2),
                "ratio": round(prod_s / raw_s, 2),
                "product_rate_per_s": round(n / prod_s),
                "raw_pipeline_bytes_per_entry": round(raw_mem),
                "bytes_per_pending_entry": round(pending_mem),
                "bulk_approve_s": round(approve_s, 2),
                "bytes_per_active_entry": round(active_mem),
                "redis": r.info("server")["redis_version"],
            }
    print(f"import of {n:,} domains")
    print(f"  product import path : {prod_s:7.2f} s  ({n / prod_s:,.0f} entries/s)")
    print(f"  raw redis pipeline  : {raw_s:7.2f} s  (same records, no checks)")
    print(f"  ratio               : {prod_s / raw_s:7.2f} x   (goal: <= 3)")
    print(f"  memory, pending     : {pending_mem:7.0f} bytes/entry (raw records alone: {raw_mem:.0f})")
    print(f"  bulk approval       : {approve_s:7.2f} s")
    print(f"  memory, active      : {active_mem:7.0f} bytes/entry (record and indexes, and the published form "
          "of about 450 bytes; goal: 1M entries with retained artifacts < 1.5 GB, see bench/publish.py)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
