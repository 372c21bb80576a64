"""Publication: build, check, sign, verify and store one version of the list.

What must stay true:

* Version numbers only go up and are never reused: the next version is
  ``max(latest in Redis, HIGHWATER on disk) + 1``.
* A publication is all or nothing. Files are built in a staging directory,
  signed, verified, moved into place, the high-water mark is written, and
  only then one atomic Redis step (compare-and-set on the latest version
  and on our lock) makes the version visible, consumes the change feed and
  appends the audit record. A publisher killed at any point leaves the
  previous version served; the next run publishes cleanly.
* Only one publisher acts at a time (a Redis lock with expiry, extended
  while working); a publisher that lost its lock cannot commit.
* The guard holds a publication that removes or adds more than the policy
  allows, and any that would list an allowlisted name, until an admin
  releases it.
* Cost follows the change, not the list: the publisher keeps the previous
  version's sorted lines in memory (or reads them from its snapshot) and
  splices in the changed entries named by the change feed.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app import audit
from app.artifacts import ArtifactStore
from app.clock import Clock, system_clock
from app.config import Settings
from app.curation import Curation, Policy
from app.domain import SYSTEM, Actor, Entry, EntryType, Status, iso
from app.errors import (
    BlocklistError,
    ConflictError,
    NotFoundError,
    PublicationError,
    RetryableConflictError,
    ValidationError,
)
from app.rpz import FoldPolicy, Layout, SoaParams, fold_due, fragment, next_layout
from app.signing import SecretKey, load_key
from app.store import Store, Txn
from client.minisign import Prehasher, Signature, format_trusted_comment

log = logging.getLogger("blocklist.publisher")

SCHEMA = 1
LOCK_TTL_MS = 120_000
#: /readyz counts a publisher as present for this long after it last reported.
SIGNER_REPORT_TTL = 300
_PREFIX_D = b'{"type":"domain","value":"'
_PREFIX_U = b'{"type":"url","value":"'


class _FeedFields(msgspec.Struct):
    """The fields of a stored entry record that its feed line needs (see Entry.to_json)."""

    v: str
    t: str
    s: int = 0
    c: str = ""
    at: int = 0
    ls: int | None = None
    va: int | None = None


_FEED_DECODER = msgspec.json.Decoder(_FeedFields)


def line_key(line: bytes) -> str:
    """The sort/identity key of a snapshot line (``d:<value>`` or ``u:<value>``)."""
    if line.startswith(_PREFIX_D):
        start = len(_PREFIX_D)
        return "d:" + line[start : line.index(b'"', start)].decode()
    start = len(_PREFIX_U)
    return "u:" + line[start : line.index(b'"', start)].decode()


def zone_fragment_of(line: bytes) -> bytes:
    if not line.startswith(_PREFIX_D):
        return b""
    start = len(_PREFIX_D)
    end = line.index(b'"', start)
    return fragment(line[start:end].decode(), line.startswith(b'"subdomains":true', end + 2)).encode()


@dataclass
class ListState:
    """A published version's entries, sorted by key, with their zone lines.

    Kept as bytes: a million-entry version is written, hashed and signed as
    a few large buffers, and encoding it again on every publication would
    cost more than the change itself.
    """

    version: int
    lines: list[bytes]
    zone: list[bytes]
    snapshot_sha256: str | None

    @property
    def count(self) -> int:
        return len(self.lines)

    def find(self, key: str) -> int:
        return bisect.bisect_left(self.lines, key, key=line_key)


@dataclass
class Change:
    key: str
    old: bytes | None
    new: bytes | None


@dataclass
class Diff:
    """What a publication changes.

    ``changes`` (sorted by key) is kept when the new list is spliced from the
    previous one; a full rebuild from nothing only needs the lines it adds.
    """

    changes: list[Change]
    added: int = 0
    removed: int = 0
    changed: int = 0
    all_new: list[bytes] | None = None

    @classmethod
    def of(cls, changes: list[Change]) -> Diff:
        d = cls(changes=[c for c in changes if c.old != c.new])
        for c in d.changes:
            if c.old is None:
                d.added += 1
            elif c.new is None:
                d.removed += 1
            else:
                d.changed += 1
        return d

    @classmethod
    def everything_new(cls, lines: list[bytes]) -> Diff:
        return cls(changes=[], added=len(lines), all_new=lines)

    @property
    def empty(self) -> bool:
        return not self.changes and not self.all_new

    def summary(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}

    def sample(self, n: int = 10) -> dict[str, list[str]]:
        if self.all_new is not None:
            return {"added": [line_key(x)[2:] for x in self.all_new[:n]], "removed": []}
        added = [c.key[2:] for c in self.changes if c.old is None][:n]
        removed = [c.key[2:] for c in self.changes if c.new is None][:n]
        return {"added": added, "removed": removed}

    def new_lines(self) -> list[bytes]:
        """Lines of entries added or changed (the delta's "added")."""
        if self.all_new is not None:
            return self.all_new
        return [c.new for c in self.changes if c.new is not None]

    def old_lines(self) -> list[bytes]:
        """Previous lines of entries removed or changed (the delta's "removed")."""
        return [c.old for c in self.changes if c.old is not None]


@dataclass
class Outcome:
    status: str  # published | unchanged | held | refreshed | busy
    version: int | None = None
    message: str = ""
    diff: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "version": self.version, "message": self.message,
                **({"changes": self.diff} if self.diff else {})}


