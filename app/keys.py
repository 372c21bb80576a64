"""The programme's signing keys: which key signs, which key is announced next.

The store records the programme's *public* keys, so every host (and
``blocklist keys show``) names the same key; secret keys live only in 0600
files on publisher hosts. What must stay true:

* A programme has exactly one current key. Only ``blocklist keys init`` and
  the first start of ``blocklist serve`` record the first one, and neither
  ever replaces a recorded key or overwrites a key file.
* A publisher signs only with the key the store names as current (see
  :meth:`app.publishing.Publisher.signing_key`); a host with any other key
  refuses to sign.
* Rotation has no flag day: ``keys rotate`` makes the next key and records
  it as announced from a time at least the overlap ahead; every manifest
  signed by the current key carries the announcement, so pull clients learn
  the next key from a signature they already trust. ``keys rotate
  --complete`` makes the announced key current (not before that time unless
  told to) and retires the old one.
* Every change to the record is one compare-and-set with its audit record.

Key files on a publisher host: the current key at ``BLOCKLIST_SIGNING_KEY_FILE``,
the announced next key at ``<that>.next``, retired keys at
``<that>.retired-<key id>``; each with a ``.pub`` file beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app import audit
from app.clock import Clock, system_clock
from app.domain import Actor, iso
from app.errors import BlocklistError, ConflictError, NotFoundError, StoreError
from app.signing import PublicKey, SecretKey, create_key, load_key, public_key_path
from app.store import Store, Txn

#: Default announcement period of a next key (BLOCKLIST_KEY_ROTATION_OVERLAP).
DEFAULT_OVERLAP = 7 * 86400


def next_key_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".next")


def retired_key_path(key_file: Path, key_id: str) -> Path:
    return key_file.with_name(f"{key_file.name}.retired-{key_id}")


@dataclass(frozen=True)
class KeyInfo:
    """A public key as the programme records and announces it."""

    key_id: str  # 16 upper-case hex digits, as minisign prints it
    public_key: str  # the base64 line of the minisign public key
    created_at: str

    @classmethod
    def of(cls, key: PublicKey, created_at: str) -> KeyInfo:
        return cls(key.id_hex, key.base64(), created_at)

    def public(self) -> PublicKey:
        return PublicKey.parse(self.public_key)

    def to_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "public_key": self.public_key, "created_at": self.created_at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyInfo:
        return cls(str(d["key_id"]), str(d["public_key"]), str(d["created_at"]))


@dataclass(frozen=True)
class ProgrammeKeys:
    """The store's record: the current key, the announced next key and when it
    takes over, and the retired keys (newest last)."""

    current: KeyInfo
    next: KeyInfo | None = None
    next_from: str | None = None
    next_from_ts: int | None = None
    retired: tuple[KeyInfo, ...] = ()

    def to_json(self) -> str:
        return json.dumps({
            "current": self.current.to_dict(),
            "next": self.next.to_dict() if self.next else None,
            "next_from": self.next_from, "next_from_ts": self.next_from_ts,
            "retired": [k.to_dict() for k in self.retired],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> ProgrammeKeys:
        try:
            d = json.loads(raw)
            return cls(
                current=KeyInfo.from_dict(d["current"]),
                next=KeyInfo.from_dict(d["next"]) if d.get("next") else None,
                next_from=d.get("next_from"), next_from_ts=d.get("next_from_ts"),
                retired=tuple(KeyInfo.from_dict(k) for k in d.get("retired", [])),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            raise StoreError("the programme's key record in Redis is damaged; restore it from a backup") from None

    def announcement(self) -> dict[str, str] | None:
        """The manifest's ``next_key`` field, while a next key is announced."""
        if self.next is None:
            return None
        return {"key_id": self.next.key_id, "public_key": self.next.public_key, "from": self.next_from or ""}


