"""Publish 1,000,000 active domains from scratch, then after 1,000 and after
10,000 changes, then compact; and what Redis holds for all of it.

Beside it, in the same run, the reference: the same 1M values, shuffled, in
a file that stock tools sort (``LC_ALL=C sort``), hash (``sha256sum``) and
sign (``minisign -S``). The product does more than the reference: the first
publication writes, signs, compresses and stores in Redis a snapshot
(~175 MB of JSON), an RPZ zone file (2M records) and a manifest, and
verifies every signature before it commits the version; it reads the list,
sorted and cut into the digest's chunks, from the store's published form.
A later version publishes its delta and the manifest, and hashes again only
the digest chunks around each change; compaction writes the full files
afterwards, while the version is already served. The publisher loads the
Public Suffix List before the clock starts, as the worker does when it starts.

    .venv/bin/python bench/publish.py [--count 1000000] [--changes 1000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import pstats
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from common import load_active, programme_key  # bench/common.py (run as: python bench/publish.py)

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM, Actor, Role
from app.embedded import EmbeddedRedis, free_port
from app.publishing import Publisher


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


@contextlib.contextmanager
def profiled(directory: Path | None, name: str) -> Iterator[None]:
    """cProfile the block into DIR/NAME.prof (and a text summary) when asked; the
    figures printed come from runs without --profile."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(directory / f"{name}.prof")
        with open(directory / f"{name}.txt", "w") as out:
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="write cProfile statistics of the full, the 1,000- and the 10,000-change publications to DIR")
    args = ap.parse_args()
    if args.count < 11_000:
        ap.error("--count must be at least 11,000: the benchmark changes 10,000 entries and measures 1,000 more")
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
            programme_key(core)
            core.curation.set_policy(SYSTEM, {"guard_add_max": 10**9, "guard_add_pct": 10**6,
                                              "guard_remove_pct": 100})
            load_s = load_active(core, values)
            ref_s = reference(values, work)

            entries_memory = core.store.memory_used()
            core.publisher.prepare()  # as the worker does when it starts
            t0 = time.perf_counter()
            with profiled(args.profile, "full"):
                full = core.publisher.publish(reason="bench: from scratch", compact=False)
            full_s = time.perf_counter() - t0
            assert full.status == "published", full
            snapshot_size = core.publisher.latest()["snapshot"]["size"]
            zone_size = core.publisher.latest()["rpz"]["size"]

            active = list(range(1, args.count + 1))
            change_s = changes(core, args.changes, rng, active)
            t0 = time.perf_counter()
            with profiled(args.profile, "changes"):
                inc = core.publisher.publish(reason="bench: changes", compact=False)
            inc_s = time.perf_counter() - t0
            assert inc.status == "published", inc

            many = args.changes * 10
            changes(core, many, rng, active)
            t0 = time.perf_counter()
            with profiled(args.profile, "changes10"):
                inc10 = core.publisher.publish(reason="bench: ten times the changes", compact=False)
            inc10_s = time.perf_counter() - t0
            assert inc10.status == "published", inc10

            # The same after a worker restart (or on a standby): the previous
            # list is rebuilt from the full snapshot and the deltas after it.
            changes(core, args.changes, rng, active)
            cold = Publisher(core.store, settings, core.curation, key=core.publisher.key)
            cold.prepare()
            t0 = time.perf_counter()
            inc_cold = cold.publish(reason="bench: changes after restart", compact=False)
            cold_s = time.perf_counter() - t0
            assert inc_cold.status == "published", inc_cold

            # Background compaction of the latest version.
            cold.settings = replace(settings, compact_ratio=0.0)
            t0 = time.perf_counter()
            compacted = cold.compact()
            compact_s = time.perf_counter() - t0
            assert compacted.status == "compacted", compacted
            total_memory = core.store.memory_used()
            stored = core.store.artifacts.stats()
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
        "changes_10x": many,
        "incremental_10x_publication_s": round(inc10_s, 2),
        "incremental_after_restart_s": round(cold_s, 2),
        "compaction_s": round(compact_s, 2),
        "snapshot_bytes": snapshot_size,
        "zone_bytes": zone_size,
        "redis_memory_entries_bytes": entries_memory,
        "redis_memory_total_bytes": total_memory,
        "artifacts_stored": stored,
        "load_entries_s": round(load_s, 1),
        "apply_changes_s": round(change_s, 2),
    }
    print(f"publication of {args.count:,} active domains")
    print(f"  reference (sort + sha256sum + minisign -S) : {ref_s:6.2f} s")
    print(f"  full publication from scratch             : {full_s:6.2f} s  ratio {full_s / ref_s:.2f} (goal <= 3)")
    print(f"     {', '.join(f'{k} {v:.2f}s' for k, v in full.timings.items())}")
    print(f"  after {args.changes} changes                       : {inc_s:6.2f} s  (goal < 0.3 s)")
    print(f"     {', '.join(f'{k} {v:.2f}s' for k, v in inc.timings.items())}")
    print(f"  after {many} changes                      : {inc10_s:6.2f} s")
    print(f"     {', '.join(f'{k} {v:.2f}s' for k, v in inc10.timings.items())}")
    print(f"  after {args.changes} changes, restarted worker     : {cold_s:6.2f} s")
    print(f"  background compaction                     : {compact_s:6.2f} s")
    print(f"  artifacts: snapshot {snapshot_size / 1e6:.0f} MB, zone {zone_size / 1e6:.0f} MB; "
          f"{stored['artifacts']} stored, {stored['bytes'] / 1e6:.0f} MB raw in {stored['stored_bytes'] / 1e6:.0f} MB")
    print(f"  Redis memory: entries {entries_memory / 1e9:.2f} GB, with artifacts {total_memory / 1e9:.2f} GB "
          "(goal < 1.5 GB)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
