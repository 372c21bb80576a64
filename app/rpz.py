"""A published version as an RPZ zone: text, names and differences. No I/O.

The zone (README, "The RPZ zone over DNS") has SOA and NS at the apex, serial = version, and for
each active domain entry ``name CNAME .`` (NXDOMAIN), plus ``*.name CNAME .``
when the entry covers subdomains. URL entries are not in the zone.

The zone file this module writes is regular master-file syntax (BIND's
``named-checkzone`` accepts it) in a fixed layout: a comment header, then
``$ORIGIN``, ``$TTL``, the SOA, the canary (``version.canary`` TXT with the
version, ``blocked.canary CNAME .``) and NS lines, then one record a line
with owner names relative to the origin. :func:`parse_zone_names` reads exactly
that layout back, fast, without a general zone parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings

RECORD_SUFFIX = " CNAME .\n"

#: The canary (relative owner names, the same in both zones): a resolver that
#: applies the list answers ``version.canary`` TXT with the version it
#: enforces, and ``blocked.canary`` with the list's NXDOMAIN. Tools query
#: exactly these names; never rename them.
CANARY_VERSION = "version.canary"
CANARY_BLOCKED = "blocked.canary"
#: Owner names an entry can never take: the canary's.
RESERVED = frozenset({CANARY_VERSION, "*." + CANARY_VERSION, CANARY_BLOCKED, "*." + CANARY_BLOCKED})


@dataclass(frozen=True)
class SoaParams:
    zone: str
    ttl: int
    refresh: int
    retry: int
    expire: int
    minimum: int
    ns: str
    mname: str = "localhost."
    rname: str = "hostmaster.localhost."

    def soa_text(self, serial: int) -> str:
        return f"{self.mname} {self.rname} {serial} {self.refresh} {self.retry} {self.expire} {self.minimum}"


def fragment(value: str, subdomains: bool) -> str:
    """The zone lines of one domain entry (relative owner names); none for
    an entry that would take the canary's names."""
    if value in RESERVED:
        return ""
    if subdomains:
        return f"{value}{RECORD_SUFFIX}*.{value}{RECORD_SUFFIX}"
    return f"{value}{RECORD_SUFFIX}"


def names(value: str, subdomains: bool) -> list[str]:
    """Owner names (relative to the zone) of one domain entry."""
    return [value, f"*.{value}"] if subdomains else [value]


def header(params: SoaParams, *, list_name: str, version: int, published_at: str, expires_at: str) -> str:
    return (
        f"; {list_name} response policy zone, version {version}\n"
        f"; published {published_at}, valid until {expires_at}\n"
        f"; signed: verify with minisign -Vm <this file> -p <publisher key>\n"
        f"$ORIGIN {params.zone}\n"
        f"$TTL {params.ttl}\n"
        f"@ SOA {params.soa_text(version)}\n"
        f'{CANARY_VERSION} TXT "{version}"\n'
        f"{CANARY_BLOCKED}{RECORD_SUFFIX}"
        f"@ NS {params.ns}\n"
    )


def zone_text(params: SoaParams, fragments: Iterable[str], **header_fields: object) -> str:
    return header(params, **header_fields) + "".join(fragments)  # type: ignore[arg-type]


def parse_zone_names(text: str) -> tuple[int, list[str]]:
    """(serial, relative owner names of the entries) of a zone file written
    by :func:`zone_text`; the canary's lines are not entries."""
    serial = -1
    out: list[str] = []
    suffix = RECORD_SUFFIX.rstrip("\n")
    for line in text.splitlines():
        if not line or line[0] in ";$" or line.split(" ", 1)[0] in RESERVED:
            continue
        if line.startswith("@ SOA "):
            serial = int(line.split()[4])
            continue
        if line[0] == "@":
            continue
        if not line.endswith(suffix):
            raise ValueError(f"unexpected zone line: {line[:80]!r}")
        out.append(line[: -len(suffix)])
    if serial < 0:
        raise ValueError("the zone has no SOA line")
    return serial, out


def entry_names(records: Iterable[dict[str, object]]) -> set[str]:
    """Owner names of feed records (snapshot or delta entries)."""
    out: set[str] = set()
    for r in records:
        if r.get("type") == "domain":
            out.update(names(str(r["value"]), bool(r.get("subdomains"))))
    return out


def delta_names(delta: dict[str, object]) -> tuple[set[str], set[str]]:
    """(names deleted, names added) by a delta, condensed: a name removed and
    re-added (an entry whose metadata changed) appears in neither."""
    removed = entry_names(delta.get("removed", []))  # type: ignore[arg-type]
    added = entry_names(delta.get("added", []))  # type: ignore[arg-type]
    both = removed & added
    return removed - both, added - both


def compose(steps: Iterable[tuple[set[str], set[str]]]) -> tuple[set[str], set[str]]:
    """Condense consecutive (deleted, added) name differences into one."""
    deleted: set[str] = set()
    added: set[str] = set()
    for d, a in steps:
        for n in d:
            if n in added:
                added.discard(n)
            else:
                deleted.add(n)
        for n in a:
            if n in deleted:
                deleted.discard(n)
            else:
                added.add(n)
    return deleted, added


# --------------------------------------------------------------------------- SOA from settings


