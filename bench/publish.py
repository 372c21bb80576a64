"""Publish 1,000,000 active domains from scratch, then again after 1,000 changes.

Beside it, in the same run, the reference: the same 1M values, shuffled, in
a file that stock tools sort (``LC_ALL=C sort``), hash (``sha256sum``) and
sign (``minisign -S``). The product does more than the reference: it writes
and signs a snapshot (~175 MB of JSON), an RPZ zone file (2M records) and a
manifest, and verifies every signature before it commits the version.

    .venv/bin/python bench/publish.py [--count 1000000] [--changes 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import load_active  # bench/common.py (run as: python bench/publish.py)

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM, Actor, Role
from app.embedded import EmbeddedRedis, free_port
from app.keys import Keyring
from app.publishing import Publisher
from app.signing import ensure_key


def reference(values: list[str], work: Path) -> float:
    src = work / "values.txt"
    src.write_text("\n".join(values) + "\n")
    subprocess.run(["minisign", "-G", "-W", "-p", str(work / "ref.pub"), "-s", str(work / "ref.key"), "-f"],
                   check=True, capture_output=True)
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    t0 = time.perf_counter()
    subprocess.run(["sort", "-o", str(work / "sorted.txt"), str(src)], check=True, env=env)
    subprocess.run(["sha256sum", str(work / "sorted.txt")], check=True, capture_output=True)
    subprocess.run(["minisign", "-S", "-s", str(work / "ref.key"), "-m", str(work / "sorted.txt")], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def changes(core: Core, n: int, rng: random.Random, active: list[int]) -> float:
    """n/2 delistings (of entries still active) and n/2 new entries, through the
    curation rules (submit, approve)."""
    alice = Actor("alice", Role.CURATOR, "Agency A")
    bruno = Actor("bruno", Role.VETTER, "Agency B")
    t0 = time.perf_counter()
    for _ in range(n // 2):
        entry_id = active.pop(rng.randrange(len(active)))
        core.curation.act(bruno, entry_id, "delist", "site gone")
    new_ids = [core.curation.submit(alice, f"fresh{i}-{rng.randrange(10**9)}.example-bench.test").id
               for i in range(n - n // 2)]
    core.curation.approve_many(bruno, new_ids)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=1000)
    args = ap.parse_args()
    rng = random.Random(7)
    values = [f"{rng.choice(['kid', 'pic', 'vid', 'img', 'cp', 'xx'])}{i:07d}-{rng.randrange(36**4):x}"
              f".example-bench.test" for i in range(args.count)]
    rng.shuffle(values)
    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    try:
        with EmbeddedRedis(work / "redis", port=free_port(), fsync="everysec") as server:
            settings = Settings(redis_url=server.url, data_dir=work, artifact_dir=work / "artifacts",
                                signing_key_file=work / "keys" / "blocklist.key")
            core = Core.from_settings(settings)
            Keyring(core.store, settings.signing_key_file).init(SYSTEM, "benchmark")  # the programme's key
            core.publisher._key = ensure_key(settings.signing_key_file)
            core.curation.set_policy(SYSTEM, {"guard_add_max": 10**9, "guard_add_pct": 10**6,
                                              "guard_remove_pct": 100})
            load_s = load_active(core, values)
            ref_s = reference(values, work)

            t0 = time.perf_counter()
            full = core.publisher.publish(reason="bench: from scratch")
            full_s = time.perf_counter() - t0
            assert full.status == "published", full
            snapshot_size = core.publisher.latest()["snapshot"]["size"]
            zone_size = core.publisher.latest()["rpz"]["size"]

            active = list(range(1, args.count + 1))
            change_s = changes(core, args.changes, rng, active)
            t0 = time.perf_counter()
            inc = core.publisher.publish(reason="bench: changes")
            inc_s = time.perf_counter() - t0
            assert inc.status == "published", inc

            # The same after a worker restart: the previous list comes from its snapshot file.
            changes(core, args.changes, rng, active)
            cold = Publisher(core.store, settings, core.curation, key=core.publisher.key)
            t0 = time.perf_counter()
            inc_cold = cold.publish(reason="bench: changes after restart")
            cold_s = time.perf_counter() - t0
            assert inc_cold.status == "published", inc_cold
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "entries": args.count,
        "reference_sort_hash_sign_s": round(ref_s, 2),
        "full_publication_s": round(full_s, 2),
        "full_ratio": round(full_s / ref_s, 2),
        "full_timings": {k: round(v, 2) for k, v in full.timings.items()},
        "changes": args.changes,
        "incremental_publication_s": round(inc_s, 2),
        "incremental_timings": {k: round(v, 2) for k, v in inc.timings.items()},
        "incremental_after_restart_s": round(cold_s, 2),
        "snapshot_bytes": snapshot_size,
        "zone_bytes": zone_size,
        "load_entries_s": round(load_s, 1),
        "apply_changes_s": round(change_s, 2),
    }
    print(f"publication of {args.count:,} active domains")
    print(f"  reference (sort + sha256sum + minisign -S) : {ref_s:6.2f} s")
    print(f"  full publication from scratch             : {full_s:6.2f} s  ratio {full_s / ref_s:.2f} (goal <= 3)")
    print(f"     {', '.join(f'{k} {v:.2f}s' for k, v in full.timings.items())}")
    print(f"  after {args.changes} changes                       : {inc_s:6.2f} s  (goal < 2 s)")
    print(f"     {', '.join(f'{k} {v:.2f}s' for k, v in inc.timings.items())}")
    print(f"  after {args.changes} changes, restarted worker     : {cold_s:6.2f} s")
    print(f"  artifacts: snapshot {snapshot_size / 1e6:.0f} MB, zone {zone_size / 1e6:.0f} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
