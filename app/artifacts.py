"""The artifact store: published files, kept in Redis, cached on each host.

Paths (also the feed's URL paths under ``/feed/v1/``)::

    snapshots/<v>.json[.minisig]
    deltas/<from>/<to>.json[.minisig]
    rpz/<v>.zone[.minisig]
    manifest.json[.minisig]          the latest manifest (kept in Redis by the publisher)

What must stay true:

* Redis is the system of record for artifact bytes too. An artifact is a
  blob addressed by its sha256, compressed (zstd; the codec is recorded)
  in chunks of at
  most :data:`CHUNK` raw bytes, and an index entry ``path -> ArtifactRef``.
  Every host that serves the feed or runs the transfer server reads the same
  bytes from the same Redis, so any number of them serve identical feeds.
* A published artifact never changes. Blobs are uploaded under a temporary
  name, renamed to their content address with an expiry, and only the
  publisher's commit (the same atomic step that makes the version visible)
  writes their index entries and removes that expiry: a publisher killed
  before it commits leaves nothing visible, and its blobs expire by
  themselves. Content addresses never collide between paths: every artifact
  names its own version and path inside it.
* Reads check the sha256 and size recorded in the index; a damaged blob or
  cache file is never served.
* The local directory (``BLOCKLIST_ARTIFACT_DIR``) is only a cache: files
  there may be deleted at any time and are refilled from Redis on demand
  (nginx offload serves them with ``X-Accel-Redirect``); files that
  retention removed from Redis are swept from it every few minutes.
* The version high-water mark is kept in Redis and in a ``HIGHWATER`` file
  on the publisher's host: a Redis restored from an older backup can never
  make that publisher reuse or lower a number.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.errors import NotFoundError, PublicationError

if TYPE_CHECKING:
    from app.store import Store, Txn

import zstandard

_REL = re.compile(r"(?:snapshots/\d+\.json|deltas/\d+/\d+\.json|rpz/\d+\.zone|manifest\.json)(?:\.minisig)?")
#: Raw bytes per chunk: Redis values stay far below their 512 MB limit and
#: one chunk is one short round trip.
CHUNK = 4 << 20
#: Blobs not (yet) committed by a publication expire after this many seconds.
ORPHAN_TTL = 86400
#: A host's cache drops files that retention removed from Redis this often.
SWEEP_EVERY = 600.0
#: zstd compresses a feed several times faster than zlib, at a better ratio;
#: refs record their codec, so zlib blobs stay readable.
CODEC = "zstd"


def compress(data: bytes | memoryview) -> bytes:
    return bytes(zstandard.ZstdCompressor(level=1).compress(data))


def decompress(codec: str, data: bytes) -> bytes:
    if codec == "zstd":
        return bytes(zstandard.ZstdDecompressor().decompress(data))
    if codec == "zlib":
        return zlib.decompress(data)
    raise PublicationError(f"unknown artifact codec {codec!r}")


def check_rel(rel: str) -> str:
    if not _REL.fullmatch(rel):
        raise NotFoundError(f"no such artifact: {rel}")
    return rel


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact's bytes are, and what they must hash to."""

    path: str
    sha256: str
    size: int
    codec: str
    chunks: int

    def to_json(self) -> str:
        return json.dumps({"path": self.path, "sha256": self.sha256, "size": self.size, "codec": self.codec,
                           "chunks": self.chunks}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> ArtifactRef:
        d = json.loads(raw)
        return cls(path=str(d["path"]), sha256=str(d["sha256"]), size=int(d["size"]), codec=str(d["codec"]),
                   chunks=int(d["chunks"]))


def _write_file(path: Path, parts: Sequence[bytes | memoryview], mode: int = 0o644) -> None:
    """A cache file: temp file in the same directory, then rename (no fsync:
    a cache lost in a crash is refilled from Redis)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(parts)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Staging:
    """Artifacts of one version being built: uploaded, but invisible until the
    publication's commit adds :meth:`commit_ops` to its atomic step."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.refs: list[ArtifactRef] = []
        self._cache: list[tuple[str, list[bytes]]] = []

    def write(self, rel: str, data: bytes | str) -> ArtifactRef:
        return self.write_parts(rel, [data.encode() if isinstance(data, str) else data])

    def write_parts(self, rel: str, parts: list[bytes]) -> ArtifactRef:
        if not _REL.fullmatch(rel) or rel.startswith("manifest.json"):
            raise PublicationError(f"not an artifact path: {rel}")
        ref = self.store.upload(rel, parts)
        self.refs.append(ref)
        self._cache.append((rel, parts))
        return ref

    def commit_ops(self, txn: Txn) -> None:
        self.store.store.artifacts.index_put(txn, [(r.path, r.sha256, r.to_json()) for r in self.refs])

    def finish(self) -> None:
        """After the commit: this host's cache gets the files it just published,
        large ones (full snapshots and zone files) in the background: the
        version is already served from Redis, and a request for a file still
        being written waits for it (:meth:`ArtifactStore.path`)."""
        small: list[tuple[str, list[bytes]]] = []
        large: list[tuple[str, list[bytes]]] = []
        for rel, parts in self._cache:
            (large if sum(len(p) for p in parts) >= self.store.background_bytes else small).append((rel, parts))
        self._cache = []
        self.store.write_cache(small)
        if large:
            self.store.write_cache_later(large)

    def abort(self) -> None:
        self._cache.clear()


class ArtifactStore:
    """Published artifacts in Redis with a local, disposable file cache."""

    #: A published file at least this large is written to the cache in the background.
    background_bytes = 8 << 20

    def __init__(self, root: Path, store: Store) -> None:
        self.root = Path(root)
        self.store = store
        self._verified: set[tuple[str, str]] = set()
        self._fill_lock = threading.Lock()
        self._swept = time.monotonic()
        self._writers: list[threading.Thread] = []

    # ------------------------------------------------------------ the cache

    def write_cache(self, files: Sequence[tuple[str, list[bytes]]]) -> None:
        """Write published files to this host's cache (under the lock that
        :meth:`path` fills it under, so a reader never sees half of one)."""
        with self._fill_lock:
            for rel, parts in files:
                try:
                    _write_file(self.root / rel, parts)
                except OSError:
                    pass  # a cache: the file is filled from Redis on first use

    def write_cache_later(self, files: Sequence[tuple[str, list[bytes]]]) -> None:
        writer = threading.Thread(target=self.write_cache, args=(list(files),), name="artifact-cache")
        self._writers = [w for w in self._writers if w.is_alive()]
        self._writers.append(writer)
        writer.start()

    def settle(self) -> None:
        """Wait until the cache files being written in the background are written."""
        for writer in list(self._writers):
            writer.join()

    # ------------------------------------------------------------ writing

    def stage(self) -> Staging:
        return Staging(self)

    def upload(self, rel: str, parts: list[bytes]) -> ArtifactRef:
        """Hash, compress and upload one artifact's bytes (invisible until committed)."""
        # Chunks are independent compressed frames read back in order, so
        # each part is cut on its own: no copy of a large artifact is made.
        views = [memoryview(p) for p in parts if len(p)]
        pieces = [v[i : i + CHUNK] for v in views for i in range(0, len(v), CHUNK)] or [memoryview(b"")]
        size = sum(len(v) for v in views)
        sha = hashlib.sha256()

        def digest() -> None:
            for v in views:
                sha.update(v)

        hasher = threading.Thread(target=digest)
        hasher.start()
        # zstd and zlib release the GIL: chunks compress on every core.
        if len(pieces) > 1:
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                chunks = list(pool.map(compress, pieces))
        else:
            chunks = [compress(pieces[0])]
        hasher.join()
        sha_hex = sha.hexdigest()
        self.store.artifacts.blob_put(sha_hex, chunks, ORPHAN_TTL)
        return ArtifactRef(path=rel, sha256=sha_hex, size=size, codec=CODEC, chunks=len(chunks))

    def write_now(self, rel: str, data: bytes | str) -> None:
        """The latest manifest as a cache file (its record of truth is in Redis)."""
        if rel not in ("manifest.json", "manifest.json.minisig"):
            raise PublicationError(f"{rel} is immutable once published")
        _write_file(self.root / rel, [data.encode() if isinstance(data, str) else data])

    def remove(self, rel: str) -> None:
        """Drop an artifact and its signature (retention), here and in Redis."""
        rels = [check_rel(rel), rel + ".minisig"]
        refs = self.refs(rels)
        self.store.artifacts.remove(rels, [r.sha256 for r in refs.values()])
        for r in rels:
            for p in (self.root / r, self.root / (r + ".gz")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

    # ------------------------------------------------------------ reading

    def ref(self, rel: str) -> ArtifactRef | None:
        raw = self.store.artifacts.index_get(check_rel(rel))
        return ArtifactRef.from_json(raw) if raw else None

    def refs(self, rels: Sequence[str]) -> dict[str, ArtifactRef]:
        raws = self.store.artifacts.index_many(list(rels))
        return {rel: ArtifactRef.from_json(raw) for rel, raw in zip(rels, raws, strict=True) if raw}

    def exists(self, rel: str) -> bool:
        try:
            return self.ref(rel) is not None
        except NotFoundError:
            return False

    def read(self, rel: str) -> bytes:
        """The bytes of a published artifact, from Redis, checked against their sha256."""
        ref = self.ref(rel)
        if ref is None:
            raise NotFoundError(f"no such artifact: {rel}")
        return self._fetch(ref)

    def _fetch(self, ref: ArtifactRef) -> bytes:
        chunks = self.store.artifacts.blob_get(ref.sha256)
        if len(chunks) != ref.chunks:
            raise NotFoundError(f"the stored bytes of {ref.path} are missing")
        data = b"".join(decompress(ref.codec, c) for c in chunks)
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise PublicationError(f"{ref.path} does not match the sha256 recorded at publication")
        return data

    def path(self, rel: str) -> Path:
        """The local cache file of an artifact, filled from Redis when missing or wrong."""
        if rel.startswith("manifest.json"):
            return self._manifest_path(rel)
        ref = self.ref(rel)
        if ref is None:
            raise NotFoundError(f"no such artifact: {rel}")
        path = self.root / rel
        key = (rel, ref.sha256)
        if key in self._verified and path.is_file():
            return path
        with self._fill_lock:
            if not self._cache_ok(path, ref):
                _write_file(path, [self._fetch(ref)])
                gz = path.with_name(path.name + ".gz")
                gz.unlink(missing_ok=True)  # made from the old file: make it again
            self._verified.add(key)
        if time.monotonic() - self._swept > SWEEP_EVERY:
            self.sweep_cache()
        return path

    def sweep_cache(self) -> int:
        """Delete cached files whose artifact retention removed from Redis
        (each host's cache stays as bounded as Redis); returns how many."""
        self._swept = time.monotonic()
        if not self.root.is_dir():
            return 0
        files: dict[str, list[Path]] = {}
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(self.root).as_posix()
            base = rel.removesuffix(".gz")
            if base.startswith("manifest.json") or not _REL.fullmatch(base):
                continue
            files.setdefault(base, []).append(path)
        rels = sorted(files)
        gone = 0
        for start in range(0, len(rels), 1000):
            chunk = rels[start : start + 1000]
            for rel, raw in zip(chunk, self.store.artifacts.index_many(chunk), strict=True):
                if raw is None:
                    for path in files[rel]:
                        path.unlink(missing_ok=True)
                        gone += 1
        self._verified = {k for k in self._verified if k[0] not in files or (self.root / k[0]).exists()}
        return gone

    @staticmethod
    def _cache_ok(path: Path, ref: ArtifactRef) -> bool:
        try:
            if path.stat().st_size != ref.size:
                return False
            sha = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    sha.update(block)
            return sha.hexdigest() == ref.sha256
        except OSError:
            return False

    def _manifest_path(self, rel: str) -> Path:
        m = self.store.pubs.manifest()
        if m is None:
            raise NotFoundError("nothing has been published yet")
        body, sig, _ = m
        _write_file(self.root / "manifest.json", [body.encode()])
        _write_file(self.root / "manifest.json.minisig", [sig.encode()])
        return self.root / rel

    # ------------------------------------------------------------ versions

    def highwater(self) -> int:
        """The highest version ever committed, by Redis or by this host."""
        return max(self.local_highwater(), self.store.pubs.highwater())

    def local_highwater(self) -> int:
        try:
            text = (self.root / "HIGHWATER").read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            return int(text)
        except ValueError:
            raise PublicationError(f"{self.root / 'HIGHWATER'} is damaged: {text[:40]!r}") from None

    def set_highwater(self, version: int) -> None:
        if version < self.local_highwater():
            raise PublicationError("the version high-water mark never goes down")
        write_durably(self.root / "HIGHWATER", f"{version}\n".encode())
        self.store.pubs.raise_highwater(version)
