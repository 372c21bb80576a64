"""The state directory: what this client holds, and how its last runs went.

Files (the directory is private to the tool, mode 0700):

* ``state.json``: the held version, its list name, snapshot sha256 and
  ``entries_digest``, the key that signed it, the last manifest's expiry,
  and the times and outcome of the last runs;
* ``entries.jsonl``: the held list as canonical lines, exactly the bytes
  whose digest is the version's ``entries_digest`` (the base for deltas);
* ``entries.chunks``: the sorted chunk digests of ``entries.jsonl`` (see
  :mod:`client.digest`), 32 bytes each, written with it: a delta then
  hashes only the chunks it touches. Trusted only while ``entries.jsonl``
  is the file this tool wrote and their digest is the state's; otherwise
  recomputed from ``entries.jsonl``;
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
* ``entries.jsonl`` is used only if its digest is the one in ``state.json``;
  otherwise the next run fetches the full snapshot. A state written before
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
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from client import files
from client.digest import Digest
from client.errors import LocalError, LockedError
from client.listfile import Lines, find_url_start
from client.verify import Held, KeyRing

STATE_FILE = "state.json"
KEYS_FILE = "keys.json"
ENTRIES_FILE = "entries.jsonl"
CHUNKS_FILE = "entries.chunks"
PARENTS_FILE = "parents.json"
LOCK_FILE = "lock"


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
    entries_stamp: list[int] | None = None  # (size, mtime_ns, inode) of entries.jsonl as last written
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
        """The held list, or None if it is missing or does not match the state.

        Its lines were checked when they were first held. If the file is the one this tool
        last wrote (same size, time and inode), its chunk digests are read from
        ``entries.chunks`` (their digest must be the state's): a delta applied to it must
        still produce the digest the delta states, and :meth:`verify_lines` tells a damaged
        file from a bad delta. Otherwise the digest is computed from the file and must be
        the state's."""
        if state.entries_digest is None or state.count is None:
            return None
        path = self.path / ENTRIES_FILE
        try:
            data = path.read_bytes()
            st = path.stat()
        except OSError:
            return None
        digest = None
        if state.entries_stamp == [st.st_size, st.st_mtime_ns, st.st_ino]:
            digest = self._load_chunks(state.entries_digest)
        if digest is None:
            digest = Digest.of_data(data)
            if digest.hexdigest() != state.entries_digest or data.count(b"\n") != state.count:
                return None
        return Lines(data, state.count, find_url_start(data), digest)

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
        overlaps the outputs' work); :meth:`StagedLines.commit` puts them in place."""
        return StagedLines(self.path / ENTRIES_FILE, self.path / CHUNKS_FILE, lines)

    def save_lines(self, lines: Lines) -> list[int]:
        """Write the list; returns the file's (size, mtime_ns, inode) for :meth:`load_lines`."""
        return self.stage_lines(lines).commit()

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


class StagedLines:
    """``entries.jsonl`` and ``entries.chunks`` being written next to their places; renamed
    into place by :meth:`commit` (before ``state.json`` names the new digest, so a run
    stopped in between leaves files that :meth:`StateDir.load_lines` does not trust)."""

    def __init__(self, path: Path, chunks_path: Path, lines: Lines) -> None:
        self.path = path
        self.chunks_path = chunks_path
        self._staged: list[files.Staged] = []
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._write, args=(lines,), daemon=True)
        self._thread.start()

    def _write(self, lines: Lines) -> None:
        try:
            self._staged.append(files.stage(self.path, lines.data, 0o600))
            self._staged.append(files.stage(self.chunks_path, lines.digest.to_bytes(), 0o600))
        except OSError as e:
            self._error = e

    def commit(self) -> list[int]:
        """Rename into place; returns the list file's (size, mtime_ns, inode) for :meth:`StateDir.load_lines`."""
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            files.commit(self._staged)
            st = self.path.stat()
        except OSError as e:
            self.discard()
            raise LocalError(f"cannot write {self.path}: {e.strerror}") from None
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def discard(self) -> None:
        self._thread.join()
        files.discard(self._staged)
        self._staged = []
