"""Durable file replacement: temp file in the same directory, fsync, rename, fsync the directory.

A reader (a resolver reloading its configuration) sees the old file or the
new one, never a mix. :func:`stage` prepares every new file first; only when
all of them are written and synced does :func:`commit` rename them into
place, so a full disk or a permission error leaves every output as it was.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Staged:
    path: Path
    tmp: Path


def stage(path: Path, data: bytes | Sequence[bytes | memoryview], mode: int) -> Staged:
    """Write ``data`` (bytes, or parts written one after another) to a synced temp file
    next to ``path``; raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for part in [data] if isinstance(data, bytes | bytearray) else data:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        _unlink(Path(tmp))
        raise
    return Staged(path, Path(tmp))


class StagedWriter:
    """A temp file next to ``path`` written in pieces; :meth:`finish` syncs it (raises OSError)."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        self.mode = mode
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> None:
        self.file.write(data)

    def finish(self) -> Staged:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.tmp, self.mode)
        except BaseException:
            self.abandon()
            raise
        return Staged(self.path, self.tmp)

    def abandon(self) -> None:
        try:
            self.file.close()  # may try to write what is buffered, and fail again
        except OSError:
            pass
        finally:
            _unlink(self.tmp)

    def copy(self, source: int, start: int, stop: int) -> None:
        """Append bytes ``start`` to ``stop`` of the open file ``source`` (a descriptor), copied
        by the kernel where it can (``copy_file_range``); raises OSError."""
        self.file.flush()
        dst = self.file.fileno()
        while start < stop:
            n = _copy_range(source, dst, start, stop - start)
            if n == 0:
                raise OSError(errno.EIO, "the file to copy from ended early (it changed while it was read)")
            start += n

    def finish_in_background(self, parts: Sequence[bytes | tuple[int, int]] = (), source: int | None = None) -> None:
        """Start writing ``parts`` (bytes, and (start, stop) ranges of the file open as
        ``source``, which is closed afterwards), then :meth:`finish`, in a thread, so the
        writes and the sync overlap what the caller does next; :meth:`finished` waits for it."""
        self._result: Staged | OSError | None = None
        self._thread = threading.Thread(target=self._finish, args=(list(parts), source), daemon=True)
        self._thread.start()

    def _finish(self, parts: list[bytes | tuple[int, int]], source: int | None) -> None:
        try:
            try:
                for part in parts:
                    if isinstance(part, tuple):
                        if source is None:
                            raise ValueError("a range to copy needs a file to copy it from")
                        self.copy(source, *part)
                    else:
                        self.write(part)
            except OSError:
                self.abandon()
                raise
            finally:
                if source is not None:
                    os.close(source)
            self._result = self.finish()
        except OSError as e:  # the temp file is removed
            self._result = e

    def finished(self) -> Staged:
        """The staged file once :meth:`finish_in_background` is done; raises its OSError."""
        self._thread.join()
        if isinstance(self._result, OSError):
            raise self._result
        assert self._result is not None
        return self._result


class Spooler:
    """Writes pieces to staged files in a thread, in the order given, so that the writes overlap
    the caller's work (a write releases the GIL); at most ``depth`` pieces wait."""

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[tuple[StagedWriter, bytes] | None] = queue.Queue(maxsize=depth)
        self._error: OSError | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def write(self, writer: StagedWriter, data: bytes) -> None:
        """Queue ``data`` for ``writer``; raises the OSError of a write that already failed."""
        if self._error is not None:
            raise self._error
        self._queue.put((writer, data))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            writer, data = item
            if self._error is None and not self._stop:
                try:
                    writer.write(data)
                except OSError as e:
                    if e.filename is None:
                        e.filename = str(writer.path)
                    self._error = e

    def close(self) -> None:
        """Wait until every piece is written; raises the OSError of the first write that failed
        (its filename: the output's)."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Stop writing (what waits is dropped) and wait for the thread to end."""
        self._stop = True
        self._queue.put(None)
        self._thread.join()


_kernel_copy = {"works": hasattr(os, "copy_file_range")}


def _copy_range(src: int, dst: int, offset: int, count: int) -> int:
    """Copy up to ``count`` bytes at ``offset`` of ``src`` to the position of ``dst``; the
    number copied (0 at the end of ``src``)."""
    if _kernel_copy["works"]:
        try:
            return os.copy_file_range(src, dst, count, offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            _kernel_copy["works"] = False  # not on this system or file system: read and write instead
    data = os.pread(src, min(count, 1 << 20), offset)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)


def map_file(fd: int) -> mmap.mmap | bytes:
    """The open file's bytes as a read-only map (each page is read when used; nothing is
    copied), or b"" for an empty file; raises OSError."""
    if os.fstat(fd).st_size == 0:
        return b""
    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def commit(staged: Iterable[Staged]) -> None:
    """Rename every staged file into place, then sync the directories."""
    dirs: set[Path] = set()
    for s in staged:
        os.replace(s.tmp, s.path)
        dirs.add(s.path.parent)
    for d in dirs:
        fsync_dir(d)


def discard(staged: Iterable[Staged]) -> None:
    for s in staged:
        _unlink(s.tmp)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    s = stage(path, data, mode)
    try:
        commit([s])
    except BaseException:
        discard([s])
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
