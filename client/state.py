"""The state directory: what this client holds, and how its last runs went.

Files (the directory is private to the tool, mode 0700):

* ``state.json``: the held version, its list name, snapshot sha256 and
  ``entries_digest``, the key that signed it, the last manifest's expiry,
  and the times and outcome of the last runs;
* ``entries.jsonl``: the base of the held list, as canonical lines: the
  list as last written in full (after a snapshot or a compaction);
* ``entries.journal``: the change of each run since the base (see
  :mod:`client.journal`), appended; the held list is the base with the
  journal's net change applied, exactly the bytes whose digest is the
  version's ``entries_digest``;
* ``entries.chunks``: the sorted chunk digests of the held list (see
  :mod:`client.digest`), 32 bytes each, rewritten with every change: a
  delta then hashes only the chunks it touches. Trusted only while the base
  is the file this tool wrote, the journal's recorded bytes have their
  recorded sha256, and their digest is the state's; otherwise recomputed
  from the list;
* ``parents.json``: how many listed names sit directly under each parent
  name, for the held list (tells whether a change to a name with its
  subdomains touches names already listed under it); a cache, rebuilt
  from ``entries.jsonl`` whenever its digest differs;
* ``keys.json``: signing keys learned from signed announcements in the
  manifest, and keys retired after the programme moved to their successor
  (see :class:`client.verify.KeyRing`);
* ``lock``: held with ``flock`` by the run in progress.

What must stay true:

* The held version only goes up; it is the rollback baseline. A damaged
  ``state.json`` stops the tool with a clear message instead of being
  silently replaced (that would drop the baseline).
* The held list (base and journal) is used only if its digest is the one in
  ``state.json``; otherwise the next run fetches the full snapshot, and says
  why. ``state.json`` is replaced last in a run: until then it names the
  base and the journal length of the list before (bytes appended after that
  length are ignored); a new base renamed into place before it is a file
  whose stamp and digest are not those recorded. A state written before
  feed schema 2 has no ``entries_digest``: it keeps its version (the
  rollback baseline) but holds no list, so the next run takes a snapshot.
* ``state.json`` records, for each output and for ``entries.jsonl``, the
  size, modification time and inode of the file as written, and for each
  output the options it was written with; an output is patched in place of
  a full rewrite, and the held list used without hashing it again, only
  while these still hold (a delta must still produce the digest it states).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from client import files
from client import journal as journal_mod
from client.digest import Digest
from client.errors import LocalError, LockedError, RefusedError
from client.listfile import Lines, held_url_start
from client.verify import Held, KeyRing

STATE_FILE = "state.json"
KEYS_FILE = "keys.json"
ENTRIES_FILE = "entries.jsonl"
CHUNKS_FILE = "entries.chunks"
JOURNAL_FILE = "entries.journal"
PARENTS_FILE = "parents.json"
LOCK_FILE = "lock"
# The journal is compacted (the list written in full as the new base) when it would exceed
# 1/JOURNAL_SHARE of the base's bytes (or JOURNAL_FLOOR bytes, whichever is more) or hold
# JOURNAL_RECORDS runs: reading it back costs each run in proportion to its size.
JOURNAL_SHARE = 64
JOURNAL_FLOOR = 64 << 10
JOURNAL_RECORDS = 100


@dataclass
class State:
    list_name: str | None = None
    version: int | None = None
    published_at: str | None = None
    snapshot_sha256: str | None = None
    entries_digest: str | None = None  # None: no list held (or a state from before feed schema 2)
    count: int | None = None
    key_id: str | None = None
    manifest_signed_at: str | None = None
    manifest_expires_at: str | None = None
    applied_via: str | None = None
    last_attempt: float | None = None
    last_check: float | None = None
    last_success: float | None = None
    last_change: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_error_code: int | None = None
    reload_pending: bool = False
    wide_count: int | None = None
    # (size, mtime_ns, inode) of entries.jsonl as last written, by a tool without the journal; a
    # state with the journal leaves it empty, so such a tool hashes the base in full (and finds
    # that it is not the list held unless the journal is empty).
    entries_stamp: list[int] | None = None
    base_stamp: list[int] | None = None  # (size, mtime_ns, inode) of entries.jsonl as last written
    journal_size: int | None = None  # bytes of entries.journal that belong to the list held (None: no journal)
    journal_sha256: str | None = None  # of those bytes
    journal_records: int = 0  # runs recorded in them
    # output path -> {"fingerprint": options, "sha256": of the file as written, "count": entries in it}
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def held(self) -> Held | None:
        if self.version is None or self.list_name is None or self.count is None:
            return None
        return Held(self.list_name, self.version, self.snapshot_sha256, self.entries_digest, self.count)

    def to_json(self) -> bytes:
        return (json.dumps({"schema": 1, **asdict(self)}, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> State:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("schema") != 1:
            raise ValueError("not a schema 1 state")
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in doc.items() if k in known})
        if state.version is not None and (isinstance(state.version, bool) or not isinstance(state.version, int)):
            raise ValueError("the version is not a number")
        return state


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise LocalError(f"cannot create the state directory {self.path}: {e.strerror}") from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.ensure()
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise LocalError(f"cannot open the lock in {self.path}: {e.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(
                    f"another blocklist-pull run holds {self.path / LOCK_FILE}; try again later"
                ) from None
            yield
        finally:
            os.close(fd)

    def load(self) -> State:
        path = self.path / STATE_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as e:
            raise LocalError(f"cannot read {path}: {e.strerror}") from None
        try:
            return State.from_json(data)
        except (ValueError, TypeError):
            raise LocalError(
                f"{path} is damaged; move it away to start afresh (the next pull then accepts "
                "whatever version the feed offers, without rollback protection)"
            ) from None

    def save(self, state: State) -> None:
        try:
            files.write_atomic(self.path / STATE_FILE, state.to_json())
        except OSError as e:
            raise LocalError(f"cannot write {self.path / STATE_FILE}: {e.strerror}") from None

    def load_lines(self, state: State) -> Lines | None:
        """The held list, or None if it is missing or does not match the state."""
        held = self.load_held(state)
        return held.lines if isinstance(held, HeldList) else None

    def held_in_place(self, state: State) -> bool:
        """Whether the files of the held list look as the last run left them, without reading
        them: the base's size, modification time and inode are those recorded, and the journal
        holds at least its recorded bytes. A run with nothing new then leaves them unread; damage
        they hide is found when a change next needs the list (:meth:`load_held`)."""
        if state.entries_digest is None or state.count is None:
            return False
        stamp = state.base_stamp if state.journal_size is not None else state.entries_stamp
        try:
            st = (self.path / ENTRIES_FILE).stat()
            if stamp != [st.st_size, st.st_mtime_ns, st.st_ino]:
                return False
            return not state.journal_size or (self.path / JOURNAL_FILE).stat().st_size >= state.journal_size
        except OSError:
            return False

    def load_held(self, state: State) -> HeldList | str | None:
        """The held list (base and journal read back), or why it cannot be used (None: no list held).

        Its lines were checked when they were first held. The base is trusted as written
        while its size, modification time and inode are those recorded, and the journal
        while its first ``journal_size`` bytes have the recorded sha256; the chunk digests
        of ``entries.chunks`` are then used if their digest is the state's. A delta applied
        to the list must still produce the digest it states, and :meth:`verify_lines` tells
        a damaged file from a bad delta. Otherwise the digest of the list is computed from
        its lines and must be the state's."""
        if state.entries_digest is None or state.count is None:
            return None
        path = self.path / ENTRIES_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{path} is missing"
        except OSError as e:
            return f"cannot read {path}: {e.strerror}"
        stamp = state.base_stamp if state.journal_size is not None else state.entries_stamp
        trusted = stamp == [st.st_size, st.st_mtime_ns, st.st_ino]
        size = state.journal_size or 0
        jpath = self.path / JOURNAL_FILE
        journal = b""
        if size:
            try:
                with open(jpath, "rb") as f:
                    journal = f.read(size)
            except FileNotFoundError:
                return f"{jpath} is missing"
            except OSError as e:
                return f"cannot read {jpath}: {e.strerror}"
        jhash = hashlib.sha256(journal)
        if len(journal) != size:
            return f"{jpath} is shorter than recorded ({len(journal)} bytes of {size})"
        if size and jhash.hexdigest() != state.journal_sha256:
            return f"{jpath} does not match the sha256 recorded in {STATE_FILE}"
        try:
            net = journal_mod.read(journal)
        except ValueError as e:
            return f"{jpath} is damaged: {e}"
        digest = self._load_chunks(state.entries_digest) if trusted else None
        # The base's count follows from the list's: it is checked below unless the files are those written.
        try:
            # The base is mapped, not read: its lines are read where they are, and the changes
            # of the journal (and of a run's deltas) are put in as pieces (see listfile.Spliced).
            with open(path, "rb") as f:
                data = files.map_file(f.fileno())
        except OSError as e:
            return f"cannot read {path}: {e.strerror}"
        try:
            # The base's count follows from the list's: it is checked below unless the files are those written.
            base = Lines(data, state.count + len(net.removed) - len(net.added), held_url_start(data), Digest(()))
            lines = base.edit(net.removed, net.added, jpath.name, digest or Digest(())) if size else base
        except RefusedError as e:
            return f"{jpath} does not fit {path}: {e.message}"
        finally:
            base = None  # type: ignore[assignment]
            del data
        if digest is None:
            whole = lines.data  # hashed in full: as one bytes object, which then stands for the file
            digest = Digest.of_data(whole)
            if digest.hexdigest() != state.entries_digest or whole.count(b"\n") != state.count:
                return f"{path} and {jpath} do not give the list recorded in {STATE_FILE}" if size \
                    else f"{path} is not the list recorded in {STATE_FILE}"
            lines = Lines(whole, lines.count, lines.url_start, digest)
            trusted = False
        return HeldList(replace(lines, digest=digest), base_size=st.st_size,
                        base_stamp=[st.st_size, st.st_mtime_ns, st.st_ino], journal_size=size, journal_hash=jhash,
                        journal_records=state.journal_records if size else 0, trusted=trusted)

    def _load_chunks(self, expected: str) -> Digest | None:
        try:
            digest = Digest.from_bytes((self.path / CHUNKS_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        return digest if digest.hexdigest() == expected else None

    @staticmethod
    def verify_lines(data: bytes, state: State) -> bool:
        """True if ``data`` is the list the state holds (hashed in full)."""
        return Digest.of_data(data).hexdigest() == state.entries_digest and data.count(b"\n") == state.count

    def stage_lines(self, lines: Lines) -> StagedLines:
        """Start writing the list and its chunk digests to temp files in a thread (the write
        overlaps the outputs' work); :meth:`StagedLines.commit` puts them in place, as a new
        base with an empty journal."""
        return StagedLines(self.path / ENTRIES_FILE, self.path / CHUNKS_FILE, lines)

    def stage_change(self, held: HeldList, lines: Lines, version: int, removed: Sequence[bytes],
                     added: Sequence[bytes]) -> StagedLines | StagedJournal:
        """The list after a run's change: appended to the journal, or written in full as a new
        base (compaction) once the journal would exceed a share of the base or a number of
        records, or when the base was not the file written (it was hashed in full)."""
        record = journal_mod.record(version, removed, added)
        if held.trusted and held.journal_records < JOURNAL_RECORDS \
                and held.journal_size + len(record) <= max(held.base_size // JOURNAL_SHARE, JOURNAL_FLOOR):
            return StagedJournal(self.path / JOURNAL_FILE, self.path / CHUNKS_FILE, held, lines, record)
        return self.stage_lines(lines)

    def save_lines(self, lines: Lines) -> Stored:
        """Write the list as the base, with an empty journal; returns what the state records."""
        return self.stage_lines(lines).commit()

    def trim_journal(self, size: int) -> None:
        """Cut the journal to ``size`` bytes (those the saved state names); best effort: bytes
        past them are never read, and the next append writes over them."""
        try:
            with open(self.path / JOURNAL_FILE, "r+b") as f:
                if os.fstat(f.fileno()).st_size > size:
                    f.truncate(size)
        except OSError:
            pass

    def load_parents(self, digest: str) -> dict[str, int] | None:
        """The parent counts saved for the list with this ``entries_digest``, if any."""
        try:
            doc = json.loads((self.path / PARENTS_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("entries_digest") != digest or not isinstance(doc.get("parents"), dict):
            return None
        parents: dict[str, int] = doc["parents"]
        if not all(isinstance(v, int) for v in parents.values()):
            return None
        return parents

    def save_parents(self, digest: str, parents: dict[str, int]) -> None:
        data = json.dumps({"entries_digest": digest, "parents": parents}, separators=(",", ":")).encode()
        try:
            files.write_atomic(self.path / PARENTS_FILE, data)
        except OSError as e:
            raise LocalError(f"cannot write {self.path / PARENTS_FILE}: {e.strerror}") from None

    def load_keys(self) -> KeyRing:
        path = self.path / KEYS_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return KeyRing()
        except OSError as e:
            raise LocalError(f"cannot read {path}: {e.strerror}") from None
        try:
            return KeyRing.from_dict(json.loads(data))
        except (ValueError, TypeError, KeyError):
            raise LocalError(
                f"{path} is damaged; move it away to start afresh (the tool then trusts only the pinned keys)"
            ) from None

    def save_keys(self, ring: KeyRing) -> None:
        data = (json.dumps(ring.to_dict(), indent=1, sort_keys=True) + "\n").encode()
        try:
            files.write_atomic(self.path / KEYS_FILE, data)
        except OSError as e:
            raise LocalError(f"cannot write {self.path / KEYS_FILE}: {e.strerror}") from None


class _Staging:
    """Files staged next to their places by a thread while the run goes on
    (:func:`files.stage`); :meth:`_wait` joins it and raises what it met."""

    def __init__(self, writes: list[tuple[Path, bytes | Sequence[bytes | memoryview]]]) -> None:
        self._staged: list[files.Staged] = []
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._write, args=(writes,), daemon=True)
        self._thread.start()

    def _write(self, writes: list[tuple[Path, bytes | Sequence[bytes | memoryview]]]) -> None:
        try:
            for path, data in writes:
                self._staged.append(files.stage(path, data, 0o600))
        except OSError as e:
            self._error = e

    def _wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def discard(self) -> None:
        self._thread.join()
        files.discard(self._staged)
        self._staged = []


class StagedLines(_Staging):
    """``entries.jsonl`` and ``entries.chunks`` being written next to their places; renamed
    into place by :meth:`commit` (before ``state.json`` names the new digest, so a run
    stopped in between leaves files that :meth:`StateDir.load_lines` does not trust)."""

    def __init__(self, path: Path, chunks_path: Path, lines: Lines) -> None:
        self.path = path
        self.chunks_path = chunks_path
        super().__init__([(path, lines.parts()), (chunks_path, lines.digest.to_bytes())])

    def commit(self) -> Stored:
        """Rename into place; returns what the state records (the journal is then empty: what
        remains in its file is past the size recorded, see :meth:`StateDir.trim_journal`)."""
        try:
            self._wait()
            files.commit(self._staged)
            st = self.path.stat()
        except OSError as e:
            self.discard()
            raise LocalError(f"cannot write {self.path}: {e.strerror}") from None
        return Stored([st.st_size, st.st_mtime_ns, st.st_ino], 0, hashlib.sha256().hexdigest(), 0)


class StagedJournal(_Staging):
    """A run's change to the held list, to append to ``entries.journal``, and the new list's
    chunk digests being written next to ``entries.chunks``. :meth:`commit` appends the record
    at the end of the journal's recorded bytes (anything past them is cut first), syncs the
    journal (not the base), and renames the chunk digests into place; until ``state.json``
    records the journal's new size and sha256, the list read back is the one before."""

    def __init__(self, path: Path, chunks_path: Path, held: HeldList, lines: Lines, record: bytes) -> None:
        self.path = path
        self.chunks_path = chunks_path
        self.held = held
        self.record = record
        super().__init__([(chunks_path, lines.digest.to_bytes())])

    def commit(self) -> Stored:
        held = self.held
        try:
            self._wait()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, held.journal_size)
                os.lseek(fd, held.journal_size, os.SEEK_SET)
                view = memoryview(self.record)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            files.commit(self._staged)  # renames the chunk digests, syncs the directory (and the journal's entry)
        except OSError as e:
            self.discard()
            raise LocalError(f"cannot write {e.filename or self.path}: {e.strerror}") from None
        h = held.journal_hash.copy()
        h.update(self.record)
        return Stored(held.base_stamp, held.journal_size + len(self.record), h.hexdigest(),
                      held.journal_records + 1)


@dataclass
class Stored:
    """Where the held list is, as ``state.json`` records it."""

    base_stamp: list[int] | None
    journal_size: int
    journal_sha256: str
    journal_records: int


@dataclass
class HeldList:
    """The held list read back, and where its journal ends."""

    lines: Lines | None  # None once the caller took it
    base_size: int
    base_stamp: list[int]
    journal_size: int
    journal_hash: Any  # a hashlib sha256 of the journal's recorded bytes
    journal_records: int
    trusted: bool  # the base is the file written and the chunk digests were the list's; False: hashed in full