def soa_params(settings: Settings, overlay: bool = False) -> SoaParams:
    """The zone's SOA and NS as configured: the publisher writes them into
    zone files and the transfer server into SOA, AXFR and IXFR answers. The
    overlay zone has the same SOA timers and NS under its own name."""
    return SoaParams(
        zone=settings.rpz_overlay_zone if overlay else settings.rpz_zone, ttl=settings.rpz_ttl,
        refresh=settings.rpz_soa_refresh, retry=settings.rpz_soa_retry, expire=settings.rpz_soa_expire,
        minimum=settings.rpz_ttl, ns=settings.rpz_ns,
    )


# --------------------------------------------------------------------------- base and overlay


@dataclass(frozen=True)
class FoldPolicy:
    """When the overlay is folded into the base zone, and how slowly."""

    changes: int = 2000  # names changed since the newest covered base
    age: float = 900.0  # seconds a base may stay behind while anything changed
    grace: float = 300.0  # seconds each fold step is served before the next
    span: int = 100  # versions of deltas kept: the overlay reaches back less than this

    @classmethod
    def from_settings(cls, settings: Settings) -> FoldPolicy:
        span = max(8, min(settings.dns_history, settings.retain_deltas))
        return cls(settings.rpz_fold_changes, float(settings.rpz_fold_age), float(settings.rpz_fold_grace), span)


@dataclass(frozen=True)
class Layout:
    """How version N is served as two policy zones: which version the base
    zone holds, and which base versions the overlay is correct against.

    The overlay of version N holds, for every name that differs between N
    and any version in ``covers``, N's answer for it: ``CNAME .`` when N
    lists it, ``CNAME rpz-passthru.`` when it does not. A resolver that
    applies the overlay first and any base in ``covers`` under it therefore
    enforces exactly version N. ``base`` is always in ``covers``.

    A fold moves the base in three steps, each served for ``grace`` seconds
    before the next: *steady* (covers = base), *announced* (covers = base and
    the target, base unchanged: resolvers fetch an overlay that is also
    correct over the target), *switched* (the base zone now holds the
    target, the overlay still covers the old base for resolvers that have
    not fetched the new base yet), then steady again. No step opens a
    window in which a resolver holding a recent overlay and either base
    answers a name differently from version N.

    It is computed by the publisher from the previous version's layout and
    stored in the version's metadata, so every transfer server serves the
    same two zones.
    """

    base: int
    covers: tuple[int, ...]
    since: float  # when the current step began (publication time, epoch seconds)
    changes: int = 0  # names changed since the newest covered version
    step: int = 0  # the version with which the current step began

    @property
    def phase(self) -> str:
        if len(self.covers) == 1:
            return "steady"
        return "announced" if self.base == self.covers[0] else "switched"

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "covers": list(self.covers), "since": self.since, "changes": self.changes,
                "step": self.step}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, version: int) -> Layout:
        """The layout stored with a version; a version published before
        layouts existed is its own base, with an empty overlay."""
        if not data:
            return cls(version, (version,), 0.0, 0, version)
        base = int(data["base"])
        covers = tuple(sorted({int(v) for v in data["covers"]}))
        step = int(data.get("step", covers[-1]))
        if base not in covers or any(v > version for v in covers) or len(covers) > 2 or step > version:
            raise ValueError(f"version {version} has an inconsistent zone layout: {dict(data)}")
        return cls(base, covers, float(data.get("since", 0.0)), int(data.get("changes", 0)), step)


def next_layout(previous: Layout | None, version: int, now: float, changed: int, continuous: bool,
                policy: FoldPolicy) -> Layout:
    """The layout of a new version, from the previous version's.

    ``changed`` is the number of names the new version's delta adds or
    removes; ``continuous`` says whether that delta exists (without one,
    the overlay cannot be computed, so the new version is its own base).
    A grace of zero turns the overlay off: every version is its own base
    (the overlay zone then holds only the canary), as with a single zone.
    A pure function: the publisher calls it, everything else reads its
    result from the version metadata."""
    if previous is None or not continuous or policy.grace <= 0:
        return Layout(version, (version,), now, 0, version)
    changes = previous.changes + changed
    # Publications faster than the grace force the steps, each at least
    # ``quick`` versions after the one before (a resolver that follows
    # NOTIFY has long caught up by then), so that the overlay never reaches
    # back further than the deltas are kept: at most 4 * quick + 1 versions.
    quick = max(1, policy.span // 5)
    if previous.phase == "steady":
        due = (changes >= policy.changes or (changes and now - previous.since >= policy.age)
               or version - previous.base >= 2 * quick)
        if due:
            return Layout(previous.base, (previous.base, version), now, 0, version)
        return replace(previous, changes=changes)
    step_done = now - previous.since >= policy.grace or version - previous.step >= quick
    if previous.phase == "announced":
        if step_done:
            return Layout(previous.covers[1], previous.covers, now, changes, version)
        return replace(previous, changes=changes)
    if step_done:
        return Layout(previous.base, (previous.base,), now, changes, version)
    return replace(previous, changes=changes)


def fold_due(previous: Layout, now: float, policy: FoldPolicy) -> bool:
    """Whether a version published now would move a fold on even without a
    change to the list: so that a quiet list still gets its base moved (and
    ISPs that list only the base catch up), the publisher then publishes a
    version without changes."""
    if policy.grace <= 0:
        return False
    if previous.phase == "steady":
        return previous.changes > 0 and now - previous.since >= policy.age
    return now - previous.since >= policy.grace
