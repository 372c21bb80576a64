"""The list digest (``entries_digest``): what a rebuilt list is checked against.

A version's list is its canonical lines in feed order (see
``blocklist_schema.json``). Its digest is a two-level sha256 tree that can
be updated at the cost of a change rather than of the whole list:

1. The lines are cut into chunks where their content says so: a line ends
   a chunk when the CRC-32 (``zlib.crc32``, the ISO-HDLC CRC of gzip and
   PNG) of its bytes, without the newline, is a multiple of 16; the last
   line ends the last chunk. Chunks hold 16 lines on average, and a change
   moves only the boundaries next to it.
2. A chunk's digest is the sha256 of its lines, each followed by ``"\\n"``
   (32 raw bytes).
3. ``entries_digest`` is the hex sha256 of every chunk digest, sorted as
   bytes and concatenated. The empty list's digest is ``sha256("")``.

Any change to the list changes some chunk's bytes, so two lists share a
digest only if sha256 collides. The CRC only places the cuts: someone who
chooses lines can make chunks long (slower, never wrong). Python in a few
lines::

    def entries_digest(lines):               # canonical lines, in order, no newlines
        chunks, cur = [], []
        for line in lines:
            cur.append(line + b"\\n")
            if zlib.crc32(line) % 16 == 0:
                chunks.append(hashlib.sha256(b"".join(cur)).digest()); cur = []
        if cur:
            chunks.append(hashlib.sha256(b"".join(cur)).digest())
        return hashlib.sha256(b"".join(sorted(chunks))).hexdigest()

:class:`Digest` keeps the sorted chunk digests, so that :func:`update`
recomputes only the chunks a change touches: the publisher holds its list
as a Python list of lines (:class:`ListView`), the pull tool as one bytes
buffer of lines (:class:`BlobView`).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import Protocol

#: A line ends a chunk when its CRC-32 is a multiple of this (a power of two).
SPAN = 16
_MASK = SPAN - 1
_WINDOW = 1 << 22  # bytes of a buffer split into lines at a time (bounds memory)


def ends_chunk(line: bytes | memoryview) -> bool:
    return not zlib.crc32(line) & _MASK


class Digest:
    """The sorted chunk digests of a list; :meth:`hexdigest` is its ``entries_digest``."""

    __slots__ = ("_chunks", "_hex")

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = sorted(chunks)
        self._hex: str | None = None

    @classmethod
    def of_lines(cls, lines: Sequence[bytes]) -> Digest:
        """Of a list of canonical lines (no newlines)."""
        out: list[bytes] = []
        _chunk_digests(lines, out)
        return cls(out)

    @classmethod
    def of_data(cls, data: bytes | bytearray) -> Digest:
        """Of a buffer of canonical lines, each ending in a newline; read a window at a time.

        Chunks are hashed straight from ``data`` (no copy): only the CRCs need the lines."""
        return cls.of_data_counted(data)[0]

    @classmethod
    def of_data_counted(cls, data: bytes | bytearray) -> tuple[Digest, int]:
        """:meth:`of_data`, and the number of newlines in ``data`` (its lines are read anyway)."""
        view = memoryview(data)
        newlines = 0
        sha = hashlib.sha256
        out: list[bytes] = []
        start = pos = 0  # the current chunk's start; the window's start
        size = len(data)
        while pos < size:
            nl = data.find(b"\n", pos + _WINDOW - 1) if pos + _WINDOW < size else -1
            cut = size if nl < 0 else nl + 1
            lines = data[pos:cut].split(b"\n")
            lines.pop()  # after the last newline
            newlines += len(lines)
            ends = [i for i, c in enumerate(map(zlib.crc32, lines)) if not c & _MASK]
            if ends:
                # The byte after line i of the window: the lengths of lines 0..i, plus i + 1 newlines.
                after = list(accumulate(map(len, lines)))
                for i in ends:
                    stop = pos + after[i] + i + 1
                    out.append(sha(view[start:stop]).digest())
                    start = stop
            pos = cut
        if start < size:
            out.append(sha(view[start:size]).digest())
        return cls(out), newlines

    @classmethod
    def from_bytes(cls, data: bytes) -> Digest:
        if len(data) % 32:
            raise ValueError("a chunk digest list is a multiple of 32 bytes")
        d = cls(())
        d._chunks = [data[i : i + 32] for i in range(0, len(data), 32)]
        if not all(map(bytes.__le__, d._chunks, d._chunks[1:])):
            raise ValueError("chunk digests are not sorted")
        return d

    def to_bytes(self) -> bytes:
        return b"".join(self._chunks)

    def hexdigest(self) -> str:
        if self._hex is None:  # a Digest is not changed once made (replaced() makes a new one)
            self._hex = hashlib.sha256(b"".join(self._chunks)).hexdigest()
        return self._hex

    def __len__(self) -> int:
        return len(self._chunks)

    def replaced(self, old: Iterable[bytes], new: Iterable[bytes]) -> Digest:
        """A copy with the chunk digests ``old`` taken out and ``new`` put in."""
        take = set(old)
        keep = [c for c in self._chunks if c not in take]
        if len(keep) != len(self._chunks) - len(take):
            raise ValueError("a chunk to replace is not in the digest")
        out = Digest(())
        keep.extend(new)
        keep.sort()  # two sorted runs: one merge
        out._chunks = keep
        return out


class Builder:
    """A digest built from lines given in order, a batch at a time."""

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._pending: list[bytes] = []

    def add(self, lines: Sequence[bytes]) -> None:
        self._pending = _chunk_digests(lines, self._out, self._pending, final=False)

    def finish(self) -> Digest:
        _chunk_digests([], self._out, self._pending, final=True)
        self._pending = []
        return Digest(self._out)


def _chunk_digests(lines: Sequence[bytes], out: list[bytes], pending: list[bytes] | None = None,
                   final: bool = True) -> list[bytes]:
    """Append to ``out`` the digests of the chunks ``pending + lines`` completes; return the
    lines of an unfinished last chunk (digested here too when ``final``)."""
    sha = hashlib.sha256
    crc = zlib.crc32
    ends = [i for i, c in enumerate(map(crc, lines)) if not c & _MASK]
    start = 0
    for e in ends:
        if pending:
            out.append(sha(b"\n".join(pending) + b"\n" + b"\n".join(lines[start : e + 1]) + b"\n").digest())
            pending = None
        else:
            out.append(sha(b"\n".join(lines[start : e + 1]) + b"\n").digest())
        start = e + 1
    rest = list(pending or ()) + list(lines[start:])
    if final and rest:
        out.append(sha(b"\n".join(rest) + b"\n").digest())
        return []
    return rest


# ---------------------------------------------------------------- updates


class View(Protocol):
    """A sorted list of lines addressed by positions (line starts)."""

    end: int

    def line(self, pos: int) -> bytes: ...
    def next(self, pos: int) -> int: ...
    def prev(self, pos: int) -> int: ...
    def digest(self, start: int, stop: int) -> bytes: ...
    def lines(self, start: int, stop: int) -> list[bytes]: ...


class ListView:
    """A list of lines (no newlines); positions are indices."""

    def __init__(self, lines: Sequence[bytes]) -> None:
        self.items = lines
        self.end = len(lines)

    def line(self, pos: int) -> bytes:
        return self.items[pos]

    def next(self, pos: int) -> int:
        return pos + 1

    def prev(self, pos: int) -> int:
        return pos - 1

    def digest(self, start: int, stop: int) -> bytes:
        return hashlib.sha256(b"\n".join(self.items[start:stop]) + b"\n").digest()

    def lines(self, start: int, stop: int) -> list[bytes]:
        return list(self.items[start:stop])


class Blob(Protocol):
    """Lines to read in place: bytes, a mapped file, or lines kept in pieces."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> bytes: ...
    def find(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...
    def rfind(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...


class BlobView:
    """A buffer of lines each ending in a newline; positions are byte offsets."""

    def __init__(self, data: Blob) -> None:
        self.data = data
        self.end = len(data)

    def _nl(self, pos: int) -> int:
        nl = self.data.find(b"\n", pos)
        if nl < 0:
            raise ValueError("the lines end in the middle of a line")
        return nl

    def line(self, pos: int) -> bytes:
        return self.data[pos : self._nl(pos)]

    def next(self, pos: int) -> int:
        return self._nl(pos) + 1

    def prev(self, pos: int) -> int:
        return self.data.rfind(b"\n", 0, pos - 1) + 1

    def digest(self, start: int, stop: int) -> bytes:
        views = getattr(self.data, "views", None)  # lines kept in pieces (client.listfile.Spliced)
        if views is not None:
            h = hashlib.sha256()
            for view in views(start, stop):
                h.update(view)
            return h.digest()
        return hashlib.sha256(memoryview(self.data)[start:stop]).digest()  # type: ignore[arg-type]

    def lines(self, start: int, stop: int) -> list[bytes]:
        return self.data[start : stop - 1].split(b"\n") if stop > start else []

    def chunk_start(self, pos: int) -> int:
        """:func:`_chunk_start`, reading the lines before ``pos`` a few kilobytes at a time."""
        data, window = self.data, _NEAR
        while pos > 0:
            low = max(0, pos - window)
            lines = data[low : pos - 1].split(b"\n")  # the last one ends at pos - 1
            first = 0 if low == 0 else 1  # lines[0] may have begun before low
            if len(lines) == first:
                window *= 2
                continue
            for line in reversed(lines[first:]):
                if ends_chunk(line):
                    return pos
                pos -= len(line) + 1
            if low == 0:
                return 0
        return 0

    def chunk_end(self, pos: int) -> int:
        """:func:`_chunk_end`, reading the lines from ``pos`` a few kilobytes at a time."""
        data, end, window = self.data, self.end, _NEAR
        while pos < end:
            high = min(end, pos + window)
            lines = data[pos:high].split(b"\n")
            lines.pop()  # after the window's last newline (b"" at the end of the data)
            if not lines:
                if high == end:
                    return _chunk_end_by_line(self, pos)  # no newline left (not a list of lines)
                window *= 2
                continue
            for line in lines:
                pos += len(line) + 1
                if ends_chunk(line):
                    return pos
        return pos


_NEAR = 1 << 13  # bytes read at a time around a change (a chunk is about 16 lines)


def _chunk_start(v: View, pos: int) -> int:
    if isinstance(v, BlobView):
        return v.chunk_start(pos)
    while pos > 0:
        p = v.prev(pos)
        if ends_chunk(v.line(p)):
            return pos
        pos = p
    return 0


def _chunk_end(v: View, pos: int) -> int:
    if isinstance(v, BlobView):
        return v.chunk_end(pos)
    return _chunk_end_by_line(v, pos)


def _chunk_end_by_line(v: View, pos: int) -> int:
    while pos < v.end:
        line = v.line(pos)
        pos = v.next(pos)
        if ends_chunk(line):
            return pos
    return pos


def _chunks_in(v: View, start: int, stop: int) -> list[bytes]:
    """Digests of the chunks that make up ``[start, stop)`` (whole chunks)."""
    out: list[bytes] = []
    _chunk_digests(v.lines(start, stop), out)
    return out


def update(digest: Digest, old: View, new: View, removed: Iterable[int], inserted: Iterable[int],
           locate: Callable[[bytes], int], moved: Callable[[int], int] | None = None) -> Digest:
    """The digest of ``new``, given the digest of ``old`` and how ``new`` was made from it.

    ``removed``: positions in ``old`` of the lines taken out (a line whose
    content changed is taken out and put in again); ``inserted``: positions in
    ``old`` before which each new line went (``old.end`` for the end);
    ``locate(line)``: the position in ``new`` of a line of ``old`` that is
    still there; or ``moved(pos)``, if given: the same from the line's position
    in ``old``. Only the chunks around the changes are read.
    """
    if moved is None:
        def moved(pos: int) -> int:
            return locate(old.line(pos))

    regions: list[tuple[int, int]] = []
    for pos in removed:
        a, b = _chunk_start(old, pos), _chunk_end(old, pos)
        if ends_chunk(old.line(pos)) and b < old.end:  # its chunk joins the next one
            b = _chunk_end(old, b)
        regions.append((a, b))
    for pos in inserted:
        if pos < old.end:
            regions.append((_chunk_start(old, pos), _chunk_end(old, pos)))
        elif old.end and not ends_chunk(old.line(old.prev(old.end))):
            regions.append((_chunk_start(old, old.prev(old.end)), old.end))  # the unfinished last chunk
        else:
            regions.append((old.end, old.end))
    if not regions:
        return digest
    regions.sort()
    merged = [regions[0]]
    for a, b in regions[1:]:
        if a <= merged[-1][1]:  # overlapping or touching: one region
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    take: list[bytes] = []
    put: list[bytes] = []
    for a, b in merged:
        take += _chunks_in(old, a, b)
        # The lines either side of a region are unchanged (they belong to chunks no change touched).
        na = 0 if a == 0 else new.next(moved(old.prev(a)))
        nb = new.end if b >= old.end else moved(b)
        put += _chunks_in(new, na, nb)
    return digest.replaced(take, put)
