"""A published version as an RPZ zone: text, names and differences. No I/O.

The zone (DESIGN 4.4) has SOA and NS at the apex, serial = version, and for
each active domain entry ``name CNAME .`` (NXDOMAIN), plus ``*.name CNAME .``
when the entry covers subdomains. URL entries are not in the zone.

The zone file this module writes is regular master-file syntax (BIND's
``named-checkzone`` accepts it) in a fixed layout: a comment header, then
``$ORIGIN``, ``$TTL``, the SOA and NS lines, then one record a line with
owner names relative to the origin. :func:`parse_zone_names` reads exactly
that layout back, fast, without a general zone parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.config import Settings

RECORD_SUFFIX = " CNAME .\n"


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
    """The zone lines of one domain entry (relative owner names)."""
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
        f"@ NS {params.ns}\n"
    )


def zone_text(params: SoaParams, fragments: Iterable[str], **header_fields: object) -> str:
    return header(params, **header_fields) + "".join(fragments)  # type: ignore[arg-type]


def parse_zone_names(text: str) -> tuple[int, list[str]]:
    """(serial, relative owner names) of a zone file written by :func:`zone_text`."""
    serial = -1
    out: list[str] = []
    suffix = RECORD_SUFFIX.rstrip("\n")
    for line in text.splitlines():
        if not line or line[0] in ";$":
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


def soa_params(settings: Settings) -> SoaParams:
    """The zone's SOA and NS as configured: the publisher writes them into
    zone files and the transfer server into SOA, AXFR and IXFR answers."""
    return SoaParams(
        zone=settings.rpz_zone, ttl=settings.rpz_ttl, refresh=settings.rpz_soa_refresh,
        retry=settings.rpz_soa_retry, expire=settings.rpz_soa_expire, minimum=settings.rpz_ttl,
        ns=settings.rpz_ns,
    )