class Keyring:
    """The programme key record in the store, and this host's key files."""

    def __init__(self, store: Store, key_file: Path, clock: Clock = system_clock) -> None:
        self.store = store
        self.key_file = key_file
        self.clock = clock

    # ------------------------------------------------------------------ reads

    def record(self) -> ProgrammeKeys | None:
        raw = self.store.programme_keys.raw()
        return ProgrammeKeys.from_json(raw) if raw else None

    def require(self) -> ProgrammeKeys:
        rec = self.record()
        if rec is None:
            raise NotFoundError(
                "the store names no programme signing key: run `blocklist keys init` on the publisher host"
            )
        return rec

    def local_key(self, key_id: str) -> SecretKey | None:
        """This host's secret key with ``key_id``: the current key file, or the
        next one (a rotation completed elsewhere before the files were moved)."""
        for path in (self.key_file, next_key_path(self.key_file)):
            if not path.exists():
                continue
            key = load_key(path)
            if key.public.id_hex == key_id:
                return key
        return None

    # ------------------------------------------------------------------ changes

    def _write(self, actor: Actor, action: str, expect: str | None, new: ProgrammeKeys,
               before: dict[str, Any] | None, after: dict[str, Any], reason: str) -> None:
        def step(txn: Txn) -> None:
            head = audit.head(self.store)
            self.store.programme_keys.put(txn, expect, new.to_json())
            audit.add(txn, self.store, head, actor=actor, action=action, target="signing-key",
                      before=before, after=after, reason=reason, ts=self.clock())

        def keys_moved() -> None:
            if self.store.programme_keys.raw() != expect:
                raise ConflictError("the programme's keys changed meanwhile; look again and retry") from None

        self.store.transact(step, on_conflict=keys_moved)

    def init(self, actor: Actor, reason: str = "") -> tuple[ProgrammeKeys, bool]:
        """Record this host's key as the programme's first key, making the key
        file if there is none. Returns (record, whether a key was made)."""
        existing = self.store.programme_keys.raw()
        if existing is not None:
            cur = ProgrammeKeys.from_json(existing).current
            raise ConflictError(
                f"the store already names programme key {cur.key_id}; keys init never makes a second key "
                "(to change keys, use blocklist keys rotate)"
            )
        made = not self.key_file.exists()
        key = create_key(self.key_file) if made else load_key(self.key_file)
        rec = ProgrammeKeys(current=KeyInfo.of(key.public, iso(self.clock()) or ""))
        try:
            self._write(actor, "keys.init", None, rec, None, {"key_id": rec.current.key_id, "made": made}, reason)
        except ConflictError:
            if made:  # someone else recorded a key meanwhile: ours was never used
                self.key_file.unlink(missing_ok=True)
                public_key_path(self.key_file).unlink(missing_ok=True)
            raise
        return rec, made

    def rotate(self, actor: Actor, overlap: int, reason: str = "") -> ProgrammeKeys:
        """Make the next key (in ``<key file>.next``) and announce it from ``now + overlap``."""
        raw = self.store.programme_keys.raw()
        rec = self.require()
        if rec.next is not None:
            raise ConflictError(
                f"key {rec.next.key_id} is already announced as the next key (from {rec.next_from}); "
                "finish with blocklist keys rotate --complete"
            )
        if not self.key_file.exists() or load_key(self.key_file).public.id_hex != rec.current.key_id:
            raise ConflictError(
                f"{self.key_file} does not hold the programme's current key {rec.current.key_id}: "
                "run keys rotate on the publisher host"
            )
        path = next_key_path(self.key_file)
        if path.exists():
            raise ConflictError(f"{path} already exists; move it away first (it is not an announced key)")
        key = create_key(path)
        now = self.clock()
        starts = int(now + overlap)
        new = replace(rec, next=KeyInfo.of(key.public, iso(now) or ""), next_from=iso(starts), next_from_ts=starts)
        try:
            self._write(actor, "keys.rotate", raw, new, {"key_id": rec.current.key_id},
                        {"next_key_id": key.public.id_hex, "from": new.next_from}, reason)
        except ConflictError:
            path.unlink(missing_ok=True)
            public_key_path(path).unlink(missing_ok=True)
            raise
        return new

    def complete(self, actor: Actor, *, early: bool = False, reason: str = "") -> ProgrammeKeys:
        """Make the announced next key current and retire the current one."""
        raw = self.store.programme_keys.raw()
        rec = self.require()
        if rec.next is None:
            raise NotFoundError("no next key is announced: start a rotation with blocklist keys rotate")
        if not early and rec.next_from_ts is not None and self.clock() < rec.next_from_ts:
            raise ConflictError(
                f"the announcement of key {rec.next.key_id} lasts until {rec.next_from}: clients that pull "
                "rarely may not have learned it yet (complete then, or give --now to complete early)"
            )
        nxt_path = next_key_path(self.key_file)
        if not nxt_path.exists():
            raise ConflictError(f"the announced key {rec.next.key_id} is not in {nxt_path}: "
                                "complete the rotation on the publisher host that started it")
        try:
            nxt = load_key(nxt_path)
        except BlocklistError as e:
            raise ConflictError(f"cannot use the next key: {e.message}") from None
        if nxt.public.id_hex != rec.next.key_id:
            raise ConflictError(f"{nxt_path} holds key {nxt.public.id_hex}, not the announced {rec.next.key_id}")
        new = ProgrammeKeys(current=rec.next, retired=(*rec.retired, rec.current))
        self._write(actor, "keys.complete", raw, new, {"key_id": rec.current.key_id},
                    {"key_id": rec.next.key_id, "retired": rec.current.key_id}, reason)
        # The store names the new key first: a publisher finds it in the
        # .next file until the files are moved (see local_key).
        old_id = rec.current.key_id
        retired = retired_key_path(self.key_file, old_id)
        os.replace(self.key_file, retired)
        if public_key_path(self.key_file).exists():
            os.replace(public_key_path(self.key_file), public_key_path(retired))
        os.replace(nxt_path, self.key_file)
        public_key_path(self.key_file).write_text(nxt.public.text())
        public_key_path(nxt_path).unlink(missing_ok=True)
        return new
