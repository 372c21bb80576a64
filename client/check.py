"""``blocklist-pull check``: which version do our resolvers enforce?

Every published version of the list carries two canaries in its response
policy zone (RPZ local data, so they answer only where the policy is
applied; ``.canary`` is no real top-level domain):

* ``version.canary`` TXT ``"<version>"``: the version the resolver enforces;
* ``blocked.canary``: always blocked (NXDOMAIN, or the ISP's stop page).

The check asks each of the ISP's own resolvers for both, compares the
version with the feed's current one (from the verified manifest, or the
version this host last applied when the feed cannot be reached), and, when
a feed token is configured, reports what it saw to the programme
(``POST /feed/v1/reports``), so the programme knows what is enforced, not
only what was downloaded.

What must stay true:

* A resolver counts as enforcing only if the version canary answers with a
  version and the blocked canary is blocked. A genuine NXDOMAIN from the
  root zone (which carries the root's SOA) does not count: ``canary`` does
  not exist, so an unfiltered resolver says NXDOMAIN too.
* Exit status: 0 every resolver enforces a version at most ``max_behind``
  behind; 1 one does not, or lags more; 2 usage or configuration; 3 the
  report could not be delivered (the resolvers were fine).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from client import dnsquery
from client.config import Config
from client.errors import EXIT_FEED, EXIT_OK, EXIT_REFUSED, PullError
from client.fetch import HttpTransport
from client.state import StateDir
from client.verify import MANIFEST_MAX, SIGNATURE_MAX, TrustPolicy, check_manifest, iso

VERSION_CANARY = "version.canary."
BLOCKED_CANARY = "blocked.canary."


@dataclass
class Seen:
    """What one resolver answered."""

    resolver: str
    version: int | None
    version_detail: str
    blocked: bool
    blocked_detail: str
    checked_at: float
    behind: int | None = None

    @property
    def enforcing(self) -> bool:
        return self.version is not None and self.blocked

    def report_item(self) -> dict[str, object]:
        return {"resolver": self.resolver, "version": self.version, "blocked": self.blocked,
                "checked_at": iso(self.checked_at)}


def ask_version(server: tuple[str, int], timeout: float) -> tuple[int | None, str]:
    try:
        answer = dnsquery.query(server, VERSION_CANARY, dnsquery.TXT, timeout)
    except dnsquery.DnsError as e:
        return None, f"no answer ({e.args[0]})"
    texts = ["".join(rr.texts()) for rr in answer.records
             if rr.section == "answer" and rr.type == dnsquery.TXT and rr.name == VERSION_CANARY]
    if answer.rcode != dnsquery.NOERROR or not texts:
        return None, f"no version canary ({answer.status}): the list's policy zone is not applied"
    if len(texts) != 1 or not texts[0].isdigit() or len(texts[0]) > 15:
        return None, f"the version canary holds {texts[0][:40]!r}, not a version number"
    return int(texts[0]), texts[0]


def ask_blocked(server: tuple[str, int], timeout: float, stop_page: frozenset[str]) -> tuple[bool, str]:
    try:
        answer = dnsquery.query(server, BLOCKED_CANARY, dnsquery.A, timeout)
    except dnsquery.DnsError as e:
        return False, f"no answer ({e.args[0]})"
    if answer.rcode == dnsquery.NXDOMAIN:
        if any(rr.type == dnsquery.SOA and rr.name == "." for rr in answer.records):
            return False, "NXDOMAIN from the root zone: the policy did not apply"
        return True, "NXDOMAIN by the policy"
    addresses = {a for rr in answer.records if rr.section == "answer" and (a := rr.address())}
    if answer.rcode == dnsquery.NOERROR and addresses and addresses <= stop_page:
        return True, "the stop page"
    shown = ", ".join(sorted(addresses)) or "no address"
    return False, f"not blocked ({answer.status}, {shown})"


def check_resolver(label: str, server: tuple[str, int], timeout: float, stop_page: frozenset[str],
                   clock: float) -> Seen:
    version, vdetail = ask_version(server, timeout)
    blocked, bdetail = ask_blocked(server, timeout, stop_page)
    return Seen(label, version, vdetail, blocked, bdetail, clock)


@dataclass
class Result:
    current: int | None
    current_source: str
    resolvers: list[Seen]
    max_behind: int
    reported: str = "not reported (no feed token configured)"

    @property
    def ok(self) -> bool:
        return all(s.enforcing and (s.behind is None or s.behind <= self.max_behind) for s in self.resolvers)

    def to_json(self) -> str:
        return json.dumps({"current_version": self.current, "current_from": self.current_source,
                           "max_behind": self.max_behind, "ok": self.ok, "reported": self.reported,
                           "resolvers": [dict(asdict(s), enforcing=s.enforcing, checked_at=iso(s.checked_at))
                                         for s in self.resolvers]}, indent=1)

    def lines(self) -> list[str]:
        out = [f"feed: version {self.current} ({self.current_source})" if self.current is not None
               else f"feed: current version unknown ({self.current_source})"]
        for s in self.resolvers:
            if s.version is None:
                head = f"does not enforce the list: {s.version_detail}"
            elif s.behind is None:
                head = f"enforces version {s.version}"
            elif s.behind == 0:
                head = f"enforces version {s.version} (current)"
            else:
                late = " (more than --max-behind)" if s.behind > self.max_behind else ""
                head = f"enforces version {s.version}, {s.behind} behind{late}"
            canary = "blocked" if s.blocked else "NOT blocked"
            out.append(f"resolver {s.resolver}: {head}; blocked canary: {canary} ({s.blocked_detail})")
        out.append(self.reported)
        return out


def current_version(config: Config | None, transport: HttpTransport | None, now: float) -> tuple[int | None, str]:
    """The feed's version from its verified manifest; else the version this host last applied."""
    problem = "no feed configured" if config is None else "no feed token configured"
    if config is not None and transport is not None:
        try:
            # The pinned keys, and those the pull tool learned from signed announcements.
            keys = StateDir(config.state_dir).load_keys().trusted(config.keys)
            policy = TrustPolicy(keys=keys, max_version_jump=1 << 62, max_artifact_size=config.max_download,
                                 list_name=config.list_name)
            body = transport.get("manifest.json", MANIFEST_MAX)
            sig = transport.get("manifest.json.minisig", SIGNATURE_MAX)
            return check_manifest(body, sig, policy, None, now).version, "the feed's signed manifest"
        except PullError as e:
            problem = f"the feed's manifest: {e.message}"
    if config is not None:
        held = StateDir(config.state_dir).load().version
        if held is not None:
            return held, f"held by this host; {problem}"
    return None, problem


