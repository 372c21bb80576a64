"""Verification of the signed feed: manifest, artifacts, snapshots and deltas. No I/O.

The pull tool trusts nothing it downloads until this module has checked it
(docs/isp-pull.md). What must stay true:

* The manifest is accepted only with a valid minisign signature by one of
  the pinned keys, a trusted comment naming ``manifest.json``, its list and
  its version, and an expiry in the future (a replayed old manifest, or a
  frozen feed, is refused once it expires).
* Versions only go up: a manifest older than the held version is a
  rollback; one more than ``max_version_jump`` ahead is refused too, so a
  single forged or mistaken number cannot lock a client out of later
  updates.
* A next signing key is learned only from a manifest whose signature by a
  trusted key verified (its ``next_key`` announcement), and a key is
  retired once a manifest signed by its announced successor is accepted; a
  retired key is never trusted again (see :class:`KeyRing`).
* Every artifact matches the size and sha256 the signed manifest states,
  and carries its own signature naming that file and version.
* A delta applies only to the version and snapshot it was made from; the
  list that results must have the digest (``entries_digest``, see
  :mod:`client.digest`) and count the manifest states. A snapshot's entries
  must have that digest as well.
* The feed's format is schema 2 (``entries_digest``); a schema 1 feed
  (whole-list ``entries_sha256``) is refused with a message that names the
  older pull tool it needs.
* Every entry is checked for a form that is safe to write into resolver and
  proxy configuration files: host names are lower-case LDH names of at least
  two labels, URLs contain no quotes, spaces or control characters. A value
  that could break out of a configuration line never reaches a renderer.

Checks raise :class:`client.errors.RefusedError` with one sentence.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from client.digest import Digest
from client.errors import RefusedError
from client.minisign import MinisignError, PublicKey, Signature, key_id_hex, parse_trusted_comment

#: The feed format this tool reads: 2 since ``entries_digest`` replaced ``entries_sha256``.
SCHEMA = 2
MANIFEST_MAX = 1 << 20
SIGNATURE_MAX = 4096

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$)(?:{_LABEL}\.)+{_LABEL}")
_NUMERIC_TLD = re.compile(r".*\.(?:[0-9]+|0x[0-9a-f]*)")
# Normal-form URLs as the service writes them: percent-encoded, so no quotes,
# backslashes, spaces, '#', '<', '>' or control characters.
_URL = re.compile(r"(https?)://([a-z0-9.-]+)(?::([0-9]{1,5}))?(/[A-Za-z0-9._~!$&'()*+,;=:@/%?-]*)")
_CATEGORY = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ZONE = re.compile(rf"(?:{_LABEL}\.)+")
MAX_URL_LENGTH = 2048


def parse_time(text: object, what: str) -> int:
    """Seconds since the epoch of an ISO 8601 UTC time ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not isinstance(text, str) or not _ISO.fullmatch(text):
        raise RefusedError(f"{what} is not a time of the form YYYY-MM-DDTHH:MM:SSZ")
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise RefusedError(f"{what} is not a valid time") from None


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts)))


def is_domain(value: str) -> bool:
    """A lower-case LDH host name of at least two labels, not ending in a numeric label."""
    return bool(_DOMAIN.fullmatch(value)) and not _NUMERIC_TLD.fullmatch(value)


def is_zone_name(value: str) -> bool:
    """An absolute (dot-terminated) LDH domain name, such as ``blocklist.rpz.``."""
    return len(value) <= 254 and bool(_ZONE.fullmatch(value))


def split_url(value: str) -> tuple[str, str, int | None, str] | None:
    """(scheme, host, port or None, path and query) of a normal-form URL, or None."""
    m = _URL.fullmatch(value)
    if not m or len(value) > MAX_URL_LENGTH or not is_domain(m.group(2)):
        return None
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        return None
    return m.group(1), m.group(2), port, m.group(4)


