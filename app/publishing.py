"""Publication: build, check, sign, verify and store one version of the list.

What must stay true:

* Version numbers only go up and are never reused: the next version is
  ``max(latest in Redis, high-water mark in Redis, HIGHWATER on this host) + 1``.
* A publication is all or nothing. Artifacts are built, signed, verified
  and uploaded to Redis as blobs nobody can see yet (see app.artifacts), the
  high-water mark is raised, and only then one atomic Redis step
  (compare-and-set on the latest version and on our lock) makes the
  artifacts and the version visible, consumes the change feed and appends
  the audit record. A publisher killed at any point leaves the previous
  version served; the next run publishes cleanly.
* Only one publisher acts at a time (a Redis lock with expiry, extended
  while working); a publisher that lost its lock cannot commit.
* The guard holds a publication that removes or adds more than the policy
  allows, and any that would list an allowlisted name, until an admin
  releases it.
* Cost follows the change, not the list: the publisher keeps the previous
  version's sorted lines in memory (or rebuilds them from the newest full
  snapshot and the deltas after it) and splices in the changed entries
  named by the change feed. A version of a large list stores its delta and
  the manifest; its full snapshot and zone file are written later by
  compaction, once the version is served (small lists get them with every
  version). The list's digest (``entries_digest``, see client.digest) is
  updated chunk by chunk, so no step of a delta version reads the whole list.
* A full build (the first version, or a rebuild) reads the list already
  sorted from the store's published form (app.store.published), and builds
  from every record only when that form is not whole.

The parts, each with one job: ``app.listbuild`` builds lists and diffs,
``app.guard`` decides what is held, ``app.artifacts`` stores and serves
bytes, ``app.publication`` is the record every reader shares; this module
orchestrates them under the lock, signs, and commits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from app import audit
from app.artifacts import ArtifactStore, Staging
from app.clock import Clock, system_clock
from app.config import Settings
from app.curation import Curation
from app.domain import SYSTEM, Actor, iso, public_suffix_list
from app.errors import (
    BlocklistError,
    ConflictError,
    NotFoundError,
    PublicationError,
)
from app.guard import guard_reasons, safety_problems
from app.listbuild import (
    Diff,
    ListState,
    changes_from_records,
    delta_diff,
    diff_lists,
    feed_members,
    full_lines,
    lines_from_store,
    snapshot_lines,
    splice,
    zone_fragment_of,
)
from app.publication import DeltaRef, FileRef, Latest, Publication
from app.rpz import FoldPolicy, Layout, SoaParams, fold_due, next_layout
from app.signing import SecretKey, load_key
from app.store import BUCKET_SIZE, Store, Txn
from app.store.keys import record_key
from client.digest import Digest
from client.minisign import Prehasher, Signature, format_trusted_comment

log = logging.getLogger("blocklist.publisher")

#: Records added to the published form per step when it is filled.
FILL_STEP = 5000
T = TypeVar("T")

#: The feed's format: 2 since ``entries_digest`` replaced the whole-list ``entries_sha256``.
SCHEMA = 2
#: The lock expires this long after its holder died mid-publication; a live
#: holder extends it every quarter of it. A standby takes over within it.
LOCK_TTL_MS = 30_000
#: /readyz counts a publisher as present for this long after it last reported.
SIGNER_REPORT_TTL = 300
@dataclass
class Outcome:
    status: str  # published | unchanged | held | refreshed | busy | compacted
    version: int | None = None
    message: str = ""
    diff: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "version": self.version, "message": self.message,
                **({"changes": self.diff} if self.diff else {})}


class Publisher:
    """Publishes versions. One instance per worker process keeps the last
    published list in memory between runs."""

    def __init__(self, store: Store, settings: Settings, curation: Curation,
                 clock: Clock = system_clock, key: SecretKey | None = None) -> None:
        self.store = store
        self.settings = settings
        self.curation = curation
        self.clock = clock
        self.artifacts = ArtifactStore(settings.artifact_dir, store)
        self._key = key
        self._reminded_at = 0.0
        self._state: ListState | None = None
        # Lock tokens start with this, so that a lock this publisher left
        # behind (see _own_stale_lock) is known as its own.
        self._lock_prefix = secrets.token_hex(8)
        self._live_tokens: set[str] = set()
        #: Who publishes, as recorded with each version (the worker sets host:pid).
        self.name = f"{socket.gethostname()}:{os.getpid()}"
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
            self.store.health.report_signer(mine, SIGNER_REPORT_TTL, problem=e.message)
            return False
        self.store.health.report_signer(key.public.id_hex, SIGNER_REPORT_TTL)
        self._remind_rotation()
        return True

    def _remind_rotation(self) -> None:
        """Once an hour, say that an announced key may take over and is waiting for the operator."""
        from app.keys import ProgrammeKeys

        raw = self.store.programme_keys.raw()
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

        raw = self.store.programme_keys.raw()
        return ProgrammeKeys.from_json(raw).announcement() if raw else None

    # ------------------------------------------------------------------ reads

    def latest(self) -> dict[str, Any] | None:
        """The latest version as the API shows it (JSON); code reads :meth:`latest_record`."""
        raw = self.store.pubs.latest_raw()
        return json.loads(raw) if raw else None

    def latest_record(self) -> Latest | None:
        """The latest version, typed (what ``pub:latest`` holds)."""
        raw = self.store.pubs.latest_raw()
        return Latest.from_json(raw) if raw else None

    def version_meta(self, version: int) -> dict[str, Any] | None:
        """A version's record in the shape the API and pages show."""
        pub = self.record(version)
        return pub.to_dict() if pub else None

    def record(self, version: int) -> Publication | None:
        raw = self.store.pubs.version_raw(version)
        return Publication.from_json(raw) if raw else None

    def base_of(self, pub: Publication) -> Publication:
        """The version whose full snapshot and zone file ``pub`` builds on."""
        base = pub if pub.base == pub.version else self.record(pub.base)
        if base is None or not base.has_full_files:
            raise PublicationError(f"the full snapshot of version {pub.base} is no longer recorded")
        return base

    def versions(self, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        metas = []
        for n in self.store.pubs.version_numbers(limit, before):
            m = self.version_meta(n)
            if m:
                metas.append(m)
        return metas

    def held(self) -> dict[str, Any] | None:
        raw = self.store.pubs.held_raw()
        return json.loads(raw) if raw else None

    def manifest(self) -> tuple[str, str] | None:
        m = self.store.pubs.manifest()
        return None if m is None else (m[0], m[1])

    def prepare(self) -> None:
        """Load once, when a worker starts, what every publication reads and
        the first would otherwise load: the Public Suffix List of the
        publication guard (a quarter of a second)."""
        public_suffix_list()

    # ------------------------------------------------------------------ lock

    @contextmanager
    def lock(self, wait: float = 0.0) -> Iterator[str | None]:
        """Hold the publisher lock (yields its token), or yield None if busy."""
        token = f"{self._lock_prefix}.{secrets.token_hex(8)}"
        deadline = time.monotonic() + wait
        while not self.store.pubs.lock_acquire(token, LOCK_TTL_MS):
            stale = self._own_stale_lock()
            if stale is not None:
                token = stale
                break
            if time.monotonic() >= deadline:
                yield None
                return
            time.sleep(0.1)
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(LOCK_TTL_MS / 4000):
                if not self.store.pubs.lock_extend(token, LOCK_TTL_MS):
                    log.error("lost the publisher lock")
                    return

        self._live_tokens.add(token)
        t = threading.Thread(target=heartbeat, name="publisher-lock", daemon=True)
        t.start()
        try:
            yield token
        finally:
            stop.set()
            t.join()
            self._live_tokens.discard(token)
            self.store.pubs.lock_release(token)

    def _own_stale_lock(self) -> str | None:
        """The token of a lock this publisher holds but no longer uses: its
        release failed, or went to a primary that was then replaced (the
        promoted replica still has the lock), and waiting for it to expire
        would stop publication for up to LOCK_TTL_MS. Taken back, else None."""
        holder = self.store.pubs.lock_holder()
        if (holder is None or not holder.startswith(self._lock_prefix + ".") or holder in self._live_tokens
                or not self.store.pubs.lock_extend(holder, LOCK_TTL_MS)):
            return None
        log.warning("took back the publisher lock this publisher had left behind (Redis went away or failed over)")
        return holder

    # ------------------------------------------------------------------ state

    def _load_state(self, latest: Latest | None) -> ListState:
        """The list of the latest version: kept in memory, else rebuilt from
        its newest full snapshot and the deltas after it (a standby taking
        over, or a restarted worker)."""
        if latest is None:
            return ListState(version=0, lines=[], zone=[], snapshot_sha256=None)
        v = latest.version
        if self._state is not None and self._state.version == v:
            return self._state
        pub = self.record(v)
        if pub is None:
            raise PublicationError(f"version {v} has no publication record")
        base = self.base_of(pub)
        assert base.snapshot is not None
        lines = snapshot_lines(self._checked(base.snapshot))
        chain: list[DeltaRef] = []
        current: Publication | None = pub
        while current is not None and current.version > base.version:
            if current.delta is None:
                raise PublicationError(f"version {current.version} has no delta to rebuild it from")
            chain.append(current.delta)
            current = self.record(current.delta.frm)
        state = ListState.of(base.version, lines, [], None)
        for delta in reversed(chain):
            lines, _, digest = splice(state, delta_diff(self._checked(delta)))
            state = ListState(delta.to, lines, [], None, digest=digest)
        if state.digest.hexdigest() != pub.entries_digest:
            raise PublicationError(f"the list rebuilt for version {v} does not match its recorded digest")
        zone = [zone_fragment_of(ln) for ln in state.lines]
        self._state = ListState(v, state.lines, zone, pub.snapshot.sha256 if pub.snapshot else None,
                                digest=state.digest)
        return self._state

    def _changes_from_feed(self, state: ListState, ids: list[int]) -> Diff:
        unique = sorted(set(ids))

        def records() -> Iterator[str | None]:
            for start in range(0, len(unique), 5000):
                yield from self.store.entries.raw_many(unique[start : start + 5000])

        return changes_from_records(state, records())

    def _full_build(self, fill: bool = True, verify: bool = False) -> tuple[list[bytes], list[bytes], Digest]:
        """Every active entry's feed line and zone lines, sorted, and their
        digest: read from the store's published form (kept in order by Redis
        as entries are written; the next batch is read while one is digested),
        or built from every record when that form is not whole.

        ``verify`` (a full rebuild asked for: the daily reconciliation or
        ``publish --full``): built from every record, and the published form
        checked against it (:meth:`_check_published_form`)."""
        if verify:
            lines, zone = full_lines(self.store.entries.iter_raw())
            self._check_published_form(lines, zone)
            return lines, zone, Digest.of_lines(lines)
        if fill and not self.store.published.ready():
            self._fill_published_form()
        if self.store.published.ready():
            held, active = self.store.published.counts()
            built = lines_from_store(prefetched(self.store.published.read())) if held == active else None
            if built is not None:
                return built
            log.warning("the published form in Redis does not match the entries (%s lines for %s active "
                        "entries): was an older release writing entries? Building from every record, and "
                        "refilling it", held, active)
            self.store.published.reset()
        lines, zone = full_lines(self.store.entries.iter_raw())
        return lines, zone, Digest.of_lines(lines)

    def _check_published_form(self, lines: list[bytes], zone: list[bytes]) -> None:
        """Compare the published form with the list built from every record;
        where they differ, read those records again (one written meanwhile is
        in the form already). A line still different means something wrote
        entries without keeping the form (a process of an older release): say
        so, and drop the form; the next full build fills it again."""
        if not self.store.published.ready():
            return
        held = lines_from_store(prefetched(self.store.published.read()))
        if held is not None and held[0] == lines and held[1] == zone:
            return
        stale: list[str] = []
        if held is not None and held[0] != lines:
            differ = diff_lists(lines, held[0]).changes  # old: from the records; new: in the form
            keys = [c.key for c in differ]
            ids = self.store.entries.ids_for_keys(keys)
            raws = iter(self.store.entries.raw_many([i for i in ids if i is not None]))
            current = {k: _active_line(next(raws) if i is not None else None)
                       for k, i in zip(keys, ids, strict=True)}
            stale = [c.key for c in differ if current[c.key] != c.new]
            if not stale:
                return  # written while the records were read: the form has them already
        log.warning("the published form in Redis differs from the entries%s: was an older release writing "
                    "entries? Publishing from every record, and refilling it",
                    f" ({len(stale)} lines, such as {stale[0]})" if stale else "")
        self.store.published.reset()

    def _fill_published_form(self) -> None:
        """Fill the published form from a store made before it existed: every
        active record, in the list's order (so each step extends the form at
        its end), a few thousand per step, each added only if it is still the
        stored record (one changed meanwhile was added by its writer)."""
        t = time.perf_counter()
        order: list[tuple[str, int]] = []
        for bucket in range(self.store.entries.last_id() // BUCKET_SIZE + 1):
            for i, raw in self.store.entries.bucket_items(bucket):
                if '"st":"active"' in raw:
                    order.append((record_key(raw), i))
        order.sort()
        n = 0
        for start in range(0, len(order), FILL_STEP):
            ids = [i for _, i in order[start : start + FILL_STEP]]

            def step(txn: Txn, ids: list[int] = ids) -> int:
                raws = self.store.entries.raw_many(ids)
                items = [(i, raw) for i, raw in zip(ids, raws, strict=True)
                         if raw is not None and '"st":"active"' in raw]
                self.store.published.fill(txn, items)
                return len(items)

            try:
                n += self.store.transact(step)
            except ConflictError:
                raise PublicationError("entries kept changing while the published form was filled; "
                                       "try again") from None
        self.store.published.mark_ready()
        log.info("filled the published form with %s active entries in %.1fs", n, time.perf_counter() - t)

    def _checked(self, ref: FileRef) -> bytes:
        data = self.artifacts.read(ref.path)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise PublicationError(f"{ref.path} does not match its recorded sha256; refusing to build on it")
        return data

    # ------------------------------------------------------------------ publish

    def publish(self, *, actor: Actor = SYSTEM, reason: str = "", force: bool = False,
                wait_lock: float = 0.0, full: bool = False, compact: bool | None = None) -> Outcome:
        """Publish the change since the last version.

        ``compact``: None compacts right away only when that is cheap (a small
        list); True compacts when due, whatever the size; False leaves it to
        :meth:`compact` (the worker runs it after the publication is visible).
        """
        with self.lock(wait=wait_lock) as token:
            if token is None:
                return Outcome("busy", message="another publisher is working; try again shortly")
            outcome = self._publish_locked(token, actor=actor, reason=reason, force=force, full=full)
            if outcome.status == "published" and compact is not False:
                t = time.perf_counter()
                if self._compact_locked(token, only_small=compact is None).status == "compacted":
                    outcome.timings["compact"] = time.perf_counter() - t
            return outcome

    def compact(self, wait_lock: float = 0.0) -> Outcome:
        """Write the full snapshot and zone file of the latest version when the
        delta chain since the last full one has grown enough (size or age)."""
        with self.lock(wait=wait_lock) as token:
            if token is None:
                return Outcome("busy", message="another publisher is working; try again shortly")
            return self._compact_locked(token, only_small=False)

    def _publish_locked(self, token: str, *, actor: Actor, reason: str, force: bool,
                        full: bool) -> Outcome:
        t0 = time.perf_counter()
        self._key = self.signing_key()
        timings: dict[str, float] = {}
        latest = self.latest_record()
        latest_v = latest.version if latest else 0
        highwater = max(self.artifacts.highwater(), latest_v)
        # Read the change feed's length first: changes made after this point
        # stay in the feed for the next run, whatever this run reads.
        feed_len = self.store.changes.count()
        previous = None
        if latest is not None and not full and latest_v == highwater:
            try:
                previous = self._load_state(latest)
            except (BlocklistError, OSError, ValueError) as e:
                log.warning("rebuilding from Redis: cannot use version %s: %s", latest_v, e)
        if previous is not None:
            diff = self._changes_from_feed(previous, self.store.changes.peek(feed_len))
            lines, zone, digest = splice(previous, diff)
            base = previous
        else:
            # No trusted previous state (first publication, or Redis restored
            # from a backup): rebuild from every entry and diff against the
            # last version Redis knows, if it can still be rebuilt.
            lines, zone, digest = self._full_build(verify=full)
            base = ListState(0, [], [], None)
            if latest is not None:
                try:
                    base = self._load_state(latest)
                except (BlocklistError, OSError, ValueError):
                    base = ListState(latest_v, [], [], None, known=False)
            diff = diff_lists(base.lines, lines)
        timings["diff"] = time.perf_counter() - t0
        policy = self.curation.policy()
        held = self.held()
        now = self.clock()
        # Redis restored from a backup older than the last publication: publish
        # even without changes, so every client moves above what it already has.
        behind_highwater = highwater > latest_v
        # The latest version's files are not in the store (written by a release
        # that kept them on disk only): publish again, so every host can serve.
        unstored = latest is not None and not self.artifacts.exists(latest.snapshot.path)
        # A fold of the zones that waits for a version goes on without a change.
        fold = diff.empty and latest is not None and self._fold_due(latest, now)
        if fold and not reason:
            reason = "the overlay zone is folded into the base zone"
        if diff.empty and not force and not behind_highwater and not unstored and not fold:
            self.store.changes.consume(feed_len)
            if held:
                self._drop_held("the list no longer differs from the published version")
            refreshed = self._refresh_manifest_locked(token, force=False)
            return Outcome("refreshed" if refreshed else "unchanged",
                           version=latest.version if latest else None,
                           message="nothing changed since the last publication")
        reasons = guard_reasons(diff, base.count, policy)
        reasons += safety_problems(diff, lines, self.curation.rules())
        released = bool(held and held.get("released_by"))
        if reasons and not (released and self._within_release(held, diff)):
            self._hold(diff, base, reasons, actor)
            return Outcome("held", version=latest.version if latest else None,
                           message="held for an admin: " + "; ".join(reasons), diff=diff.summary())
        version = highwater + 1
        # A delta needs the previous list exactly; without one (first version,
        # rebuild after a restore) this version is published in full.
        with_delta = previous is not None or (base.known and base.version > 0)
        prev = self.record(base.version) if base.version and with_delta else None
        # A small list is written in full with every version (it costs less
        # than keeping clients on a chain); a large one is compacted later.
        small = prev is not None and self.compaction_due(prev, only_small=True)
        outcome, snapshot_sha = self._write_version(token, version, base, lines, zone, digest, diff, feed_len,
                                                    actor, reason, now, timings, released=released, prev=prev,
                                                    full=not with_delta or full or small)
        self._state = ListState(version, lines, zone, snapshot_sha, digest=digest)
        self._prune(version)
        outcome.timings["total"] = time.perf_counter() - t0
        return outcome

    def _sign(self, data_hash: bytes, fields: dict[str, str]) -> str:
        return self.key.sign(data_hash, format_trusted_comment(fields)).text()

    def _artifact(self, staging: Staging, rel: str, parts: list[bytes], version: int,
                  expires: str) -> FileRef:
        """Upload, hash, sign and verify one artifact. The BLAKE2b-512 digest
        minisign signs runs in a thread beside the upload's sha256 and
        compression: hashlib and zstd release the GIL, so they overlap."""
        pre = Prehasher()

        def feed() -> None:
            for chunk in parts:
                pre.update(chunk)

        job = threading.Thread(target=feed)
        job.start()
        ref = staging.write_parts(rel, parts)
        job.join()
        fields = {"list": self.settings.list_name, "version": str(version), "file": rel, "expires": expires}
        digest = pre.digest()
        sig_text = self._sign(digest, fields)
        # Verify what we signed before anything is published.
        self.key.public.verify(Signature.parse(sig_text), digest)
        staging.write(rel + ".minisig", sig_text)
        return FileRef(path=rel, sha256=ref.sha256, size=ref.size)

    def _write_full(self, staging: Staging, version: int, lines: list[bytes], zone: list[bytes],
                    published_at: str, expires_at: str, entries_digest: str,
                    previous: tuple[int, str] | None, timings: dict[str, float]) -> tuple[FileRef, FileRef]:
        """The full snapshot and zone file of a version (first publication or compaction)."""
        from app.rpz import header

        t = time.perf_counter()
        head = {
            "schema": SCHEMA, "list": self.settings.list_name, "version": version,
            "published_at": published_at, "expires_at": expires_at,
            "previous_version": previous[0] if previous else None,
            "previous_sha256": previous[1] if previous else None,
            "count": len(lines), "entries_digest": entries_digest,
        }
        head_text = json.dumps(head, separators=(",", ":"))[:-1] + ',"entries":[\n'
        snapshot_parts = [head_text.encode(), b",\n".join(lines), b"\n]}\n"]
        snap = self._artifact(staging, f"snapshots/{version}.json", snapshot_parts, version, expires_at)
        timings["snapshot"] = time.perf_counter() - t
        t = time.perf_counter()
        zone_head = header(self.soa, list_name=self.settings.list_name, version=version,
                           published_at=published_at, expires_at=expires_at)
        rpz = self._artifact(staging, f"rpz/{version}.zone", [zone_head.encode(), b"".join(zone)], version,
                             expires_at)
        timings["rpz"] = time.perf_counter() - t
        return snap, rpz

    def _previous_full(self, pub: Publication | None) -> tuple[int, str] | None:
        """(version, snapshot sha256) of the newest full snapshot at or before ``pub``."""
        if pub is None:
            return None
        try:
            base = self.base_of(pub)
        except PublicationError:
            return None
        assert base.snapshot is not None
        return base.version, base.snapshot.sha256

    def _write_version(self, token: str, version: int, base: ListState, lines: list[bytes], zone: list[bytes],
                       digest: Digest, diff: Diff, feed_len: int, actor: Actor, reason: str, now: float,
                       timings: dict[str, float], released: bool, prev: Publication | None,
                       full: bool) -> tuple[Outcome, str | None]:
        published_at = iso(now) or ""
        expires_at = iso(now + self.settings.artifact_ttl) or ""
        entries_digest = digest.hexdigest()
        staging = self.artifacts.stage()
        try:
            snap = rpz = None
            if full:
                snap, rpz = self._write_full(staging, version, lines, zone, published_at, expires_at,
                                             entries_digest, self._previous_full(prev), timings)
            t = time.perf_counter()
            delta = None
            if prev is not None:
                text = self._delta_text(base, version, diff, published_at, expires_at,
                                        to_sha256=snap.sha256 if snap else None,
                                        to_count=len(lines), digest=entries_digest)
                ref = self._artifact(staging, f"deltas/{base.version}/{version}.json", [text], version, expires_at)
                delta = DeltaRef(path=ref.path, sha256=ref.sha256, size=ref.size, frm=base.version, to=version)
            timings["delta"] = time.perf_counter() - t
            # Which versions the base and overlay zones hold: continuous when
            # this version has a delta from the previous one.
            zones = self._zone_layout(version, base, delta is not None, diff, now)
            pub = Publication(
                version=version, published_at=published_at, expires_at=expires_at, count=len(lines),
                entries_digest=entries_digest, previous_version=base.version or None, changes=diff.summary(),
                delta=delta, base=version, by=actor.name, reason=reason, released=released,
                build_seconds=round(sum(timings.values()), 3), publisher=self.name, zones=zones,
            )
            if snap is not None and rpz is not None:
                pub = pub.with_full_files(snap, rpz, int(now))
            elif prev is not None and delta is not None:
                pub = replace(pub, base=prev.base, chain_length=prev.chain_length + 1,
                              chain_bytes=prev.chain_bytes + delta.size)
            else:
                raise PublicationError("a version needs its full files or a delta; nothing was published")
            manifest_body, manifest_sig = self._manifest(pub, now)
            if self.store.pubs.lock_holder() != token:
                raise PublicationError("lost the publisher lock before committing; nothing was published")
            self.artifacts.set_highwater(version)
            t = time.perf_counter()
            self._commit(token, pub, manifest_body, manifest_sig, feed_len, actor, reason, now, staging)
            timings["commit"] = time.perf_counter() - t
        except BaseException:
            staging.abort()
            raise
        staging.finish()
        self._write_manifest_files(manifest_body, manifest_sig)
        log.info("published version %s: %s entries, %s", version, len(lines), diff.summary())
        return (Outcome("published", version=version, diff=diff.summary(), timings=timings),
                snap.sha256 if snap else None)

    def _delta_text(self, base: ListState, version: int, diff: Diff, published_at: str, expires_at: str, *,
                    to_sha256: str | None, to_count: int, digest: str) -> bytes:
        added = diff.new_lines()
        removed = diff.old_lines()
        head = {
            "schema": SCHEMA, "list": self.settings.list_name, "from": base.version, "to": version,
            "published_at": published_at, "expires_at": expires_at,
            "from_sha256": base.snapshot_sha256, "to_sha256": to_sha256,
            "from_count": base.count, "to_count": to_count, "to_entries_digest": digest,
        }
        return (json.dumps(head, separators=(",", ":"))[:-1].encode()
                + b',"added":[' + ((b"\n" + b",\n".join(added) + b"\n") if added else b"") + b"]"
                + b',"removed":[' + ((b"\n" + b",\n".join(removed) + b"\n") if removed else b"")
                + b"]}\n")

    def _commit(self, token: str, pub: Publication, manifest_body: str, manifest_sig: str, feed_len: int,
                actor: Actor, reason: str, now: float, staging: Staging) -> None:
        latest = Latest.of(pub, self.base_of(pub))
        first = self.store.pubs.latest_raw()

        def step(txn: Txn) -> None:
            current = self.store.pubs.latest_raw()
            head = audit.head(self.store)
            self.store.pubs.expect(txn, latest=current, lock=token)
            audit.add(txn, self.store, head, actor=actor, action="publication.publish",
                      target=f"version:{pub.version}",
                      before={"version": pub.previous_version},
                      after={"version": pub.version, "count": pub.count, **pub.changes,
                             "entries_digest": pub.entries_digest},
                      reason=reason, ts=now)
            self.store.pubs.set_manifest(txn, manifest_body, manifest_sig, pub.version, int(now))
            staging.commit_ops(txn)
            if pub.has_full_files:
                self.store.pubs.add_full(txn, pub.version)
            self.store.pubs.add_version(txn, pub.version, pub.to_json(), latest.to_json(), feed_len)

        def still_ours() -> None:
            if self.store.pubs.lock_holder() != token:
                raise PublicationError("lost the publisher lock before committing") from None
            if self.store.pubs.latest_raw() != first:
                raise PublicationError("another publisher committed a version meanwhile") from None

        try:
            self.store.transact(step, on_conflict=still_ours)
        except ConflictError as e:
            raise PublicationError(f"could not commit the publication: {e.message}") from None

    # ------------------------------------------------------------------ compaction

    def compaction_due(self, pub: Publication, only_small: bool = False) -> bool:
        """The chain since the last full snapshot (at or before ``pub``) has
        grown past a share of its size, a length, or an age; or the list is
        small (``only_small``: just that test)."""
        if pub.has_full_files and not only_small:
            return False
        try:
            base = self.base_of(pub)
        except PublicationError:
            return True
        assert base.snapshot is not None
        size = base.snapshot.size
        if size <= self.settings.compact_small_bytes:
            return True
        if only_small:
            return False
        if pub.chain_bytes >= self.settings.compact_ratio * size:
            return True
        if pub.chain_length >= max(1, self.settings.retain_deltas // 2):
            return True
        return self.clock() - float(base.full_at or 0) >= self.settings.compact_age

    def _compact_locked(self, token: str, only_small: bool) -> Outcome:
        latest_raw = self.store.pubs.latest_raw()
        if not latest_raw:
            return Outcome("unchanged", message="nothing has been published yet")
        latest = Latest.from_json(latest_raw)
        version = latest.version
        pub = self.record(version)
        if pub is None or pub.has_full_files or not self.compaction_due(pub, only_small):
            return Outcome("unchanged", version=version, message="no compaction due")
        t0 = time.perf_counter()
        self._key = self.signing_key()
        state = self._load_state(latest)
        now = self.clock()
        timings: dict[str, float] = {}
        staging = self.artifacts.stage()
        try:
            snap, rpz = self._write_full(staging, version, state.lines, state.zone, pub.published_at,
                                         pub.expires_at, pub.entries_digest, self._previous_full(pub), timings)
            full = pub.with_full_files(snap, rpz, int(now))
            body, sig = self._manifest(full, now)

            def step(txn: Txn) -> None:
                head = audit.head(self.store)
                self.store.pubs.expect(txn, latest=latest_raw, lock=token)
                audit.add(txn, self.store, head, actor=SYSTEM, action="publication.compact",
                          target=f"version:{version}", before={"base": pub.base},
                          after={"snapshot_sha256": snap.sha256, "rpz_sha256": rpz.sha256},
                          reason="full snapshot and zone file written", ts=now)
                self.store.pubs.set_manifest(txn, body, sig, version, int(now))
                staging.commit_ops(txn)
                self.store.pubs.add_full(txn, version)
                self.store.pubs.update_version(txn, version, full.to_json(), Latest.of(full, full).to_json())

            def moved_on() -> None:
                # Only the audit head moved (curation goes on): try again; a
                # new version or a lost lock ends this compaction.
                if self.store.pubs.latest_raw() != latest_raw or self.store.pubs.lock_holder() != token:
                    raise ConflictError("a publication moved on meanwhile")

            self.store.transact(step, retries=5, on_conflict=moved_on)
        except ConflictError:
            staging.abort()
            return Outcome("busy", version=version, message="a publication moved on meanwhile")
        except BaseException:
            staging.abort()
            raise
        staging.finish()
        self._state = ListState(version, state.lines, state.zone, snap.sha256, digest=state.digest)
        self._write_manifest_files(body, sig)
        self._prune(version)
        timings["total"] = time.perf_counter() - t0
        log.info("compacted version %s: full snapshot and zone file written in %.2fs", version, timings["total"])
        return Outcome("compacted", version=version, timings=timings)

    def _fold_due(self, latest: Latest, now: float) -> bool:
        try:
            layout = Layout.from_json(latest.zones, latest.version)
        except (ValueError, KeyError, TypeError):
            return False
        return fold_due(layout, now, FoldPolicy.from_settings(self.settings))

    def _zone_layout(self, version: int, base: ListState, continuous: bool, diff: Diff,
                     now: float) -> dict[str, Any]:
        """Which versions the base and overlay policy zones hold (app.rpz.Layout),
        fixed here so that every transfer server serves the same zones."""
        latest = self.latest_record()
        previous = None
        if latest is not None and latest.version == base.version:
            try:
                previous = Layout.from_json(latest.zones, base.version)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("starting a new base zone at version %s: %s", version, e)
        changed = diff.added + diff.removed + diff.changed
        layout = next_layout(previous, version, now, changed, continuous, FoldPolicy.from_settings(self.settings))
        return layout.to_json()

    # ------------------------------------------------------------------ manifest

    def _manifest(self, pub: Publication, now: float) -> tuple[str, str]:
        """The manifest of a version: its newest full snapshot and zone file,
        and the deltas leading from there (and from older retained versions)
        to this version, newest first."""
        base = self.base_of(pub)
        assert base.snapshot is not None
        assert base.rpz is not None
        expires = iso(now + self.settings.manifest_ttl) or ""
        # Every delta after the full snapshot, and older ones while retained.
        lowest = min(pub.version - self.settings.retain_deltas, base.version)
        artifacts = [
            {"kind": "snapshot", **base.snapshot.to_dict()},
            {"kind": "rpz", **base.rpz.to_dict()},
            *({"kind": "delta", **d.to_dict()} for d in self._delta_chain(pub, lowest)),
        ]
        body = {
            "schema": SCHEMA, "list": self.settings.list_name, "version": pub.version,
            "published_at": pub.published_at, "signed_at": iso(now), "expires_at": expires,
            "count": pub.count, "entries_digest": pub.entries_digest,
            "snapshot": base.snapshot.path, "rpz": base.rpz.path,
            "snapshot_version": base.version, "rpz_zone": self.settings.rpz_zone, "artifacts": artifacts,
        }
        body["key_id"] = self.key.public.id_hex
        announced = self._key_announcement()
        if announced is not None:
            body["next_key"] = announced
        text = json.dumps(body, indent=1) + "\n"
        fields = {"list": self.settings.list_name, "version": str(pub.version), "file": "manifest.json",
                  "expires": expires}
        sig = self.key.sign_bytes(text.encode(), format_trusted_comment(fields)).text()
        return text, sig

    def _delta_chain(self, pub: Publication, lowest: int) -> list[DeltaRef]:
        """Deltas reaching back from this version while they are retained."""
        out: list[DeltaRef] = []
        current: Publication | None = pub
        while current is not None and current.delta is not None and current.version > lowest:
            out.append(current.delta)
            if current.delta.frm <= lowest:
                break
            current = self.record(current.delta.frm)
        return out

    def refresh_manifest(self, force: bool = False) -> bool:
        with self.lock() as token:
            if token is None:
                return False
            return self._refresh_manifest_locked(token, force)

    def _refresh_manifest_locked(self, token: str, force: bool) -> bool:
        """Re-sign the latest manifest with a later expiry when it is due, so a
        quiet feed is never mistaken for a frozen one."""
        latest_raw = self.store.pubs.latest_raw()
        if not latest_raw:
            return False
        self._key = self.signing_key()
        latest = Latest.from_json(latest_raw)
        if latest.version < self.artifacts.highwater():
            # Restored from an older backup: never sign a manifest below a
            # published version; the next publication moves above it.
            return False
        current = self.store.pubs.manifest()
        signed_at = current[2] if current else 0
        now = self.clock()
        due = now - signed_at >= self.settings.manifest_refresh
        if not force and not due and not self._keys_changed(current[0] if current else None):
            return False
        pub = self.record(latest.version)
        if pub is None:
            return False
        body, sig = self._manifest(pub, now)

        def step(txn: Txn) -> None:
            self.store.pubs.expect(txn, latest=latest_raw, lock=token)
            self.store.pubs.set_manifest(txn, body, sig, pub.version, int(now))

        try:
            self.store.transact(step, retries=0)
        except ConflictError:
            return False  # a publication moved on meanwhile: its manifest is newer
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
        self.store.health.report_signer(self.key.public.id_hex, SIGNER_REPORT_TTL)

    # ------------------------------------------------------------------ guard

    def _hold(self, diff: Diff, base: ListState, reasons: list[str], actor: Actor) -> None:
        """Record the held publication for an admin, with its audit record, or
        raise: a hold that was not recorded must not be reported as one."""
        record = {
            "held_at": iso(self.clock()), "base_version": base.version, "base_count": base.count,
            **diff.summary(), "reasons": reasons, "sample": diff.sample(),
        }

        def step(txn: Txn) -> None:
            current = self.store.pubs.held_raw()
            held = json.loads(current) if current else None
            if held and all(held.get(k) == record[k] for k in ("base_version", "added", "removed", "changed")):
                return  # already held as it stands: nothing to write
            head = audit.head(self.store)
            self.store.pubs.expect(txn, held=current)
            self.store.pubs.set_held(txn, json.dumps(record, separators=(",", ":")))
            audit.add(txn, self.store, head, actor=actor, action="publication.hold", target="publication",
                      before=None, after=record, reason="; ".join(reasons), ts=self.clock())

        try:
            self.store.transact(step)
        except ConflictError:
            raise PublicationError("could not record the held publication (too much concurrent activity); "
                                   "nothing was published") from None
        log.warning("publication held: %s", "; ".join(reasons))

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
        decided: dict[str, Any] = {}

        def step(txn: Txn) -> None:
            current = self.store.pubs.held_raw()
            if current is None:
                raise NotFoundError("no publication is held")
            held: dict[str, Any] = json.loads(current)
            if held.get("released_by"):
                raise ConflictError(f"the held publication was already released by {held['released_by']}")
            head = audit.head(self.store)
            self.store.pubs.expect(txn, held=current)
            if decision == "release":
                held.update(released_by=actor.name, released_at=iso(self.clock()))
                self.store.pubs.set_held(txn, json.dumps(held, separators=(",", ":")))
                self._enqueue(actor, f"release: {reason}", txn)
            else:
                self.store.pubs.set_held(txn, None)
            audit.add(txn, self.store, head, actor=actor, action=f"publication.{decision}",
                      target="publication", before={k: held.get(k) for k in ("added", "removed", "changed")},
                      after={"decision": decision}, reason=reason, ts=self.clock())
            decided.clear()
            decided.update(held)

        self.store.transact(step)
        return decided

    def _drop_held(self, why: str) -> None:
        """The list no longer differs from the published version: the hold is moot."""

        def step(txn: Txn) -> None:
            current = self.store.pubs.held_raw()
            if current is None:
                return
            head = audit.head(self.store)
            self.store.pubs.expect(txn, held=current)
            self.store.pubs.set_held(txn, None)
            audit.add(txn, self.store, head, actor=SYSTEM, action="publication.unhold", target="publication",
                      after=None, reason=why, ts=self.clock())

        try:
            self.store.transact(step, retries=2)
        except ConflictError:
            log.warning("could not drop the held publication now; the next run will")

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
        self.store.pubs.set_request(request_id, self._request_payload(actor, reason, request_id, force=force,
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
        raw = self.store.pubs.result(request_id)
        if raw is None:
            return None
        result: dict[str, Any] = json.loads(raw)
        if result.get("status") != "requested":
            return result
        waited = self.clock() - float(result.get("requested_at", 0))
        limit = self.settings.publish_answer_timeout if timeout is None else timeout
        if waited < limit or not self.store.pubs.withdraw_request(request_id):
            return result
        result = {"status": "unanswered", "message": no_publisher_message(limit)}
        self.store.pubs.set_result(request_id, json.dumps(result))
        return result

    def request_result(self, request_id: str) -> dict[str, Any] | None:
        """The outcome once the publisher answered (or gave up), else None."""
        result = self.answer(request_id)
        if result is None or result.get("status") in ("requested", "working"):
            return None
        return result

    def serve_request(self) -> Outcome | None:
        """Run the oldest pending publish request, if any (the worker calls this often)."""
        taken = self.store.pubs.take_request()
        if taken is None:
            return None
        request_id, raw = taken
        req = json.loads(raw)
        self.store.pubs.set_result(request_id, json.dumps({"status": "working", "taken_at": self.clock()}))
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
            self.store.pubs.set_result(request_id, json.dumps(failed.to_dict()))
            raise
        self.store.pubs.set_result(request_id, json.dumps(outcome.to_dict()))
        return outcome

    def preview(self) -> Diff:
        """What the next publication would change (read-only)."""
        latest = self.latest_record()
        state = self._load_state(latest) if latest else ListState(0, [], [], None)
        if latest is None:
            lines, _, _ = self._full_build(fill=False)
            return diff_lists([], lines)
        return self._changes_from_feed(state, self.store.changes.peek())

    # ------------------------------------------------------------------ retention

    def _prune(self, version: int) -> None:
        """Bounded retention: the newest full snapshots and zone files, and the
        deltas of the last versions; never what the latest version needs."""
        pub = self.record(version)
        base_v = pub.base if pub else version
        for v in self.store.pubs.full_versions_older(self.settings.retain_snapshots):
            if v == base_v:
                continue
            self.artifacts.remove(f"snapshots/{v}.json")
            self.artifacts.remove(f"rpz/{v}.zone")
            self.store.pubs.drop_full(v)
        keep_delta = min(version - self.settings.retain_deltas, base_v)
        for v in range(max(1, keep_delta - 50), keep_delta + 1):
            old = self.record(v)
            if old and old.delta:
                self.artifacts.remove(old.delta.path)


def _active_line(raw: str | None) -> bytes | None:
    """The feed line of a stored record if it is active."""
    if raw is None or '"st":"active"' not in raw:
        return None
    return feed_members(raw)[0].encode()


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, produced by a thread up to ``depth`` ahead (waiting on Redis
    releases the GIL, so reading overlaps the consumer's work)."""
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((False, None))
        except BaseException as e:  # handed to the consumer
            q.put((False, e))

    t = threading.Thread(target=produce, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        t.join()


def no_publisher_message(seconds: float) -> str:
    """What "publish now" says when no publisher took the request in time."""
    return (f"no publisher answered within {seconds:g} s: is `blocklist worker` (or `blocklist serve`) running "
            "with the programme's signing key?")
