"""blocklist-pull at 1,000,000 domains: a first pull, a pull after 1,000 changes, a pull with nothing new.

The real service publishes the list (embedded Redis, the real publisher and
signing key) and serves it with the real app on a local socket, gzip
included. Each pull is a separate ``blocklist-pull once`` process, timed
from start to exit, with its peak RSS. Beside it, in the same run, the
reference: ``curl --compressed`` of the same snapshot and its signature,
``minisign -Vm`` and ``sha256sum`` (fetch and verify, nothing rendered).

    .venv/bin/python bench/pull.py [--count 1000000] [--changes 1000] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import load_active, programme_key  # bench/common.py (run as: python bench/pull.py)
from publish import changes  # bench/publish.py: delistings and new entries through the curation rules
from werkzeug.serving import make_server

from app.config import Settings
from app.core import Core
from app.domain import SYSTEM
from app.embedded import EmbeddedRedis, free_port
from app.web import create_app

ROOT = Path(__file__).resolve().parent.parent
FORMATS = {"rpz": "blocklist.rpz.zone", "unbound": "blocklist.conf", "dnsmasq": "dnsmasq.conf",
           "hosts": "hosts", "domains": "domains.txt", "urls": "urls.acl"}


# A child's peak RSS as the kernel reports it includes its parent's at the fork (Linux
# carries the high-water mark across fork and exec): run each pull under a small
# launcher so the figure is the pull's own.
_LAUNCHER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


def pull_measured(config: Path, profile: Path | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, first line printed) of one ``blocklist-pull once`` process
    (run under cProfile, its statistics written to ``profile``, when given)."""
    t0 = time.perf_counter()
    prof = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, *prof, "-m", "client.pull",
                           "-c", str(config), "once"], cwd=ROOT, capture_output=True, check=False)
    seconds = time.perf_counter() - t0
    err = proc.stderr.decode().strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"blocklist-pull failed: {' '.join(err[:-1])}")
    return seconds, int(err[-1]) / 1024, proc.stdout.decode().splitlines()[0]


def reference(url: str, token: str, pub: Path, work: Path, version: int) -> float:
    rel = f"snapshots/{version}.json"
    auth = f"Authorization: Bearer {token}"
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sf", "--compressed", "-H", auth, "-o", str(work / "ref.json"), f"{url}/{rel}"],
                   check=True)
    subprocess.run(["curl", "-sf", "-H", auth, "-o", str(work / "ref.json.minisig"), f"{url}/{rel}.minisig"],
                   check=True)
    subprocess.run(["minisign", "-Vm", str(work / "ref.json"), "-p", str(pub)], check=True, capture_output=True)
    subprocess.run(["sha256sum", str(work / "ref.json")], check=True, capture_output=True)
    return time.perf_counter() - t0


def write_config(work: Path, name: str, url: str, key: str, formats: list[str]) -> Path:
    out = work / f"out-{name}"
    out.mkdir()
    lines = [f"feed_url = {json.dumps(url)}", 'token_file = "token"', f"public_keys = [{json.dumps(key)}]",
             f"state_dir = {json.dumps(str(work / f'state-{name}'))}", "max_download_mb = 1024"]
    for fmt in formats:
        lines += ["[[output]]", f'format = "{fmt}"', f"path = {json.dumps(str(out / FORMATS[fmt]))}"]
    path = work / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=1000)
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="run each pull under cProfile, statistics in DIR (the figures then include its overhead)")
    args = ap.parse_args()
    rng = random.Random(7)
    values = [f"{rng.choice(['kid', 'pic', 'vid', 'img', 'cp', 'xx'])}{i:07d}-{rng.randrange(36**4):x}"
              f".example-bench.test" for i in range(args.count)]
    rng.shuffle(values)
    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    results: dict[str, object] = {"entries": args.count, "changes": args.changes}
    try:
        with EmbeddedRedis(work / "redis", port=free_port(), fsync="everysec") as server:
            settings = Settings(redis_url=server.url, data_dir=work, artifact_dir=work / "artifacts",
                                signing_key_file=work / "keys" / "blocklist.key")
            core = Core.from_settings(settings)
            programme_key(core)
            core.curation.set_policy(SYSTEM, {"guard_add_max": 10**9, "guard_add_pct": 10**6,
                                              "guard_remove_pct": 100})
            load_active(core, values)
            first = core.publisher.publish(reason="bench: from scratch")
            assert first.status == "published", first
            token = core.isps.add(SYSTEM, "bench")["feed_token"]
            (work / "token").write_text(token + "\n")
            pub = work / "blocklist.pub"
            pub.write_text(core.publisher.key.public.text())
            key = core.publisher.key.public.base64()
            port = free_port()
            web = make_server("127.0.0.1", port, create_app(core=core), threaded=True)
            threading.Thread(target=web.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{port}/feed/v1"
            # The server compresses each artifact once, on its first request: do that before timing.
            for rel in (f"snapshots/{first.version}.json", "manifest.json"):
                req = urllib.request.Request(f"{url}/{rel}", headers={"Authorization": f"Bearer {token}",
                                                                       "Accept-Encoding": "gzip"})
                with urllib.request.urlopen(req) as resp:
                    resp.read()

            ref_s = reference(url, token, pub, work, int(first.version or 0))
            configs = {"rpz+unbound": write_config(work, "two", url, key, ["rpz", "unbound"]),
                       "all six formats": write_config(work, "six", url, key, list(FORMATS))}
            def prof(step: str, name: str) -> Path | None:
                if args.profile is None:
                    return None
                args.profile.mkdir(parents=True, exist_ok=True)
                return args.profile / f"{step}-{name.replace(' ', '_')}.prof"

            for name, cfg in configs.items():
                s, rss, line = pull_measured(cfg, prof("first", name))
                results[f"first_pull_{name}"] = {"s": round(s, 2), "peak_rss_mb": round(rss), "said": line}
            changes(core, args.changes, rng, list(range(1, args.count + 1)))
            second = core.publisher.publish(reason="bench: changes")
            assert second.status == "published", second
            for name, cfg in configs.items():
                s, rss, line = pull_measured(cfg, prof("delta", name))
                results[f"delta_pull_{name}"] = {"s": round(s, 2), "peak_rss_mb": round(rss), "said": line}
            for name, cfg in configs.items():
                s, rss, line = pull_measured(cfg)
                results[f"nothing_new_{name}"] = {"s": round(s, 2), "peak_rss_mb": round(rss), "said": line}
            web.shutdown()
            results["reference_curl_minisign_sha256sum_s"] = round(ref_s, 2)
            results["snapshot_mb"] = round(core.publisher.latest()["snapshot"]["size"] / 1e6)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"blocklist-pull against the real feed, {args.count:,} domains")
    print(f"  reference: curl --compressed + minisign -Vm + sha256sum of the snapshot: "
          f"{results['reference_curl_minisign_sha256sum_s']} s")
    for k, v in results.items():
        if isinstance(v, dict):
            print(f"  {k:<34} {v['s']:6.2f} s  peak RSS {v['peak_rss_mb']:5d} MB   {v['said']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