def run(config: Config | None, resolvers: Sequence[str], *, max_behind: int, timeout: float,
        stop_page: frozenset[str], report: bool, clock: Callable[[], float]) -> tuple[Result, int]:
    """Check every resolver, report if a token is configured; (result, exit status)."""
    servers = [(label, dnsquery.parse_server(label)) for label in resolvers]
    transport = None
    if config is not None and config.token:
        transport = HttpTransport(config.feed_url, config.token, timeout=config.timeout,
                                  deadline=config.download_timeout, ca_file=config.ca_file)
    current, source = current_version(config, transport, clock())
    seen = [check_resolver(label, server, timeout, stop_page, clock()) for label, server in servers]
    for s in seen:
        if current is not None and s.version is not None:
            s.behind = max(0, current - s.version)
    result = Result(current, source, seen, max_behind)
    status = EXIT_OK if result.ok else EXIT_REFUSED
    if transport is not None and report:
        try:
            transport.post_json("reports", {"resolvers": [s.report_item() for s in seen]})
            result.reported = f"reported to the programme ({len(seen)} resolver{'s' if len(seen) != 1 else ''})"
        except PullError as e:
            result.reported = f"the report was not delivered: {e.message}"
            if status == EXIT_OK:
                status = EXIT_FEED
    elif transport is not None:
        result.reported = "not reported (--no-report)"
    return result, status
