"""A feed built in the publisher's file layout and signed with the real minisign code, no server.

For tests of the pull tool that need lists and histories the curation rules
would make slow or impossible to set up (thousands of random changes, names
nested under names, subdomain flags that flip, a manifest naming an older
snapshot and the chain of deltas after it). The layouts follow
``app.publishing``: a snapshot is a one-line head and one entry a line; a
delta lists added and removed entries; the manifest is indented JSON; every
file has a ``.minisig`` whose trusted comment names list, version, file and
expiry. Documents are feed schema 2; ``entries_digest`` is computed here from
its definition (docs/isp-pull.md), not with the client's own code.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field

from client.errors import NotFoundError
from client.minisign import SecretKey, format_trusted_comment
from client.verify import Record, iso

LIST = "worst-of"
ZONE = "blocklist.rpz."
T = "2027-01-15T08:00:00Z"


def rec(value: str, subdomains: bool = False, etype: str = "domain") -> Record:
    return Record(etype, value, subdomains, "csam", T, T)


def lines_of(records: list[Record]) -> list[bytes]:
    return [r.line().encode() for r in sorted(records)]


def entries_digest(lines: list[bytes]) -> str:
    """The feed's ``entries_digest`` of canonical lines (no newlines), as docs/isp-pull.md defines it."""
    chunks, cur = [], []
    for line in lines:
        cur.append(line + b"\n")
        if zlib.crc32(line) % 16 == 0:
            chunks.append(hashlib.sha256(b"".join(cur)).digest())
            cur = []
    if cur:
        chunks.append(hashlib.sha256(b"".join(cur)).digest())
    return hashlib.sha256(b"".join(sorted(chunks))).hexdigest()


@dataclass
class Version:
    number: int
    records: list[Record]
    snapshot_sha256: str | None  # None: published as a delta only
    entries_digest: str


@dataclass
class FeedBuilder:
    key: SecretKey = field(default_factory=SecretKey.generate)
    now: float = 1_800_000_000.0
    files: dict[str, bytes] = field(default_factory=dict)
    versions: list[Version] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ signing

    def sign(self, rel: str, data: bytes, version: int, expires: str) -> bytes:
        fields = {"list": LIST, "version": str(version), "file": rel, "expires": expires}
        return self.key.sign_bytes(data, format_trusted_comment(fields)).text().encode()

    def put(self, rel: str, data: bytes, version: int, expires: str) -> dict[str, object]:
        self.files[rel] = data
        self.files[rel + ".minisig"] = self.sign(rel, data, version, expires)
        return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    # ------------------------------------------------------------ publishing

    def publish(self, records: list[Record], *, full: bool = True, retain: int = 100) -> int:
        """Publish the next version: its delta and, with ``full``, its snapshot and zone file.
        The manifest names the newest full snapshot and the deltas from it (and older ones
        while within ``retain`` versions), newest first, as the service's publisher does."""
        number = (self.versions[-1].number if self.versions else 0) + 1
        published = iso(self.now)
        expires = iso(self.now + 86400)
        lines = lines_of(records)
        digest = entries_digest(lines)
        previous = self.versions[-1] if self.versions else None
        snap_sha = None
        if full or previous is None:
            last_full = next((v for v in reversed(self.versions) if v.snapshot_sha256), None)
            head = {"schema": 2, "list": LIST, "version": number, "published_at": published, "expires_at": expires,
                    "previous_version": last_full.number if last_full else None,
                    "previous_sha256": last_full.snapshot_sha256 if last_full else None,
                    "count": len(lines), "entries_digest": digest}
            snapshot = (json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"entries":[\n'
                        + b",\n".join(lines) + b"\n]}\n")
            snap = self.put(f"snapshots/{number}.json", snapshot, number, expires)
            self.put(f"rpz/{number}.zone", b"; zone\n", number, expires)
            snap_sha = str(snap["sha256"])
        if previous is not None:
            before, after = set(lines_of(previous.records)), set(lines)
            delta = {"schema": 2, "list": LIST, "from": previous.number, "to": number, "published_at": published,
                     "expires_at": expires, "from_sha256": previous.snapshot_sha256, "to_sha256": snap_sha,
                     "from_count": len(previous.records), "to_count": len(lines), "to_entries_digest": digest}
            added, removed = sorted(after - before), sorted(before - after)
            text = (json.dumps(delta, separators=(",", ":"))[:-1].encode()
                    + b',"added":[' + ((b"\n" + b",\n".join(added) + b"\n") if added else b"") + b"]"
                    + b',"removed":[' + ((b"\n" + b",\n".join(removed) + b"\n") if removed else b"") + b"]}\n")
            self.put(f"deltas/{previous.number}/{number}.json", text, number, expires)
        self.versions.append(Version(number, sorted(records), snap_sha, digest))
        self.manifest(retain=retain)
        return number

    def manifest(self, *, retain: int = 100, drop: tuple[str, ...] = ()) -> dict[str, object]:
        """Sign the manifest of the latest version (leaving out the artifacts named in ``drop``)."""
        v = self.versions[-1]
        base = next(w for w in reversed(self.versions) if w.snapshot_sha256)
        expires = iso(self.now + 3600)
        artifacts: list[dict[str, object]] = []
        for kind, rel in (("snapshot", f"snapshots/{base.number}.json"), ("rpz", f"rpz/{base.number}.zone")):
            data = self.files[rel]
            artifacts.append({"kind": kind, "path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                              "size": len(data)})
        lowest = min(v.number - retain, base.number)
        for w in reversed(self.versions):
            rel = f"deltas/{w.number - 1}/{w.number}.json"
            if w.number <= lowest or rel not in self.files:
                break
            data = self.files[rel]
            artifacts.append({"kind": "delta", "path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                              "size": len(data), "from": w.number - 1, "to": w.number})
        artifacts = [a for a in artifacts if a["path"] not in drop]
        body: dict[str, object] = {
            "schema": 2, "list": LIST, "version": v.number, "published_at": iso(self.now),
            "signed_at": iso(self.now), "expires_at": expires, "count": len(v.records),
            "entries_digest": v.entries_digest, "snapshot": f"snapshots/{base.number}.json",
            "rpz": f"rpz/{base.number}.zone", "snapshot_version": base.number, "rpz_zone": ZONE,
            "artifacts": artifacts}
        self.sign_manifest(body)
        return body

    def sign_manifest(self, body: dict[str, object]) -> None:
        data = (json.dumps(body, indent=1) + "\n").encode()
        self.files["manifest.json"] = data
        self.files["manifest.json.minisig"] = self.sign("manifest.json", data, int(str(body["version"])),
                                                        str(body["expires_at"]))

    # ------------------------------------------------------------ the transport interface

    def get(self, rel: str, limit: int) -> bytes:
        self.fetched.append(rel)
        if rel not in self.files:
            raise NotFoundError(f"the feed has no {rel} (404)")
        return bytearray(self.files[rel][: limit + 1])  # as the HTTP transport gives it