# ---------------------------------------------------------------- entries


class Record(NamedTuple):
    """One feed entry. Tuples order by (type, value): the feed's canonical order."""

    type: str
    value: str
    subdomains: bool
    category: str
    listed_since: str
    verified_at: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.type, self.value)

    def line(self) -> str:
        """The canonical JSON line (the values are checked to need no escaping)."""
        return (
            f'{{"type":"{self.type}","value":"{self.value}","subdomains":'
            f'{"true" if self.subdomains else "false"},"category":"{self.category}",'
            f'"listed_since":"{self.listed_since}","verified_at":"{self.verified_at}"}}'
        )


ENTRY_KEYS = Record._fields


def make_record(pairs: Sequence[tuple[str, Any]]) -> Record:
    """A checked record from the JSON object's (key, value) pairs in their order."""
    values = dict(pairs)
    etype, value, sub = values["type"], values["value"], values["subdomains"]
    category, since, verified = values["category"], values["listed_since"], values["verified_at"]
    if not isinstance(value, str):
        raise RefusedError("an entry's value is not a string")
    shown = value[:80]
    if etype == "domain":
        if not is_domain(value):
            raise RefusedError(f"the entry {shown!r} is not a valid host name of at least two labels")
    elif etype == "url":
        if split_url(value) is None:
            raise RefusedError(f"the entry {shown!r} is not a URL in normal form")
    else:
        raise RefusedError(f"the entry {shown!r} has an unknown type")
    if not isinstance(sub, bool):
        raise RefusedError(f"the entry {shown!r} has a subdomains flag that is not true or false")
    if not isinstance(category, str) or not _CATEGORY.fullmatch(category):
        raise RefusedError(f"the entry {shown!r} has an invalid category")
    for stamp in (since, verified):
        if not isinstance(stamp, str) or not _ISO.fullmatch(stamp):
            raise RefusedError(f"the entry {shown!r} has an invalid time")
    return Record(etype, value, sub, category, since, verified)


def _object_hook(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) == len(ENTRY_KEYS) and all(k == f for (k, _), f in zip(pairs, ENTRY_KEYS, strict=True)):
        return make_record(pairs)
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            # Two values for one name: refuse rather than guess which one a reader would take.
            raise RefusedError(f"a JSON object has the key {k!r} twice")
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise RefusedError(f"the JSON holds the non-standard number {name}")


