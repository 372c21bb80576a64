"""The record of one published version, as the publisher writes it and every
reader (feed, transfer server, admin, API, metrics) reads it. No I/O.

What must stay true:

* One class, one JSON shape: :meth:`Publication.to_json` is what the
  publisher stores, :meth:`Publication.from_json` reads it back, and
  :meth:`Publication.to_dict` is the shape the API and pages show.
* A version's list never changes once published. Only its full files may be
  added later (compaction): then ``snapshot``/``rpz`` are set and ``base``
  becomes the version itself.
* ``base`` is the newest version at or before this one that has a full
  snapshot and zone file; every delta from ``base`` to this version is
  retained while this version is the latest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any


def _zones(d: Any) -> dict[str, Any] | None:
    """A stored zone layout (app.rpz.Layout as JSON), checked when it is read
    (``Layout.from_json``), not here; anything but an object reads as none."""
    return dict(d) if isinstance(d, dict) and d else None


@dataclass(frozen=True)
class FileRef:
    """A published artifact: its feed path, sha256 and size."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> FileRef | None:
        if not d:
            return None
        return cls(path=str(d["path"]), sha256=str(d["sha256"]), size=int(d["size"]))


@dataclass(frozen=True)
class DeltaRef(FileRef):
    """A delta, and the versions it leads from and to."""

    frm: int = 0
    to: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "from": self.frm, "to": self.to}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DeltaRef | None:
        if not d:
            return None
        return cls(path=str(d["path"]), sha256=str(d["sha256"]), size=int(d["size"]), frm=int(d["from"]),
                   to=int(d["to"]))


@dataclass(frozen=True)
class Publication:
    version: int
    published_at: str
    expires_at: str
    count: int
    entries_digest: str
    previous_version: int | None = None
    changes: dict[str, int] = field(default_factory=dict)
    snapshot: FileRef | None = None
    rpz: FileRef | None = None
    delta: DeltaRef | None = None
    #: The newest version at or before this one with full files.
    base: int = 0
    #: Deltas since ``base``: how many, and their bytes.
    chain_length: int = 0
    chain_bytes: int = 0
    #: When the full files were written (epoch seconds), if they were.
    full_at: int | None = None
    by: str = ""
    reason: str = ""
    released: bool = False
    build_seconds: float = 0.0
    publisher: str = ""
    #: How the version is served as base and overlay policy zones
    #: (:class:`app.rpz.Layout` as JSON); None for versions published before
    #: layouts existed (each is then its own base).
    zones: dict[str, Any] | None = None

    @property
    def has_full_files(self) -> bool:
        return self.snapshot is not None and self.rpz is not None

    def with_full_files(self, snapshot: FileRef, rpz: FileRef, at: int) -> Publication:
        return replace(self, snapshot=snapshot, rpz=rpz, base=self.version, chain_length=0, chain_bytes=0,
                       full_at=at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "published_at": self.published_at, "expires_at": self.expires_at,
            "count": self.count, "previous_version": self.previous_version, "changes": dict(self.changes),
            "snapshot": self.snapshot.to_dict() if self.snapshot else None,
            "rpz": self.rpz.to_dict() if self.rpz else None,
            "delta": self.delta.to_dict() if self.delta else None,
            "base": self.base, "chain": {"length": self.chain_length, "bytes": self.chain_bytes},
            "full_at": self.full_at, "entries_digest": self.entries_digest, "by": self.by, "reason": self.reason,
            "released": self.released, "build_seconds": self.build_seconds, "publisher": self.publisher,
            "zones": dict(self.zones) if self.zones is not None else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Publication:
        version = int(d["version"])
        snapshot = FileRef.from_dict(d.get("snapshot"))
        chain = d.get("chain") or {}
        return cls(
            version=version, published_at=str(d["published_at"]), expires_at=str(d["expires_at"]),
            count=int(d["count"]), entries_digest=_digest_of(d),
            previous_version=int(d["previous_version"]) if d.get("previous_version") else None,
            changes={str(k): int(v) for k, v in (d.get("changes") or {}).items()},
            snapshot=snapshot, rpz=FileRef.from_dict(d.get("rpz")), delta=DeltaRef.from_dict(d.get("delta")),
            # Records written before compaction existed had full files with every version.
            base=int(d.get("base") or version),
            chain_length=int(chain.get("length", 0)), chain_bytes=int(chain.get("bytes", 0)),
            full_at=int(d["full_at"]) if d.get("full_at") is not None else None,
            by=str(d.get("by", "")), reason=str(d.get("reason", "")), released=bool(d.get("released", False)),
            build_seconds=float(d.get("build_seconds", 0.0)), publisher=str(d.get("publisher", "")),
            zones=_zones(d.get("zones")),
        )

    @classmethod
    def from_json(cls, raw: str) -> Publication:
        return cls.from_dict(json.loads(raw))


@dataclass(frozen=True)
class Latest:
    """What ``pub:latest`` says: the latest version and its newest full files."""

    version: int
    published_at: str
    expires_at: str
    count: int
    entries_digest: str
    base: int
    snapshot: FileRef
    rpz: FileRef
    delta: DeltaRef | None = None
    previous_version: int | None = None
    #: The latest version's zone layout (see :attr:`Publication.zones`).
    zones: dict[str, Any] | None = None

    @classmethod
    def of(cls, pub: Publication, base: Publication) -> Latest:
        assert base.snapshot is not None
        assert base.rpz is not None
        return cls(version=pub.version, published_at=pub.published_at, expires_at=pub.expires_at,
                   count=pub.count, entries_digest=pub.entries_digest, base=base.version, snapshot=base.snapshot,
                   rpz=base.rpz, delta=pub.delta, previous_version=pub.previous_version, zones=pub.zones)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "published_at": self.published_at, "expires_at": self.expires_at,
            "count": self.count, "entries_digest": self.entries_digest, "base": self.base,
            "snapshot": self.snapshot.to_dict(), "rpz": self.rpz.to_dict(),
            "delta": self.delta.to_dict() if self.delta else None, "previous_version": self.previous_version,
            "zones": dict(self.zones) if self.zones is not None else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Latest:
        version = int(d["version"])
        snapshot = FileRef.from_dict(d.get("snapshot"))
        rpz = FileRef.from_dict(d.get("rpz"))
        if snapshot is None or rpz is None:
            raise ValueError(f"the latest record of version {version} names no full files")
        return cls(
            version=version, published_at=str(d["published_at"]), expires_at=str(d["expires_at"]),
            count=int(d["count"]), entries_digest=_digest_of(d), base=int(d.get("base") or version),
            snapshot=snapshot, rpz=rpz, delta=DeltaRef.from_dict(d.get("delta")),
            previous_version=int(d["previous_version"]) if d.get("previous_version") else None,
            zones=_zones(d.get("zones")),
        )

    @classmethod
    def from_json(cls, raw: str) -> Latest:
        return cls.from_dict(json.loads(raw))


def _digest_of(d: dict[str, Any]) -> str:
    """The list digest of a stored record; records written before feed schema 2
    hold the whole-list sha256 instead, which no rebuilt list matches any more
    (so the next publication is written in full)."""
    return str(d.get("entries_digest") or d.get("entries_sha256") or "")
