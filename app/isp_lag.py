"""How far behind the list each ISP is: what it fetched, what its resolvers enforce.

Two figures per ISP, both against the latest published version:

* **fetched**: the version it last downloaded from the feed or transferred
  by AXFR/IXFR (recorded by the web tier and the transfer server);
* **enforced**: the version its resolvers were last seen enforcing, from the
  enforcement reports its pull tool sends (``blocklist-pull check``). An ISP
  that has never reported has no enforced figure: it is shown as unknown,
  not as behind. A report that found resolvers not applying the list at all
  leaves the time but no version: that ISP is behind by every version.

"Behind since" is when the oldest version it lacks was published, or when
the ISP was added if that is later (an ISP is not late for a version older
than itself). One computation serves the pages and the metrics, so they
always agree. No I/O of its own: the caller gives the publication times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.domain import epoch, iso
from app.isps import Isp

if TYPE_CHECKING:
    from app.core import Core


@dataclass(frozen=True)
class IspLag:
    name: str
    latest: int | None
    fetched: int | None
    fetched_at: int | None
    fetched_via: str | None
    #: None with ``enforced_at`` set: the last report said its resolvers enforce nothing.
    enforced: int | None
    enforced_at: int | None
    #: Unix time since which the ISP lacks a published version; None when up to date.
    fetched_behind_since: float | None
    enforced_behind_since: float | None
    #: The last report's resolvers: label, version, blocked, checked_at (bounded by the report's reader).
    resolvers: tuple[dict[str, Any], ...] = ()

    @property
    def fetched_versions_behind(self) -> int | None:
        if self.latest is None:
            return None
        return max(0, self.latest - (self.fetched or 0))

    @property
    def enforced_versions_behind(self) -> int | None:
        if self.latest is None or self.enforced is None:
            return None
        return max(0, self.latest - self.enforced)

    @property
    def reported(self) -> bool:
        return self.enforced_at is not None

    @property
    def not_enforcing(self) -> bool:
        """The last report found resolvers that do not apply the list at all."""
        return self.reported and self.enforced is None

    @property
    def behind(self) -> bool:
        """It lacks the latest version, fetched or (if it reports) enforced."""
        return self.fetched_behind_since is not None or self.enforced_behind_since is not None

    def behind_for(self, now: float, which: str = "fetched") -> float | None:
        since = self.fetched_behind_since if which == "fetched" else self.enforced_behind_since
        return None if since is None else max(0.0, now - since)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name, "latest": self.latest,
            "fetched": self.fetched, "fetched_at": iso(self.fetched_at), "fetched_via": self.fetched_via,
            "fetched_versions_behind": self.fetched_versions_behind,
            "fetched_behind_since": iso(self.fetched_behind_since),
            "enforced": self.enforced, "enforced_at": iso(self.enforced_at),
            "enforced_versions_behind": self.enforced_versions_behind,
            "enforced_behind_since": iso(self.enforced_behind_since),
            "reported": self.reported, "not_enforcing": self.not_enforcing,
            "resolvers": list(self.resolvers),
            "behind": self.behind,
        }


def enforcement(isp: Isp) -> tuple[int | None, int | None]:
    """The version the ISP's resolvers were last seen enforcing, and when it was reported."""
    version = getattr(isp, "enforced_version", None)
    at = getattr(isp, "enforced_at", None)
    return (int(version) if version is not None else None, int(at) if at is not None else None)


def lag_of(isp: Isp, latest: int | None, published_after: Callable[[int], float | None]) -> IspLag:
    """``published_after(v)``: when the oldest version above ``v`` was published (None: none is)."""
    enforced, enforced_at = enforcement(isp)

    def since(have: int | None) -> float | None:
        if latest is None or (have or 0) >= latest:
            return None
        first = published_after(have or 0)
        if first is None:
            return None
        return max(first, float(isp.created_at))

    return IspLag(
        name=isp.name, latest=latest, fetched=isp.last_version, fetched_at=isp.last_pull_at,
        fetched_via=isp.last_pull_via, enforced=enforced, enforced_at=enforced_at,
        fetched_behind_since=since(isp.last_version),
        # Not enforcing at all is behind by every version it lacks; never reported is unknown.
        enforced_behind_since=(since(enforced) if enforced is not None
                               else since(0) if enforced_at is not None else None),
        resolvers=tuple(r for r in getattr(isp, "resolvers", None) or () if isinstance(r, dict)),
    )


def publication_times(core: Core) -> Callable[[int], float | None]:
    """``published_after`` read from the store, each version's time read once."""
    cache: dict[int, float | None] = {}

    def published_after(version: int) -> float | None:
        found = core.store.pubs.first_version_after(version)
        if found is None:
            return None
        if found not in cache:
            meta = core.publisher.version_meta(found)
            cache[found] = epoch(meta.get("published_at")) if meta else None
        return cache[found]

    return published_after


def lags(core: Core, isps: list[Isp] | None = None) -> dict[str, IspLag]:
    """Name -> lag of the active ISPs (all of ``isps`` when given)."""
    latest = core.latest_version()
    published_after = publication_times(core)
    chosen = isps if isps is not None else [i for i in core.isps.list() if i.active]
    return {i.name: lag_of(i, latest, published_after) for i in chosen}
