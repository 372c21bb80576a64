"""The artifact store: published files under one directory.

Layout (paths are also the feed's URL paths under ``/feed/v1/``)::

    snapshots/<v>.json[.minisig]
    deltas/<from>/<to>.json[.minisig]
    rpz/<v>.zone[.minisig]
    manifest.json[.minisig]          the latest manifest (also kept in Redis)
    HIGHWATER                        the highest version number ever committed

What must stay true:

* A published file never changes. Files of a version are written to a
  private staging directory, fsync'd, and moved into place only by the
  publisher holding the lock, just before it commits the version in Redis.
* ``HIGHWATER`` is written (and fsync'd) before a version is committed, so a
  Redis restored from an older backup can never make the publisher reuse or
  lower a number: the next version is always above it.

Every host that serves the feed or runs the transfer server needs this
directory (a shared filesystem, or a copy kept in sync: files are immutable
and named by version, so ``rsync`` or an object store works).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from app.errors import NotFoundError, PublicationError

_REL = re.compile(r"(?:snapshots/\d+\.json|deltas/\d+/\d+\.json|rpz/\d+\.zone|manifest\.json)(?:\.minisig)?")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, mode: int = 0o644) -> None:
    """temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class Staging:
    """Files of one version being built; invisible until :meth:`commit`."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        store.root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(dir=store.root, prefix=".staging-"))
        self.files: list[str] = []

    def write(self, rel: str, data: bytes | str) -> None:
        if not _REL.fullmatch(rel):
            raise PublicationError(f"not an artifact path: {rel}")
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        self.files.append(rel)

    def write_parts(self, rel: str, parts: list[bytes]) -> None:
        if not _REL.fullmatch(rel):
            raise PublicationError(f"not an artifact path: {rel}")
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.writelines(parts)
            f.flush()
            os.fsync(f.fileno())
        self.files.append(rel)

    def commit(self) -> None:
        for rel in self.files:
            target = self.store.root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.dir / rel, target)
        for parent in {(self.store.root / rel).parent for rel in self.files}:
            _fsync_dir(parent)
        self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        """The file for a feed path; refuses anything that is not an artifact path."""
        if not _REL.fullmatch(rel):
            raise NotFoundError(f"no such artifact: {rel}")
        return self.root / rel

    def exists(self, rel: str) -> bool:
        try:
            return self.path(rel).is_file()
        except NotFoundError:
            return False

    def read(self, rel: str) -> bytes:
        try:
            return self.path(rel).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no such artifact: {rel}") from None

    def stage(self) -> Staging:
        return Staging(self)

    def write_now(self, rel: str, data: bytes | str) -> None:
        """Replace a mutable file (only the latest manifest is one)."""
        if rel not in ("manifest.json", "manifest.json.minisig"):
            raise PublicationError(f"{rel} is immutable once published")
        write_durably(self.path(rel), data.encode() if isinstance(data, str) else data)

    def remove(self, rel: str) -> None:
        for p in (self.path(rel), self.path(rel + ".minisig")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        for gz in (self.root / (rel + ".gz"),):
            try:
                gz.unlink()
            except FileNotFoundError:
                pass

    def highwater(self) -> int:
        try:
            text = (self.root / "HIGHWATER").read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:
            raise PublicationError(f"{self.root / 'HIGHWATER'} is damaged: {text[:40]!r}") from None

    def set_highwater(self, version: int) -> None:
        if version < self.highwater():
            raise PublicationError("the version high-water mark never goes down")
        write_durably(self.root / "HIGHWATER", f"{version}\n".encode())

    def clean_staging(self) -> None:
        """Remove staging directories left by a publisher that was killed."""
        if not self.root.exists():
            return
        for p in self.root.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)