def load_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN; entries become :class:`Record`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RefusedError(f"{what} is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_object_hook, parse_constant=_constant)
    except RefusedError as e:
        raise RefusedError(f"{what}: {e.message}") from None
    except (ValueError, RecursionError):
        raise RefusedError(f"{what} is not valid JSON") from None


def entries_digest(records: Iterable[Record]) -> str:
    """The ``entries_digest`` of the records' canonical lines (see :mod:`client.digest`)."""
    return Digest.of_lines([r.line().encode() for r in records]).hexdigest()


@dataclass(frozen=True)
class EntryList:
    """A complete, checked list: records sorted by (type, value), no duplicates."""

    records: tuple[Record, ...]
    digest: str

    @classmethod
    def of(cls, records: Sequence[Record], what: str) -> EntryList:
        check_order(records, what)
        return cls(tuple(records), entries_digest(records))

    def __len__(self) -> int:
        return len(self.records)


def check_order(records: Sequence[Any], what: str) -> None:
    previous: tuple[str, str] | None = None
    for r in records:
        if not isinstance(r, Record):
            raise RefusedError(f"{what} holds an entry that is not in canonical form")
        if previous is not None and r.key <= previous:
            raise RefusedError(
                f"{what} is not in canonical order or repeats {r.value[:80]!r}"
            )
        previous = r.key


# ---------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ArtifactRef:
    kind: str  # snapshot | rpz | delta
    path: str
    sha256: str
    size: int
    from_version: int | None = None
    to_version: int | None = None


@dataclass(frozen=True)
class Manifest:
    list_name: str
    version: int
    published_at: str
    signed_at: str
    expires_at: str
    expires_ts: int
    count: int
    entries_digest: str
    rpz_zone: str
    snapshot: ArtifactRef
    rpz: ArtifactRef
    deltas: tuple[ArtifactRef, ...]
    key_id: str
    # The version of the newest full snapshot and zone file the manifest names
    # (the deltas after it lead to ``version``); None: the snapshot is ``version``'s.
    snapshot_version: int | None = None
    next_key: AnnouncedKey | None = None

    @property
    def full_version(self) -> int:
        return self.version if self.snapshot_version is None else self.snapshot_version


@dataclass(frozen=True)
class AnnouncedKey:
    """A next key as a signed manifest announces it."""

    key: PublicKey
    starts: str

    @property
    def key_id(self) -> str:
        return self.key.id_hex


@dataclass(frozen=True)
class LearnedKey:
    """A key this client trusts because a trusted key announced it."""

    key_id: str
    public_key: str
    announced_by: str
    learned_at: str

    def public(self) -> PublicKey:
        return PublicKey.parse(self.public_key)


@dataclass(frozen=True)
class KeyRing:
    """What the client learned about the programme's keys beyond its pinned
    configuration: keys announced to it, and keys it has retired."""

    learned: tuple[LearnedKey, ...] = ()
    retired: tuple[str, ...] = ()

    def trusted(self, pinned: Sequence[PublicKey]) -> tuple[PublicKey, ...]:
        """The pinned keys that are not retired, then the learned ones."""
        out = [k for k in pinned if k.id_hex not in self.retired]
        ids = {k.id_hex for k in out}
        for lk in self.learned:
            if lk.key_id not in ids and lk.key_id not in self.retired:
                out.append(lk.public())
                ids.add(lk.key_id)
        return tuple(out)

    def after(self, manifest: Manifest, pinned: Sequence[PublicKey], now: float) -> KeyRing:
        """The ring once ``manifest`` (signed by a trusted key, fully checked) is applied.

        The announced next key is learned (replacing any earlier announcement
        by the same signer); a manifest signed by a learned key retires every
        other key except the one it announces in turn."""
        learned = list(self.learned)
        retired = list(self.retired)
        signer = manifest.key_id
        if any(lk.key_id == signer for lk in learned):
            keep = {signer} | ({manifest.next_key.key_id} if manifest.next_key else set())
            for key_id in [k.id_hex for k in pinned] + [lk.key_id for lk in learned]:
                if key_id not in keep and key_id not in retired:
                    retired.append(key_id)
            learned = [lk for lk in learned if lk.key_id in keep]
        nxt = manifest.next_key
        if nxt is not None and nxt.key_id not in retired and nxt.key_id != signer:
            learned = [lk for lk in learned if lk.announced_by != signer or lk.key_id == nxt.key_id]
            if all(lk.key_id != nxt.key_id for lk in learned):
                learned.append(LearnedKey(nxt.key_id, nxt.key.base64(), signer, iso(now)))
        return KeyRing(tuple(learned), tuple(retired))

    def to_dict(self) -> dict[str, Any]:
        return {"learned": [lk.__dict__ for lk in self.learned], "retired": list(self.retired)}

    @classmethod
    def from_dict(cls, doc: Any) -> KeyRing:
        """The ring from its stored form; raises ValueError when it is damaged."""
        if not isinstance(doc, dict) or not isinstance(doc.get("learned"), list) \
                or not isinstance(doc.get("retired"), list):
            raise ValueError("not a key ring")
        learned = []
        for item in doc["learned"]:
            lk = LearnedKey(str(item["key_id"]), str(item["public_key"]), str(item["announced_by"]),
                            str(item["learned_at"]))
            try:
                if lk.public().id_hex != lk.key_id:
                    raise ValueError("a learned key does not match its id")
            except MinisignError as e:
                raise ValueError(str(e)) from None
            learned.append(lk)
        return cls(tuple(learned), tuple(str(k) for k in doc["retired"]))


@dataclass(frozen=True)
class Held:
    """What the client holds: the last version it verified and applied."""

    list_name: str
    version: int
    snapshot_sha256: str | None  # None when the version arrived as a delta only
    entries_digest: str | None  # None: the list held is not known (a state written before feed schema 2)
    count: int


@dataclass(frozen=True)
class TrustPolicy:
    keys: tuple[PublicKey, ...]
    max_version_jump: int
    max_artifact_size: int
    list_name: str | None = None


def check_signature(data: bytes, sig_text: bytes, keys: Sequence[PublicKey], what: str,
                    prehashed: bytes | None = None) -> tuple[dict[str, str], str]:
    """Verify ``sig_text`` over ``data`` with the pinned key it names (``prehashed``: the
    data's BLAKE2b-512, if already computed); returns (trusted comment fields, key id)."""
    try:
        sig = Signature.parse(sig_text.decode("utf-8"))
    except (UnicodeDecodeError, MinisignError) as e:
        detail = e.args[0] if isinstance(e, MinisignError) else "it is not UTF-8"
        raise RefusedError(f"the signature of {what} is malformed: {detail}") from None
    key = next((k for k in keys if k.key_id == sig.key_id), None)
    if key is None:
        pinned = ", ".join(k.id_hex for k in keys)
        raise RefusedError(
            f"{what} is signed by key {key_id_hex(sig.key_id)}, which is not a pinned key ({pinned})"
        )
    try:
        comment = key.verify(sig, prehashed) if prehashed is not None else key.verify_bytes(sig, data)
    except MinisignError as e:
        raise RefusedError(f"the signature of {what} does not verify with key {key.id_hex}: {e.args[0]}") from None
    return parse_trusted_comment(comment), key.id_hex


def schema_error(schema: Any, what: str) -> None:
    """Refuse a document of another feed format, saying which pull tool reads it."""
    if type(schema) is int and schema == SCHEMA:
        return
    if type(schema) is int and schema == 1:
        raise RefusedError(
            f"{what} is in feed schema 1 (whole-list entries_sha256); this blocklist-pull reads schema "
            f"{SCHEMA} (entries_digest): a schema 1 feed needs blocklist-pull 1.x"
        )
    shown = schema if type(schema) is int else repr(str(schema)[:20])
    raise RefusedError(f"{what} has feed schema {shown}; this blocklist-pull reads schema {SCHEMA}"
                       + (": a newer feed needs a newer blocklist-pull" if type(schema) is int and schema > SCHEMA
                          else ""))


def _int(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RefusedError(f"{what} is not a whole number of at least {low}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RefusedError(f"{what} is not a string")
    return value


def _sha(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise RefusedError(f"{what} is not a lower-case hex sha256")
    return value


def _opt_sha(value: Any, what: str) -> str | None:
    return None if value is None else _sha(value, what)


def _artifact(item: Any, version: int, full: int) -> ArtifactRef:
    if not isinstance(item, dict):
        raise RefusedError("the manifest lists an artifact that is not an object")
    kind = item.get("kind")
    path = _str(item.get("path"), "an artifact path")
    sha = _sha(item.get("sha256"), f"the sha256 of {path!r}")
    size = _int(item.get("size"), f"the size of {path!r}")
    if kind == "snapshot":
        if path != f"snapshots/{full}.json":
            raise RefusedError(f"the manifest of version {version} names the snapshot {path!r}")
        return ArtifactRef("snapshot", path, sha, size)
    if kind == "rpz":
        if path != f"rpz/{full}.zone":
            raise RefusedError(f"the manifest of version {version} names the zone file {path!r}")
        return ArtifactRef("rpz", path, sha, size)
    if kind == "delta":
        frm = _int(item.get("from"), "a delta's from version", 1)
        to = _int(item.get("to"), "a delta's to version", 1)
        if path != f"deltas/{frm}/{to}.json" or not frm < to <= version:
            raise RefusedError(f"the manifest lists an inconsistent delta {path!r}")
        return ArtifactRef("delta", path, sha, size, frm, to)
    raise RefusedError(f"the manifest lists an artifact of unknown kind {str(kind)[:40]!r}")


def check_manifest(body: bytes, sig_text: bytes, policy: TrustPolicy, held: Held | None, now: float) -> Manifest:
    """The manifest, if its signature, freshness and version are acceptable."""
    fields, key_id = check_signature(body, sig_text, policy.keys, "the manifest")
    doc = load_json(body, "the manifest")
    if not isinstance(doc, dict):
        raise RefusedError("the manifest is not a JSON object")
    schema_error(doc.get("schema"), "the manifest")
    list_name = _str(doc.get("list"), "the manifest's list name")
    if not _LIST_NAME.fullmatch(list_name):
        raise RefusedError("the manifest's list name is not a plain name")
    version = _int(doc.get("version"), "the manifest's version", 1)
    expires_at = _str(doc.get("expires_at"), "the manifest's expiry")
    expires_ts = parse_time(expires_at, "the manifest's expires_at")
    if fields.get("file") != "manifest.json" or fields.get("version") != str(version) \
            or fields.get("list") != list_name or fields.get("expires") != expires_at:
        raise RefusedError(
            "the manifest's signed comment does not match it (file, list, version or expiry differ)"
        )
    if policy.list_name is not None and list_name != policy.list_name:
        raise RefusedError(f"the feed is for list {list_name!r}, not the configured {policy.list_name!r}")
    if held is not None and list_name != held.list_name:
        raise RefusedError(f"the feed is for list {list_name!r}, but this client holds list {held.list_name!r}")
    if now >= expires_ts:
        ago = _ago(now - expires_ts)
        raise RefusedError(
            f"the manifest of version {version} expired at {expires_at} ({ago} ago): "
            "the feed is frozen or an old manifest is being replayed"
        )
    if held is not None:
        if version < held.version:
            raise RefusedError(
                f"the feed offers version {version}, older than the version {held.version} held: "
                "refusing a rollback"
            )
        if version - held.version > policy.max_version_jump:
            raise RefusedError(
                f"the feed jumps from version {held.version} to {version}, more than max_version_jump "
                f"({policy.max_version_jump}); confirm the new version with the list's operators before raising it"
            )
    published_at = _str(doc.get("published_at"), "the manifest's published_at")
    parse_time(published_at, "the manifest's published_at")
    signed_at = _str(doc.get("signed_at"), "the manifest's signed_at")
    parse_time(signed_at, "the manifest's signed_at")
    rpz_zone = _str(doc.get("rpz_zone"), "the manifest's rpz_zone")
    if not _ZONE.fullmatch(rpz_zone):
        raise RefusedError("the manifest's rpz_zone is not an absolute domain name")
    items = doc.get("artifacts")
    if not isinstance(items, list):
        raise RefusedError("the manifest has no artifact list")
    full = version
    snapshot_version = doc.get("snapshot_version")
    if snapshot_version is not None:
        full = _int(snapshot_version, "the manifest's snapshot_version", 1)
        if full > version:
            raise RefusedError(f"the manifest of version {version} names a snapshot of the later version {full}")
    refs = [_artifact(item, version, full) for item in items]
    for ref in refs:
        if ref.size > policy.max_artifact_size:
            raise RefusedError(
                f"{ref.path} is {ref.size} bytes, more than max_download ({policy.max_artifact_size})"
            )
    snapshots = [r for r in refs if r.kind == "snapshot"]
    zones = [r for r in refs if r.kind == "rpz"]
    if len(snapshots) != 1 or len(zones) != 1:
        raise RefusedError("the manifest must list exactly one snapshot and one zone file")
    if doc.get("snapshot") != snapshots[0].path or doc.get("rpz") != zones[0].path:
        raise RefusedError("the manifest's snapshot or rpz path disagrees with its artifact list")
    if "key_id" in doc and doc["key_id"] != key_id:
        raise RefusedError(f"the manifest names key {str(doc['key_id'])[:20]!r} but is signed by key {key_id}")
    return Manifest(
        list_name=list_name, version=version, published_at=published_at, signed_at=signed_at,
        expires_at=expires_at, expires_ts=expires_ts,
        count=_int(doc.get("count"), "the manifest's count"),
        entries_digest=_sha(doc.get("entries_digest"), "the manifest's entries_digest"),
        rpz_zone=rpz_zone, snapshot=snapshots[0], rpz=zones[0],
        deltas=tuple(r for r in refs if r.kind == "delta"), key_id=key_id,
        snapshot_version=None if snapshot_version is None else full,
        next_key=_next_key(doc.get("next_key"), key_id),
    )


def _next_key(item: Any, signer: str) -> AnnouncedKey | None:
    """The announced next key of a manifest whose signature already verified."""
    if item is None:
        return None
    if not isinstance(item, dict):
        raise RefusedError("the manifest's next_key is not an object")
    text = _str(item.get("public_key"), "the next key's public_key")
    try:
        key = PublicKey.parse(text)
    except MinisignError as e:
        raise RefusedError(f"the manifest's next key is not a minisign public key: {e.args[0]}") from None
    if item.get("key_id") != key.id_hex:
        raise RefusedError("the manifest's next_key names a key id that differs from its public key")
    if key.id_hex == signer:
        raise RefusedError("the manifest announces its own signing key as the next key")
    starts = _str(item.get("from"), "the next key's from time")
    parse_time(starts, "the next key's from time")
    return AnnouncedKey(key, starts)


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


# ---------------------------------------------------------------- artifacts


def check_artifact(data: bytes, sig_text: bytes, ref: ArtifactRef, manifest: Manifest,
                   keys: Sequence[PublicKey], *, sha256: str | None = None, prehashed: bytes | None = None) -> None:
    """The bytes are exactly what the manifest states, and signed as that file (``sha256``
    and ``prehashed``: the data's sha256 and BLAKE2b-512, if already computed)."""
    if len(data) != ref.size:
        raise RefusedError(f"{ref.path} is {len(data)} bytes, but the manifest states {ref.size}")
    if (sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()) != ref.sha256:
        raise RefusedError(f"{ref.path} does not match the sha256 in the manifest: it was altered or damaged")
    fields, _ = check_signature(data, sig_text, keys, ref.path, prehashed)
    version = ref.to_version if ref.kind == "delta" else manifest.full_version
    if fields.get("file") != ref.path or fields.get("version") != str(version) \
            or fields.get("list") != manifest.list_name:
        raise RefusedError(f"the signed comment of {ref.path} names another file, version or list")


def parse_snapshot(data: bytes, manifest: Manifest) -> tuple[EntryList, str]:
    """(the list, its published_at) from a snapshot already checked against the manifest."""
    what = manifest.snapshot.path
    doc = load_json(data, what)
    if not isinstance(doc, dict):
        raise RefusedError(f"{what} is not a JSON object")
    schema_error(doc.get("schema"), what)
    if doc.get("list") != manifest.list_name or doc.get("version") != manifest.full_version:
        raise RefusedError(f"{what} is for another list or version than the manifest")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise RefusedError(f"{what} has no entry list")
    listed = EntryList.of(entries, what)
    # A snapshot older than the manifest is checked against itself; the deltas after it
    # must then lead to the manifest's count and entries_digest.
    count = manifest.count if manifest.full_version == manifest.version else doc.get("count")
    digest = manifest.entries_digest if manifest.full_version == manifest.version else doc.get("entries_digest")
    if doc.get("count") != len(listed) or len(listed) != count:
        raise RefusedError(f"{what} holds {len(listed)} entries, but states {doc.get('count')!r} "
                           f"and the manifest {manifest.count}")
    if listed.digest != doc.get("entries_digest") or listed.digest != digest:
        raise RefusedError(f"the entries of {what} do not match the entries_digest in the manifest")
    published_at = _str(doc.get("published_at"), f"the published_at of {what}")
    parse_time(published_at, f"the published_at of {what}")
    return listed, published_at


@dataclass(frozen=True)
class Delta:
    from_version: int
    to_version: int
    from_sha256: str | None  # None when that version was published as a delta only
    to_sha256: str | None
    from_count: int
    to_count: int
    to_entries_digest: str
    published_at: str
    added: tuple[Record, ...]
    removed: tuple[Record, ...]


def parse_delta(data: bytes, ref: ArtifactRef, manifest: Manifest) -> Delta:
    what = ref.path
    doc = load_json(data, what)
    if not isinstance(doc, dict):
        raise RefusedError(f"{what} is not a JSON object")
    schema_error(doc.get("schema"), what)
    if doc.get("list") != manifest.list_name:
        raise RefusedError(f"{what} is for another list than the manifest")
    added, removed = doc.get("added"), doc.get("removed")
    if not isinstance(added, list) or not isinstance(removed, list):
        raise RefusedError(f"{what} has no added or removed list")
    for group in (added, removed):
        for r in group:
            if not isinstance(r, Record):
                raise RefusedError(f"{what} holds an entry that is not in canonical form")
    published_at = _str(doc.get("published_at"), f"the published_at of {what}")
    parse_time(published_at, f"the published_at of {what}")
    return Delta(
        from_version=_int(doc.get("from"), f"the from version of {what}", 1),
        to_version=_int(doc.get("to"), f"the to version of {what}", 1),
        from_sha256=_opt_sha(doc.get("from_sha256"), f"the from_sha256 of {what}"),
        to_sha256=_opt_sha(doc.get("to_sha256"), f"the to_sha256 of {what}"),
        from_count=_int(doc.get("from_count"), f"the from_count of {what}"),
        to_count=_int(doc.get("to_count"), f"the to_count of {what}"),
        to_entries_digest=_sha(doc.get("to_entries_digest"), f"the to_entries_digest of {what}"),
        published_at=published_at, added=tuple(added), removed=tuple(removed),
    )


# ---------------------------------------------------------------- plan


def delta_chain(manifest: Manifest, held_version: int) -> list[ArtifactRef] | None:
    """The listed deltas leading from ``held_version`` to the manifest's version, if complete."""
    by_from = {d.from_version: d for d in manifest.deltas}
    chain: list[ArtifactRef] = []
    current = held_version
    while current < manifest.version:
        step = by_from.get(current)
        if step is None or step.to_version is None:
            return None
        chain.append(step)
        current = step.to_version
    return chain if current == manifest.version else None


def plan(manifest: Manifest, held: Held | None, have_entries: bool) -> list[ArtifactRef]:
    """What to download: nothing, a chain of deltas from the held version, or the
    snapshot followed by the chain of deltas from its version to the manifest's."""
    full = [manifest.snapshot, *(delta_chain(manifest, manifest.full_version) or [])]
    if manifest.full_version != manifest.version and len(full) == 1:
        raise RefusedError(
            f"the manifest names the snapshot of version {manifest.full_version} but no unbroken chain "
            f"of deltas from it to version {manifest.version}"
        )
    if held is None or not have_entries:
        return full
    if manifest.version == held.version:
        if manifest.entries_digest == held.entries_digest and manifest.count == held.count:
            return []
        return full
    chain = delta_chain(manifest, held.version)
    if chain and sum(d.size for d in chain) < sum(r.size for r in full):
        return chain
    return full
