"""The state directory: what this client holds, and how its last runs went.

Files (the directory is private to the tool, mode 0700):

* ``state.json``: the held version, its list name, snapshot and entries
  digests, the key that signed it, the last manifest's expiry, and the
  times and outcome of the last runs;
* ``entries.jsonl``: the held list as canonical lines, exactly the bytes
  whose sha256 is the version's ``entries_sha256`` (the base for deltas);
* ``keys.json``: signing keys learned from signed announcements in the
  manifest, and keys retired after the programme moved to their successor
  (see :class:`client.verify.KeyRing`);
* ``lock``: held with ``flock`` by the run in progress.

What must stay true:

* The held version only goes up; it is the rollback baseline. A damaged
  ``state.json`` stops the tool with a clear message instead of being
  silently replaced (that would drop the baseline).
* ``entries.jsonl`` is used only if its digest is the one in ``state.json``;
  otherwise the next run fetches the full snapshot.
* Both files are replaced atomically; ``entries.jsonl`` is written before
  ``state.json`` names its digest.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from client import files
from client.errors import LocalError, LockedError, RefusedError
from client.verify import EntryList, Held, KeyRing, check_order, load_json

STATE_FILE = "state.json"
KEYS_FILE = "keys.json"
ENTRIES_FILE = "entries.jsonl"
LOCK_FILE = "lock"


@dataclass
class State:
    list_name: str | None = None
    version: int | None = None
    published_at: str | None = None
    snapshot_sha256: str | None = None
    entries_sha256: str | None = None
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

    def held(self) -> Held | None:
        if self.version is None or self.list_name is None or self.snapshot_sha256 is None \
                or self.entries_sha256 is None or self.count is None:
            return None
        return Held(self.list_name, self.version, self.snapshot_sha256, self.entries_sha256, self.count)

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

    def load_entries(self, state: State) -> EntryList | None:
        """The held list, or None if it is missing or does not match the state's digest."""
        if state.entries_sha256 is None:
            return None
        try:
            data = (self.path / ENTRIES_FILE).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != state.entries_sha256:
            return None
        lines = data.split(b"\n")[:-1] if data else []
        try:
            records = load_json(b"[" + b",".join(lines) + b"]", ENTRIES_FILE)
            check_order(records, ENTRIES_FILE)
        except RefusedError:
            return None
        # The file's bytes are the canonical lines, so their sha256 (checked
        # above) is the list's digest: no need to serialise every entry again.
        return EntryList(tuple(records), state.entries_sha256)

    def save_entries(self, entries: EntryList) -> None:
        data = "".join(f"{r.line()}\n" for r in entries.records).encode()
        try:
            files.write_atomic(self.path / ENTRIES_FILE, data)
        except OSError as e:
            raise LocalError(f"cannot write {self.path / ENTRIES_FILE}: {e.strerror}") from None

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