def guard_reasons(diff: Diff, previous_count: int, policy: Policy) -> list[str]:
    reasons: list[str] = []
    if previous_count == 0:
        if diff.added > policy.guard_add_max:
            reasons.append(f"adds {diff.added} entries, more than {policy.guard_add_max}")
        return reasons
    significant = diff.added + diff.removed >= policy.guard_min_changes
    removed_pct = 100.0 * diff.removed / previous_count
    added_pct = 100.0 * diff.added / previous_count
    if significant and removed_pct > policy.guard_remove_pct:
        reasons.append(
            f"removes {diff.removed} of {previous_count} entries ({removed_pct:.1f} %, "
            f"more than {policy.guard_remove_pct:g} %)"
        )
    if significant and added_pct > policy.guard_add_pct:
        reasons.append(
            f"adds {diff.added} entries to {previous_count} ({added_pct:.1f} %, more than {policy.guard_add_pct:g} %)"
        )
    if diff.added > policy.guard_add_max:
        reasons.append(f"adds {diff.added} entries, more than {policy.guard_add_max}")
    return reasons


class Publisher:
    """Publishes versions. One instance per worker process keeps the last
    published list in memory between runs."""

    def __init__(self, store: Store, settings: Settings, curation: Curation,
                 clock: Clock = system_clock, key: SecretKey | None = None) -> None:
        self.store = store
        self.settings = settings
        self.curation = curation
        self.clock = clock
        self.artifacts = ArtifactStore(settings.artifact_dir)
        self._key = key
        self._reminded_at = 0.0
        self._state: ListState | None = None
        self.soa = SoaParams(
            zone=settings.rpz_zone, ttl=settings.rpz_ttl, refresh=settings.rpz_soa_refresh,
            retry=settings.rpz_soa_retry, expire=settings.rpz_soa_expire, minimum=settings.rpz_ttl,
            ns=settings.rpz_ns,
        )

    @property
    def key(self) -> SecretKey:
        if self._key is None:
            self._key = load_key(self.settings.signing_key_file)
        return self._key

    def signing_key(self) -> SecretKey:
        """The key to sign with: this host's copy of the key the store names as
        the programme's current key. Any other key is refused, so a stray
        publisher with a key of its own can never sign a version."""
        from app.keys import Keyring

        ring = Keyring(self.store, self.settings.signing_key_file, self.clock)
        rec = ring.record()
        if rec is None:
            raise PublicationError(
                "the store names no programme signing key: run `blocklist keys init` on the publisher host"
            )
        want = rec.current.key_id
        if self._key is not None and self._key.public.id_hex == want:
            return self._key
        key = ring.local_key(want)
        if key is None:
            mine = self._key.public.id_hex if self._key is not None else "none"
            raise PublicationError(
                f"this publisher's signing key ({mine}, {self.settings.signing_key_file}) is not the programme's "
                f"current key {want}; refusing to sign (install the programme's key file on this host)"
            )
        if self._key is not None:
            log.warning("signing key changed from %s to the programme's current key %s",
                        self._key.public.id_hex, want)
        self._key = key
        return key

    def check_key(self) -> bool:
        """Report to /readyz whether this publisher can sign; True if it can."""
        try:
            key = self.signing_key()
        except BlocklistError as e:
            log.error("cannot sign: %s", e.message)
            mine = self._key.public.id_hex if self._key is not None else ""
            self.store.signer_report(mine, SIGNER_REPORT_TTL, problem=e.message)
            return False
        self.store.signer_report(key.public.id_hex, SIGNER_REPORT_TTL)
        self._remind_rotation()
        return True

    def _remind_rotation(self) -> None:
        """Once an hour, say that an announced key may take over and is waiting for the operator."""
        from app.keys import ProgrammeKeys

        raw = self.store.keys_raw()
        rec = ProgrammeKeys.from_json(raw) if raw else None
        now = self.clock()
        if rec is None or rec.next is None or rec.next_from_ts is None or now < rec.next_from_ts:
            return
        if now - self._reminded_at >= 3600:
            self._reminded_at = now
            log.warning("the announced key %s may sign since %s: run `blocklist keys rotate --complete` "
                        "on the publisher host", rec.next.key_id, rec.next_from)

    def _keys_changed(self, body: str | None) -> bool:
        """The manifest in the store was signed by another key, or announces
        another next key, than the store now names: re-sign it at once."""
        if body is None:
            return False
        try:
            doc = json.loads(body)
        except ValueError:
            return True
        return bool(doc.get("key_id") != self.key.public.id_hex or doc.get("next_key") != self._key_announcement())

    def _key_announcement(self) -> dict[str, str] | None:
        """The next key, announced by the current key's signature over the manifest."""
        from app.keys import ProgrammeKeys

        raw = self.store.keys_raw()
        return ProgrammeKeys.from_json(raw).announcement() if raw else None

    # ------------------------------------------------------------------ reads

    def latest(self) -> dict[str, Any] | None:
        raw = self.store.pub_latest_raw()
        return json.loads(raw) if raw else None

    def version_meta(self, version: int) -> dict[str, Any] | None:
        raw = self.store.pub_version_raw(version)
        return json.loads(raw) if raw else None

    def versions(self, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        metas = []
        for n in self.store.pub_version_numbers(limit, before):
            m = self.version_meta(n)
            if m:
                metas.append(m)
        return metas

    def held(self) -> dict[str, Any] | None:
        raw = self.store.pub_held_raw()
        return json.loads(raw) if raw else None

    def manifest(self) -> tuple[str, str] | None:
        m = self.store.pub_manifest()
        return None if m is None else (m[0], m[1])

    # ------------------------------------------------------------------ lock

    @contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[str | None]:
        """Hold the publisher lock (yields its token), or yield None if busy."""
        token = secrets.token_hex(16)
        deadline = time.monotonic() + wait
        while not self.store.pub_lock_acquire(token, LOCK_TTL_MS):
            if time.monotonic() >= deadline:
                yield None
                return
            time.sleep(0.1)
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(LOCK_TTL_MS / 4000):
                if not self.store.pub_lock_extend(token, LOCK_TTL_MS):
                    log.error("lost the publisher lock")
                    return

        t = threading.Thread(target=heartbeat, name="publisher-lock", daemon=True)
        t.start()
        try:
            yield token
        finally:
            stop.set()
            t.join()
            self.store.pub_lock_release(token)

    # ------------------------------------------------------------------ state

    def _load_state(self, latest: dict[str, Any] | None) -> ListState:
        if latest is None:
            return ListState(version=0, lines=[], zone=[], snapshot_sha256=None)
        v = int(latest["version"])
        if self._state is not None and self._state.version == v:
            return self._state
        rel = f"snapshots/{v}.json"
        data = self.artifacts.read(rel)
        if hashlib.sha256(data).hexdigest() != latest["snapshot"]["sha256"]:
            raise PublicationError(f"{rel} does not match its recorded sha256; refusing to build on it")
        start = data.index(b'"entries":[\n') + len(b'"entries":[\n')
        end = data.rindex(b"\n]}")
        body = data[start:end]
        lines = body.split(b",\n") if body else []
        zone = [zone_fragment_of(ln) for ln in lines]
        self._state = ListState(version=v, lines=lines, zone=zone, snapshot_sha256=latest["snapshot"]["sha256"])
        return self._state

    def _full_state(self) -> tuple[list[bytes], list[bytes]]:
        """Every active entry, from Redis, sorted (the path without a previous version).

        The hot loop of a full rebuild: a million records are decoded with a
        typed msgspec decoder into just the fields the feed needs, formatted
        exactly like :meth:`Entry.feed_line`, and sorted with tuple fast paths.
        """
        decode = _FEED_DECODER.decode
        lines: list[bytes] = []
        frags: list[bytes] = []
        urls: list[bytes] = []
        add_line, add_frag, add_url = lines.append, frags.append, urls.append
        marker = '"st":"active"'
        gc_was = gc.isenabled()
        gc.disable()  # a million small objects: the cyclic GC only costs time here
        try:
            for raw in self.store.iter_bucket_raw():
                if marker not in raw:
                    continue
                e = decode(raw)
                at = e.at
                ls = at if e.ls is None else e.ls
                va = at if e.va is None else e.va
                v = e.v
                if e.t == "d":
                    sub = e.s == 1
                    add_line(
                        f'{{"type":"domain","value":"{v}","subdomains":{"true" if sub else "false"},'
                        f'"category":"{e.c}","listed_since":"{iso(ls)}","verified_at":"{iso(va)}"}}'.encode()
                    )
                    add_frag(fragment(v, sub).encode())
                else:
                    add_url(
                        f'{{"type":"url","value":"{v}","subdomains":false,'
                        f'"category":"{e.c}","listed_since":"{iso(ls)}","verified_at":"{iso(va)}"}}'.encode()
                    )
            # Domain lines, and their zone lines, each sort like their values:
            # '"' ends a value in a line and ' ' in a zone line, and both sort
            # before every character a domain may hold. So two plain string
            # sorts keep them aligned. URL values may hold '!', which sorts
            # before '"', so URLs are sorted by their key.
            lines.sort()
            frags.sort()
            urls.sort(key=line_key)
            lines.extend(urls)
            frags.extend([b""] * len(urls))
            return lines, frags
        finally:
            if gc_was:
                gc.enable()

    def _changes_from_feed(self, state: ListState, ids: list[int]) -> Diff:
        unique = sorted(set(ids))
        changes: dict[str, Change] = {}
        for start in range(0, len(unique), 5000):
            chunk = unique[start : start + 5000]
            for raw in self.store.entries_raw(chunk):
                if raw is None:
                    continue
                e = Entry.from_json(raw)
                new = e.feed_line().encode() if e.status is Status.ACTIVE else None
                pos = state.find(e.key)
                old = state.lines[pos] if pos < state.count and line_key(state.lines[pos]) == e.key else None
                changes[e.key] = Change(e.key, old, new)
        return Diff.of(sorted(changes.values(), key=lambda c: c.key))

    @staticmethod
    def _diff_lists(old: list[bytes], new: list[bytes]) -> Diff:
        if not old:
            return Diff.everything_new(new)
        if old == new:
            return Diff(changes=[])
        changes: list[Change] = []
        i = j = 0
        old_keys = [line_key(x) for x in old]
        new_keys = [line_key(x) for x in new]
        while i < len(old) or j < len(new):
            if j >= len(new) or (i < len(old) and old_keys[i] < new_keys[j]):
                changes.append(Change(old_keys[i], old[i], None))
                i += 1
            elif i >= len(old) or new_keys[j] < old_keys[i]:
                changes.append(Change(new_keys[j], None, new[j]))
                j += 1
            else:
                if old[i] != new[j]:
                    changes.append(Change(old_keys[i], old[i], new[j]))
                i += 1
                j += 1
        return Diff.of(changes)

    @staticmethod
    def _splice(state: ListState, diff: Diff) -> tuple[list[bytes], list[bytes]]:
        lines: list[bytes] = []
        zone: list[bytes] = []
        prev = 0
        for c in diff.changes:
            pos = state.find(c.key)
            lines.extend(state.lines[prev:pos])
            zone.extend(state.zone[prev:pos])
            if c.new is not None:
                lines.append(c.new)
                zone.append(zone_fragment_of(c.new))
            prev = pos + (1 if c.old is not None else 0)
        lines.extend(state.lines[prev:])
        zone.extend(state.zone[prev:])
        return lines, zone

    # ------------------------------------------------------------------ safety

    def _safety_problems(self, diff: Diff, lines: list[bytes]) -> list[str]:
        """Defence in depth: no entry that the rules refuse may be published,
        whatever path it took into the active set."""
        rules = self.curation.rules()
        problems: list[str] = []
        # Every entry was checked when it was submitted and approved; here the
        # changed ones are checked again in full (cheap: few), and the whole
        # list against the allowlist below (cheap: the allowlist is small).
        for c in diff.changes:
            if c.new is None:
                continue
            kind, value = c.key[0], c.key[2:]
            try:
                rules.check(EntryType.DOMAIN if kind == "d" else EntryType.URL, value)
            except BlocklistError as e:
                problems.append(e.message)
        # Parents of allowlisted names and the names themselves, against the whole list.
        keyed = ListState(0, lines, [], None)
        for item in rules.allow.values():
            for name in [item.domain, *rules_parents(item.domain)]:
                pos = keyed.find("d:" + name)
                if pos < len(lines) and line_key(lines[pos]) == "d:" + name:
                    problems.append(f"{name} is listed but conflicts with allowlisted {item.domain}")
        return problems[:20]

    # ------------------------------------------------------------------ publish

    def publish(self, *, actor: Actor = SYSTEM, reason: str = "", force: bool = False,
                wait_lock: float = 0.0, full: bool = False) -> Outcome:
        with self.lock(wait=wait_lock) as token:
            if token is None:
                return Outcome("busy", message="another publisher is working; try again shortly")
            return self._publish_locked(token, actor=actor, reason=reason, force=force, full=full)

    def _publish_locked(self, token: str, *, actor: Actor, reason: str, force: bool,
                        full: bool) -> Outcome:
        t0 = time.perf_counter()
        self._key = self.signing_key()
        timings: dict[str, float] = {}
        self.artifacts.clean_staging()
        latest = self.latest()
        highwater = max(self.artifacts.highwater(), int(latest["version"]) if latest else 0)
        # Read the change feed's length first: changes made after this point
        # stay in the feed for the next run, whatever this run reads.
        feed_len = self.store.dirty_count()
        previous = None
        if latest is not None and not full and int(latest["version"]) == highwater:
            try:
                previous = self._load_state(latest)
            except (BlocklistError, OSError, ValueError) as e:
                log.warning("rebuilding from Redis: cannot use version %s: %s", latest["version"], e)
        if previous is not None:
            diff = self._changes_from_feed(previous, self.store.dirty_peek(feed_len))
            lines, zone = self._splice(previous, diff)
            base = previous
        else:
            # No trusted previous state (first publication, or Redis restored
            # from a backup): rebuild from every entry and diff against the
            # last version Redis knows, if its snapshot is still here.
            lines, zone = self._full_state()
            base = ListState(0, [], [], None)
            if latest is not None:
                try:
                    base = self._load_state(latest)
                except (BlocklistError, OSError, ValueError):
                    base = ListState(int(latest["version"]), [], [], None)
            diff = self._diff_lists(base.lines, lines)
        timings["diff"] = time.perf_counter() - t0
        policy = self.curation.policy()
        held = self.held()
        now = self.clock()
        # Redis restored from a backup older than the last publication: publish
        # even without changes, so every client moves above what it already has.
        behind_highwater = highwater > (int(latest["version"]) if latest else 0)
        # A fold of the zones that waits for a version goes on without a change.
        fold = diff.empty and latest is not None and self._fold_due(latest, now)
        if fold and not reason:
            reason = "the overlay zone is folded into the base zone"
        if diff.empty and not force and not behind_highwater and not fold:
            self.store.dirty_consume(feed_len)
            if held:
                self._drop_held("the list no longer differs from the published version")
            refreshed = self._refresh_manifest_locked(token, force=False)
            return Outcome("refreshed" if refreshed else "unchanged",
                           version=int(latest["version"]) if latest else None,
                           message="nothing changed since the last publication")
        reasons = guard_reasons(diff, base.count, policy)
        reasons += self._safety_problems(diff, lines)
        released = bool(held and held.get("released_by"))
        if reasons and not (released and self._within_release(held, diff)):
            self._hold(diff, base, reasons, actor)
            return Outcome("held", version=int(latest["version"]) if latest else None,
                           message="held for an admin: " + "; ".join(reasons), diff=diff.summary())
        version = highwater + 1
        outcome, snapshot_sha = self._write_version(token, version, base, lines, zone, diff, feed_len, actor,
                                                    reason, now, timings, released=released)
        self._state = ListState(version, lines, zone, snapshot_sha)
        self._prune(version)
        outcome.timings["total"] = time.perf_counter() - t0
        return outcome

    def _sign(self, data_hash: bytes, fields: dict[str, str]) -> str:
        return self.key.sign(data_hash, format_trusted_comment(fields)).text()

    def _artifact(self, staging: Any, rel: str, parts: list[bytes], version: int, expires: str,
                  extra_hash: tuple[list[bytes], Any] | None = None) -> dict[str, Any]:
        """Write, hash, sign and verify one artifact. The three digests (sha256
        for the manifest, BLAKE2b-512 for minisign, and an optional extra one)
        run in threads: hashlib releases the GIL, so they overlap each other
        and the write."""
        sha = hashlib.sha256()
        pre = Prehasher()

        def feed(h: Any, chunks: list[bytes]) -> None:
            for chunk in chunks:
                h.update(chunk)

        jobs = [threading.Thread(target=feed, args=(sha, parts)), threading.Thread(target=feed, args=(pre, parts))]
        if extra_hash is not None:
            jobs.append(threading.Thread(target=feed, args=(extra_hash[1], extra_hash[0])))
        for j in jobs:
            j.start()
        staging.write_parts(rel, parts)
        for j in jobs:
            j.join()
        fields = {"list": self.settings.list_name, "version": str(version), "file": rel, "expires": expires}
        digest = pre.digest()
        sig_text = self._sign(digest, fields)
        # Verify what we signed before anything is published.
        self.key.public.verify(Signature.parse(sig_text), digest)
        staging.write(rel + ".minisig", sig_text)
        return {"path": rel, "sha256": sha.hexdigest(), "size": sum(len(p) for p in parts)}

    def _write_version(self, token: str, version: int, base: ListState, lines: list[bytes], zone: list[bytes],
                       diff: Diff, feed_len: int, actor: Actor, reason: str, now: float,
                       timings: dict[str, float], released: bool) -> tuple[Outcome, str]:
        t = time.perf_counter()
        published_at = iso(now) or ""
        expires_at = iso(now + self.settings.artifact_ttl) or ""
        body = b",\n".join(lines)
        # entries_sha256 covers the canonical lines, each followed by "\n".
        entries_hasher = hashlib.sha256(b"\n".join(lines))
        if lines:
            entries_hasher.update(b"\n")
        entries_sha = entries_hasher.hexdigest()
        head = {
            "schema": SCHEMA, "list": self.settings.list_name, "version": version,
            "published_at": published_at, "expires_at": expires_at,
            "previous_version": base.version or None, "previous_sha256": base.snapshot_sha256,
            "count": len(lines), "entries_sha256": entries_sha,
        }
        head_text = json.dumps(head, separators=(",", ":"))[:-1] + ',"entries":[\n'
        snapshot_parts = [head_text.encode(), body, b"\n]}\n"]
        staging = self.artifacts.stage()
        try:
            snap = self._artifact(staging, f"snapshots/{version}.json", snapshot_parts, version, expires_at)
            timings["snapshot"] = time.perf_counter() - t
            t = time.perf_counter()
            from app.rpz import header

            zone_head = header(self.soa, list_name=self.settings.list_name, version=version,
                               published_at=published_at, expires_at=expires_at)
            rpz = self._artifact(staging, f"rpz/{version}.zone",
                                 [zone_head.encode(), b"".join(zone)], version, expires_at)
            timings["rpz"] = time.perf_counter() - t
            t = time.perf_counter()
            delta_meta = None
            if base.version and base.snapshot_sha256:  # a delta only from a version we really hold
                delta = {
                    "schema": SCHEMA, "list": self.settings.list_name, "from": base.version, "to": version,
                    "published_at": published_at, "expires_at": expires_at,
                    "from_sha256": base.snapshot_sha256, "to_sha256": snap["sha256"],
                    "from_count": base.count, "to_count": len(lines), "to_entries_sha256": entries_sha,
                }
                added = diff.new_lines()
                removed = diff.old_lines()
                text = (json.dumps(delta, separators=(",", ":"))[:-1].encode()
                        + b',"added":[' + ((b"\n" + b",\n".join(added) + b"\n") if added else b"") + b"]"
                        + b',"removed":[' + ((b"\n" + b",\n".join(removed) + b"\n") if removed else b"")
                        + b"]}\n")
                delta_meta = self._artifact(staging, f"deltas/{base.version}/{version}.json",
                                            [text], version, expires_at)
                delta_meta.update({"from": base.version, "to": version})
            timings["delta"] = time.perf_counter() - t
            zones = self._zone_layout(version, base, delta_meta is not None, diff, now)
            meta = {
                "version": version, "published_at": published_at, "expires_at": expires_at,
                "count": len(lines), "previous_version": base.version or None,
                "changes": diff.summary(), "snapshot": snap, "rpz": rpz, "delta": delta_meta,
                "entries_sha256": entries_sha, "by": actor.name, "reason": reason,
                "released": released, "build_seconds": round(sum(timings.values()), 3),
                "zones": zones,
            }
            manifest_body, manifest_sig = self._manifest(meta, now)
            if self.store.pub_lock_holder() != token:
                raise PublicationError("lost the publisher lock before committing; nothing was published")
            staging.commit()
        except BaseException:
            staging.abort()
            raise
        self.artifacts.set_highwater(version)
        t = time.perf_counter()
        self._commit(token, version, meta, manifest_body, manifest_sig, feed_len, actor, reason, now)
        timings["commit"] = time.perf_counter() - t
        self._write_manifest_files(manifest_body, manifest_sig)
        log.info("published version %s: %s entries, %s", version, len(lines), diff.summary())
        return Outcome("published", version=version, diff=diff.summary(), timings=timings), snap["sha256"]

    def _fold_due(self, latest: dict[str, Any], now: float) -> bool:
        try:
            layout = Layout.from_json(latest.get("zones"), int(latest["version"]))
        except (ValueError, KeyError, TypeError):
            return False
        return fold_due(layout, now, FoldPolicy.from_settings(self.settings))

    def _zone_layout(self, version: int, base: ListState, continuous: bool, diff: Diff,
                     now: float) -> dict[str, Any]:
        """Which versions the base and overlay policy zones hold (app.rpz.Layout),
        fixed here so that every transfer server serves the same zones."""
        latest = self.latest()
        previous = None
        if latest is not None and int(latest["version"]) == base.version:
            try:
                previous = Layout.from_json(latest.get("zones"), base.version)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("starting a new base zone at version %s: %s", version, e)
        changed = diff.added + diff.removed + diff.changed
        layout = next_layout(previous, version, now, changed, continuous, FoldPolicy.from_settings(self.settings))
        return layout.to_json()

    def _commit(self, token: str, version: int, meta: dict[str, Any], manifest_body: str, manifest_sig: str,
                feed_len: int, actor: Actor, reason: str, now: float) -> None:
        latest = {k: meta[k] for k in ("version", "published_at", "expires_at", "count", "snapshot", "rpz",
                                       "delta", "entries_sha256", "previous_version", "zones")}
        for _ in range(20):
            current = self.store.pub_latest_raw()
            head = audit.head(self.store)
            txn = Txn()
            self.store.pub_expect(txn, latest=current, lock=token)
            audit.add(txn, self.store, head, actor=actor, action="publication.publish",
                      target=f"version:{version}",
                      before={"version": meta["previous_version"]},
                      after={"version": version, "count": meta["count"], **meta["changes"],
                             "snapshot_sha256": meta["snapshot"]["sha256"]},
                      reason=reason, ts=now)
            self.store.pub_set_manifest(txn, manifest_body, manifest_sig, version, int(now))
            self.store.pub_add_version(txn, version, json.dumps(meta, separators=(",", ":")),
                                       json.dumps(latest, separators=(",", ":")), feed_len)
            try:
                self.store.commit(txn)
                return
            except RetryableConflictError:
                if self.store.pub_lock_holder() != token:
                    raise PublicationError("lost the publisher lock before committing") from None
                if self.store.pub_latest_raw() != current:
                    raise PublicationError("another publisher committed a version meanwhile") from None
        raise PublicationError("could not commit the publication (too much concurrent activity)")

    # ------------------------------------------------------------------ manifest

    def _manifest(self, meta: dict[str, Any], now: float) -> tuple[str, str]:
        version = int(meta["version"])
        expires = iso(now + self.settings.manifest_ttl) or ""
        deltas = []
        lo = version - self.settings.retain_deltas
        for m in self._delta_chain(meta, lo):
            deltas.append(m)
        artifacts = [
            {"kind": "snapshot", **meta["snapshot"]},
            {"kind": "rpz", **meta["rpz"]},
            *({"kind": "delta", **d} for d in deltas),
        ]
        body = {
            "schema": SCHEMA, "list": self.settings.list_name, "version": version,
            "published_at": meta["published_at"], "signed_at": iso(now), "expires_at": expires,
            "count": meta["count"], "entries_sha256": meta["entries_sha256"],
            "snapshot": meta["snapshot"]["path"], "rpz": meta["rpz"]["path"],
            "rpz_zone": self.settings.rpz_zone, "artifacts": artifacts,
        }
        body["key_id"] = self.key.public.id_hex
        announced = self._key_announcement()
        if announced is not None:
            body["next_key"] = announced
        text = json.dumps(body, indent=1) + "\n"
        fields = {"list": self.settings.list_name, "version": str(version), "file": "manifest.json",
                  "expires": expires}
        sig = self.key.sign_bytes(text.encode(), format_trusted_comment(fields)).text()
        return text, sig

    def _delta_chain(self, meta: dict[str, Any], lowest: int) -> list[dict[str, Any]]:
        """Deltas reaching back from this version while they are retained."""
        out: list[dict[str, Any]] = []
        current = meta
        while current and current.get("delta") and int(current["version"]) > lowest:
            d = current["delta"]
            out.append(d)
            prev = current.get("previous_version")
            if not prev or int(prev) <= lowest:
                break
            current = self.version_meta(int(prev))  # type: ignore[assignment]
        return out

    def refresh_manifest(self, force: bool = False) -> bool:
        with self.lock() as token:
            if token is None:
                return False
            return self._refresh_manifest_locked(token, force)

    def _refresh_manifest_locked(self, token: str, force: bool) -> bool:
        """Re-sign the latest manifest with a later expiry when it is due, so a
        quiet feed is never mistaken for a frozen one."""
        latest_raw = self.store.pub_latest_raw()
        if not latest_raw:
            return False
        self._key = self.signing_key()
        latest = json.loads(latest_raw)
        if int(latest["version"]) < self.artifacts.highwater():
            # Restored from an older backup: never sign a manifest below a
            # published version; the next publication moves above it.
            return False
        current = self.store.pub_manifest()
        signed_at = current[2] if current else 0
        now = self.clock()
        due = now - signed_at >= self.settings.manifest_refresh
        if not force and not due and not self._keys_changed(current[0] if current else None):
            return False
        meta = self.version_meta(int(latest["version"]))
        if meta is None:
            return False
        body, sig = self._manifest(meta, now)
        txn = Txn()
        self.store.pub_expect(txn, latest=latest_raw, lock=token)
        self.store.pub_set_manifest(txn, body, sig, int(meta["version"]), int(now))
        try:
            self.store.commit(txn)
        except RetryableConflictError:
            return False
        self._write_manifest_files(body, sig)
        return True

    def _write_manifest_files(self, body: str, sig: str) -> None:
        """The latest manifest as files too, for nginx or a CDN serving the store directly."""
        try:
            self.artifacts.write_now("manifest.json", body)
            self.artifacts.write_now("manifest.json.minisig", sig)
        except OSError as e:
            log.warning("could not write manifest.json to the artifact store: %s", e)
        self.report_key()

    def report_key(self) -> None:
        """Tell every web host (/readyz) that a publisher holds the signing key."""
        self.store.signer_report(self.key.public.id_hex, SIGNER_REPORT_TTL)

    # ------------------------------------------------------------------ guard

    def _hold(self, diff: Diff, base: ListState, reasons: list[str], actor: Actor) -> None:
        held = self.held()
        record = {
            "held_at": iso(self.clock()), "base_version": base.version, "base_count": base.count,
            **diff.summary(), "reasons": reasons, "sample": diff.sample(),
        }
        same = held and all(held.get(k) == record[k] for k in ("base_version", "added", "removed", "changed"))
        if same:
            return
        for _ in range(20):
            head = audit.head(self.store)
            txn = Txn()
            current = self.store.pub_held_raw()
            self.store.pub_expect(txn, held=current)
            self.store.pub_set_held(txn, json.dumps(record, separators=(",", ":")))
            audit.add(txn, self.store, head, actor=actor, action="publication.hold", target="publication",
                      before=None, after=record, reason="; ".join(reasons), ts=self.clock())
            try:
                self.store.commit(txn)
                log.warning("publication held: %s", "; ".join(reasons))
                return
            except RetryableConflictError:
                continue

    @staticmethod
    def _within_release(held: dict[str, Any] | None, diff: Diff) -> bool:
        """A release covers the publication that was shown to the admin, not a larger one."""
        if not held:
            return False
        return diff.added <= int(held.get("added", 0)) and diff.removed <= int(held.get("removed", 0))

    def release(self, actor: Actor, reason: str) -> dict[str, Any]:
        actor.require("publish.release")
        return self._decide_held(actor, reason, "release")

    def discard(self, actor: Actor, reason: str) -> dict[str, Any]:
        actor.require("publish.release")
        return self._decide_held(actor, reason, "discard")

    def _decide_held(self, actor: Actor, reason: str, decision: str) -> dict[str, Any]:
        from app.domain import clean_text

        reason = clean_text(reason, "reason", required=True)
        for _ in range(20):
            current = self.store.pub_held_raw()
            if current is None:
                raise NotFoundError("no publication is held")
            held: dict[str, Any] = json.loads(current)
            if held.get("released_by"):
                raise ConflictError(f"the held publication was already released by {held['released_by']}")
            head = audit.head(self.store)
            txn = Txn()
            self.store.pub_expect(txn, held=current)
            if decision == "release":
                held.update(released_by=actor.name, released_at=iso(self.clock()))
                self.store.pub_set_held(txn, json.dumps(held, separators=(",", ":")))
                self._enqueue(actor, f"release: {reason}", txn)
            else:
                self.store.pub_set_held(txn, None)
            audit.add(txn, self.store, head, actor=actor, action=f"publication.{decision}",
                      target="publication", before={k: held.get(k) for k in ("added", "removed", "changed")},
                      after={"decision": decision}, reason=reason, ts=self.clock())
            try:
                self.store.commit(txn)
                return held
            except RetryableConflictError:
                continue
        raise ConflictError("too many concurrent changes; try again")

    def _drop_held(self, why: str) -> None:
        current = self.store.pub_held_raw()
        if current is None:
            return
        head = audit.head(self.store)
        txn = Txn()
        self.store.pub_expect(txn, held=current)
        self.store.pub_set_held(txn, None)
        audit.add(txn, self.store, head, actor=SYSTEM, action="publication.unhold", target="publication",
                  after=None, reason=why, ts=self.clock())
        try:
            self.store.commit(txn)
        except RetryableConflictError:
            pass

    # ------------------------------------------------------------------ requests

    def _request_payload(self, actor: Actor, reason: str, request_id: str | None = None, *,
                         force: bool = False, full: bool = False) -> str:
        return json.dumps({"id": request_id or secrets.token_hex(8), "by": actor.name, "role": str(actor.role),
                           "agency": actor.agency, "reason": reason, "at": iso(self.clock()),
                           "force": force, "full": full})

    def _enqueue(self, actor: Actor, reason: str, txn: Txn | None = None, *, force: bool = False,
                 full: bool = False, timeout: int | None = None) -> str:
        request_id = secrets.token_hex(8)
        pending = json.dumps({"status": "requested", "requested_at": self.clock()})
        # Not taken in time, a request is dropped: nobody is waiting for it any more.
        self.store.pub_set_request(request_id, self._request_payload(actor, reason, request_id, force=force,
                                                                     full=full), pending, txn,
                                   request_ttl=(timeout or self.settings.publish_answer_timeout) + 5)
        return request_id

    def request(self, actor: Actor, reason: str = "", *, force: bool = False, full: bool = False,
                timeout: int | None = None) -> str:
        """Ask the publisher to publish now: only the publisher holds the key and
        signs. Returns the request id; the publisher stores its answer under it
        (see :meth:`answer`). A request no publisher took within ``timeout``
        (default ``publish_answer_timeout``) seconds is never served."""
        actor.require("publish.now")
        return self._enqueue(actor, reason, force=force, full=full, timeout=timeout)

    def answer(self, request_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """The answer to a request: ``requested`` (queued), ``working`` (taken by
        a publisher), ``unanswered`` (no publisher took it within
        ``publish_answer_timeout``; it is withdrawn), or the outcome. None for
        an unknown or forgotten request."""
        raw = self.store.pub_result(request_id)
        if raw is None:
            return None
        result: dict[str, Any] = json.loads(raw)
        if result.get("status") != "requested":
            return result
        waited = self.clock() - float(result.get("requested_at", 0))
        limit = self.settings.publish_answer_timeout if timeout is None else timeout
        if waited < limit or not self.store.pub_withdraw_request(request_id):
            return result
        result = {"status": "unanswered", "message": no_publisher_message(limit)}
        self.store.pub_set_result(request_id, json.dumps(result))
        return result

    def request_result(self, request_id: str) -> dict[str, Any] | None:
        """The outcome once the publisher answered (or gave up), else None."""
        result = self.answer(request_id)
        if result is None or result.get("status") in ("requested", "working"):
            return None
        return result

    def serve_request(self) -> Outcome | None:
        """Run the oldest pending publish request, if any (the worker calls this often)."""
        taken = self.store.pub_take_request()
        if taken is None:
            return None
        request_id, raw = taken
        req = json.loads(raw)
        self.store.pub_set_result(request_id, json.dumps({"status": "working", "taken_at": self.clock()}))
        from app.domain import Role

        try:
            role = Role(req.get("role", "admin"))
        except ValueError:
            role = Role.ADMIN
        who = Actor(name=str(req.get("by", "system")), role=role, agency=str(req.get("agency", "")))
        try:
            outcome = self.publish(actor=who, reason=str(req.get("reason", "")), wait_lock=30,
                                   force=bool(req.get("force")), full=bool(req.get("full")))
        except BlocklistError as e:
            outcome = Outcome("failed", message=e.message)
        except Exception:
            # Answer the requester before the error reaches the worker's log.
            failed = Outcome("failed", message="the publisher failed; see its log")
            self.store.pub_set_result(request_id, json.dumps(failed.to_dict()))
            raise
        self.store.pub_set_result(request_id, json.dumps(outcome.to_dict()))
        return outcome

    def preview(self) -> Diff:
        """What the next publication would change (read-only)."""
        latest = self.latest()
        state = self._load_state(latest) if latest else ListState(0, [], [], None)
        if latest is None:
            lines, _ = self._full_state()
            return self._diff_lists([], lines)
        return self._changes_from_feed(state, self.store.dirty_peek())

    # ------------------------------------------------------------------ retention

    def _prune(self, version: int) -> None:
        keep_snap = version - self.settings.retain_snapshots
        keep_delta = version - self.settings.retain_deltas
        for v in range(max(1, keep_snap - 50), keep_snap + 1):
            self.artifacts.remove(f"snapshots/{v}.json")
            self.artifacts.remove(f"rpz/{v}.zone")
        for v in range(max(1, keep_delta - 50), keep_delta + 1):
            meta = self.version_meta(v)
            if meta and meta.get("delta"):
                self.artifacts.remove(meta["delta"]["path"])


def rules_parents(domain: str) -> list[str]:
    from app.domain import parents

    return list(parents(domain))


def make_publisher(core: Any, key: SecretKey | None = None) -> Publisher:
    return Publisher(core.store, core.settings, core.curation, core.clock, key)


def parse_version(value: Any) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValidationError("a version is a whole number") from None
    if v < 1:
        raise ValidationError("versions start at 1")
    return v


def no_publisher_message(seconds: float) -> str:
    """What "publish now" says when no publisher took the request in time."""
    return (f"no publisher answered within {seconds:g} s: is `blocklist worker` (or `blocklist serve`) running "
            "with the programme's signing key?")
