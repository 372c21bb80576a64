"""The ``blocklist-pull`` command: ``once`` (pull, verify, apply), ``status`` and ``check``.

Exit codes (documented in docs/isp-pull.md; monitoring depends on them):
0 success; 1 the feed was refused (a check failed); 2 configuration or
usage; 3 the feed could not be fetched; 4 a local file could not be read or
written; 5 the post-apply command failed; 6 another run holds the lock.
``status`` exits 0 when healthy and 1 when not (never pulled, last run
failed, or no verified manifest within its validity). ``check`` exits 0
when every resolver asked enforces the list within ``--max-behind``
versions, 1 when one does not, 3 when only the report could not be sent
(see :mod:`client.check`).

Errors are one line on stderr, ``blocklist-pull: <sentence>``; nothing else
is printed for them.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client import __version__
from client.config import DEFAULT_CONFIG, Config, Overrides, load
from client.errors import EXIT_FEED, EXIT_OK, EXIT_REFUSED, ConfigError, PullError
from client.fetch import HttpTransport
from client.state import StateDir
from client.updater import Report, Updater
from client.verify import iso, parse_time

PROG = "blocklist-pull"


def _common(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    parser.add_argument("-c", "--config", metavar="FILE", default=s,
                        help="configuration file (default: $BLOCKLIST_PULL_CONFIG or /etc/blocklist-pull/pull.toml)")
    parser.add_argument("--feed-url", metavar="URL", default=s, help="the feed, e.g. https://host/feed/v1")
    parser.add_argument("--token-file", metavar="FILE", default=s, help="file holding the feed token (blf_...)")
    parser.add_argument("--public-key", metavar="KEY", action="append", default=s,
                        help="a pinned minisign public key (base64 line); repeat for a key rotation")
    parser.add_argument("--public-key-file", metavar="FILE", action="append", default=s,
                        help="a pinned minisign public key file; repeat for a key rotation")
    parser.add_argument("--state-dir", metavar="DIR", default=s, help="state directory")
    parser.add_argument("--output", metavar="FORMAT:PATH", action="append", default=s,
                        help="an output in addition to the configured ones "
                             "(rpz, unbound, dnsmasq, hosts, domains, urls)")
    parser.add_argument("--post-apply", metavar="COMMAND", default=s, help="command to run after outputs change")
    parser.add_argument("--max-version-jump", metavar="N", type=int, default=s,
                        help="refuse a feed more than N versions ahead of the one held")
    parser.add_argument("--list", metavar="NAME", dest="list_name", default=s, help="refuse a feed for another list")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Pull, verify and apply the signed blocklist feed.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    once = sub.add_parser("once", help="pull once: verify, then apply what changed")
    _common(once)
    once.add_argument("--dry-run", action="store_true", help="verify and show what would change; write nothing")
    once.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    status = sub.add_parser("status", help="show the version held, its age and the last error")
    _common(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    check = sub.add_parser("check", help="ask our resolvers which version of the list they enforce")
    _common(check)
    check.add_argument("--resolver", metavar="ADDR[:PORT]", action="append", required=True,
                       help="a resolver to ask (IPv6 as [ADDR]:PORT); repeat for several")
    check.add_argument("--max-behind", metavar="N", type=int, default=5,
                       help="fail when a resolver is more than N versions behind the feed (default 5)")
    check.add_argument("--timeout", metavar="SECONDS", type=float, default=3.0,
                       help="how long to wait for each answer (default 3)")
    check.add_argument("--stop-page", metavar="ADDR", action="append", default=[],
                       help="the address your resolvers answer for blocked names, if not NXDOMAIN")
    check.add_argument("--no-report", action="store_true", help="do not report the result to the programme")
    check.add_argument("--json", action="store_true", help="print JSON")
    return p


def _overrides(args: argparse.Namespace) -> Overrides:
    def g(name: str) -> Any:
        return getattr(args, name, None)  # flags not given are absent (SUPPRESS)

    return Overrides(
        feed_url=g("feed_url"), token_file=g("token_file"), public_keys=g("public_key") or [],
        public_key_files=g("public_key_file") or [], state_dir=g("state_dir"), outputs=g("output") or [],
        post_apply=g("post_apply"), max_version_jump=g("max_version_jump"), list_name=g("list_name"),
    )


def main(argv: Sequence[str] | None = None, *, clock: Callable[[], float] = time.time) -> int:
    args = parser().parse_args(argv)
    config_path = Path(args.config) if getattr(args, "config", None) else None
    try:
        if args.command == "status":
            config = load(config_path, _overrides(args), need_token=False)
            return status(config, clock(), as_json=args.json)
        if args.command == "check":
            return check(args, config_path, clock)
        config = load(config_path, _overrides(args))
        return once(config, clock, dry_run=args.dry_run, quiet=args.quiet)
    except PullError as e:
        _error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def check(args: argparse.Namespace, config_path: Path | None, clock: Callable[[], float]) -> int:
    """``check``: works without a configuration (no feed version, no report) and with one."""
    from client import check as canary
    from client import dnsquery

    if args.max_behind < 0 or not 0 < args.timeout <= 60:
        raise ConfigError("--max-behind must be 0 or more and --timeout from 0 to 60 seconds")
    stop_page: set[str] = set()
    for a in args.stop_page:
        try:
            stop_page.add(str(ipaddress.ip_address(a)))
        except ValueError:
            raise ConfigError(f"--stop-page {a!r} is not an IP address") from None
    for r in args.resolver:
        try:
            dnsquery.parse_server(r)
        except ValueError as e:
            raise ConfigError(f"--resolver {e}") from None
    over = _overrides(args)
    configured = config_path is not None or bool(os.environ.get("BLOCKLIST_PULL_CONFIG")) \
        or DEFAULT_CONFIG.exists() or over.feed_url is not None
    config = None
    if configured:
        try:
            config = load(config_path, over)
        except ConfigError as e:
            if not e.message.startswith("no feed token is configured"):
                raise
            config = load(config_path, over, need_token=False)  # no token: check, but do not report
    result, code = canary.run(config, args.resolver, max_behind=args.max_behind, timeout=args.timeout,
                              stop_page=frozenset(stop_page), report=not args.no_report, clock=clock)
    if args.json:
        print(result.to_json())
    else:
        for line in result.lines():
            print(line)
    return code


def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def once(config: Config, clock: Callable[[], float], *, dry_run: bool = False, quiet: bool = False) -> int:
    transport = HttpTransport(config.feed_url, config.token, timeout=config.timeout,
                              deadline=config.download_timeout, ca_file=config.ca_file)
    updater = Updater(config, transport, clock)
    try:
        report = updater.run(dry_run=dry_run)
    except PullError as e:
        message = e.message
        if e.exit_code in (EXIT_REFUSED, EXIT_FEED):
            held = updater.state.version
            message += f"; outputs unchanged (version {held} held)" if held else "; nothing applied"
        _error(message)
        return e.exit_code
    if not quiet:
        for line in describe(report):
            print(line)
    return EXIT_OK


def describe(report: Report) -> list[str]:
    """What a run did (or, with --dry-run, would do), one line per output."""
    would = "would " if report.dry_run else ""
    if report.via == "held":
        head = f"version {report.version} is current ({report.count} entries)"
    else:
        if report.via == "delta":
            how = f"{report.steps} delta{'s' if report.steps != 1 else ''} from version {report.previous}"
        elif report.steps > 1:
            more = report.steps - 1
            how = f"the full snapshot of version {report.snapshot_version} and {more} delta{'s' if more != 1 else ''}"
        else:
            how = "the full snapshot"
        change = f", {report.added} added and {report.removed} removed" if report.added is not None else ""
        verb = "would apply" if report.dry_run else "applied"
        head = f"{verb} version {report.version} ({how}{change}; {report.count} entries)"
    lines = [head, *(f"  {note}" for note in report.notes)]
    for o in report.outputs:
        if o.changed and o.lines_added is not None:
            how = ", patched" if o.how == "patch" else ""
            lines.append(f"  {would}write {o.spec.label} (+{o.lines_added} -{o.lines_removed} lines{how})")
        elif o.changed:
            lines.append(f"  {would}write {o.spec.label} (rewritten in full)")
        else:
            lines.append(f"  unchanged {o.spec.label}")
    if report.post_apply == "ran":
        lines.append("  ran the post-apply command")
    elif report.post_apply == "would-run":
        lines.append("  would run the post-apply command")
    return lines


def _ago(now: float, ts: float | None) -> str:
    if ts is None:
        return "never"
    s = max(0, int(now - ts))
    span = f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h" if s < 172800 \
        else f"{s // 86400} days"
    return f"{iso(ts)} ({span} ago)"


def health(config: Config, now: float) -> tuple[dict[str, Any], list[str]]:
    state_dir = StateDir(config.state_dir)
    state = state_dir.load()
    ring = state_dir.load_keys()
    problems: list[str] = []
    if state.version is None:
        problems.append("no version has been applied yet")
    if state.last_error is not None:
        problems.append(f"the last run failed: {state.last_error}")
    if state.manifest_expires_at is not None:
        try:
            if now >= parse_time(state.manifest_expires_at, "the manifest expiry"):
                problems.append(
                    f"stale: no verified manifest since {_ago(now, state.last_check)}; "
                    f"the last one expired at {state.manifest_expires_at}"
                )
        except PullError:
            problems.append("the state's manifest expiry is unreadable")
    if state.reload_pending:
        problems.append("the post-apply command has not yet succeeded for the latest change")
    info: dict[str, Any] = {"healthy": not problems, "problems": problems, **vars(state),
                            "learned_keys": [lk.key_id for lk in ring.learned], "retired_keys": list(ring.retired),
                            "outputs": [{"format": o.format, "path": str(o.path), "present": o.path.exists()}
                                        for o in config.outputs]}
    return info, problems


def status(config: Config, now: float, *, as_json: bool = False) -> int:
    info, problems = health(config, now)
    if as_json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return EXIT_OK if not problems else 1
    published = info["published_at"]
    published_ts = parse_time(published, "published_at") if published else None
    rows = [
        ("list", info["list_name"] or "-"),
        ("version", "none" if info["version"] is None else
         f"{info['version']}, published {_ago(now, published_ts)}, {info['count']} entries"
         + (f", via {info['applied_via']}" if info["applied_via"] else "")),
        ("signing key", info["key_id"] or "-"),
        ("announced keys", ", ".join(info["learned_keys"]) or "none"),
        ("retired keys", ", ".join(info["retired_keys"]) or "none"),
        ("last check", _ago(now, info["last_check"])
         + (f"; manifest valid until {info['manifest_expires_at']}" if info["manifest_expires_at"] else "")),
        ("last change", _ago(now, info["last_change"])),
        ("last error", "none" if info["last_error"] is None else
         f"{_ago(now, info['last_error_at'])}: {info['last_error']} (exit {info['last_error_code']})"),
        ("reload pending", "yes" if info["reload_pending"] else "no"),
    ]
    for o in info["outputs"]:
        rows.append(("output", f"{o['format']} {o['path']}" + ("" if o["present"] else " (missing)")))
    rows.append(("health", "ok" if not problems else "; ".join(problems)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return EXIT_OK if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
