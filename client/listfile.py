"""The held list as bytes: canonical lines, checked and patched in bulk. No I/O.

A million entries as Python objects cost gigabytes and seconds; as one
``bytes`` of canonical JSON lines (the form the feed's ``entries_digest``
is computed over, see :mod:`client.digest`) they cost their size, and the
checks below run inside the regular-expression engine and ``hashlib``
rather than once per entry in Python. What must stay true:

* A :class:`Lines` holds only lines that passed the same rules as
  :func:`client.verify.make_record`: a domain line matches one pattern that
  spells out the canonical form and the host-name rules (LDH labels, at
  least two, no numeric last label, at most 253 characters); the few URL
  lines are checked one by one with ``make_record`` and must serialise back
  to the same bytes. Every line is checked, or the whole list is refused.
* Lines are strictly increasing by (type, value) (the feed's order, so no
  duplicates), and domain lines come before URL lines.
* A delta is applied only to the list it was made from: every removed line
  must be present byte for byte, no added key may already be present, and
  the result must carry the digest and count the delta states. The digest
  is updated from the held one by hashing again only the chunks around the
  change (:func:`client.digest.update`).
* The snapshot's fast path reads the layout the publisher writes (a head
  object, then one entry a line); any other layout falls back to the strict
  JSON reader in :mod:`client.verify`, so a valid snapshot is never refused
  for its formatting.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from operator import itemgetter
from typing import Any, NoReturn, Protocol

from client.digest import BlobView, Digest, update
from client.errors import RefusedError
from client.verify import (
    ArtifactRef,
    Delta,
    Manifest,
    Record,
    load_json,
    parse_snapshot,
    parse_time,
    schema_error,
)


class Buffer(Protocol):
    """Lines to search: bytes, or an mmap of a file."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> bytes: ...
    def find(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...
    def rfind(self, sub: bytes, start: int = ..., end: int = ..., /) -> int: ...


# Atomic: a label, once matched, is not taken apart again (same language, less backtracking).
_LABEL = rb"(?>[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
_ISO = rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
# One canonical domain line, host-name rules included (see verify.is_domain).
_DOMAIN_LINE = re.compile(
    rb'\{"type":"domain","value":"(?=[^"\n]{1,253}")(?:' + _LABEL + rb"\.)++(?!(?:[0-9]+|0x[0-9a-f]*)\")"
    + _LABEL + rb'","subdomains":(?:true|false),"category":"[a-z0-9][a-z0-9-]{0,31}","listed_since":"'
    + _ISO + rb'","verified_at":"' + _ISO + rb'"\}\n'
)
# The lines _DOMAIN_LINE matches, found in one pass that also gives each line's name: a label is
# 1 to 63 of [a-z0-9-], not starting or ending with "-" (the labels of _LABEL, taken whole), and
# the names found must be at most 253 characters long (what the lookahead of _DOMAIN_LINE checks).
# Each match is one whole line (it starts at a line's start and ends with its newline), so the
# lines are all valid when there are as many matches as lines; when not, _DOMAIN_LINE finds the
# first line that is not and says what is wrong with it.
# What it gives for a line is the name and the first letter of its subdomains flag, as
# 'NAME","subdomains":t' (one object a line, split below by operations that run in C).
_WHOLE_LABEL = rb"(?!-)[a-z0-9-]{1,63}+(?<!-)"
_DOMAIN_LINES = re.compile(
    rb'^\{"type":"domain","value":"((?:' + _WHOLE_LABEL + rb"\.)++(?!(?:[0-9]+|0x[0-9a-f]*)\")" + _WHOLE_LABEL
    + rb'","subdomains":[tf])(?:(?<=t)rue|(?<=f)alse),"category":"[a-z0-9][a-z0-9-]{0,31}","listed_since":"'
    + _ISO + rb'","verified_at":"' + _ISO + rb'"\}\n', re.MULTILINE
)
_NAME_OF = itemgetter(slice(None, -len(b'","subdomains":t')))
_FLAG_OF = itemgetter(-1)
_NAME_MAX = 253
_CHECK_WINDOW = 1 << 22  # bytes of lines checked at a time (bounds the objects alive at once)
# The canary's names (see client.check): no entry may take them.
RESERVED = (b"version.canary", b"blocked.canary")
_VALUE = re.compile(rb'"value":"([^"\n]*)"')
_URL_START = b'{"type":"url",'
_DOMAIN_START = b'{"type":"domain",'
_ENTRIES_OPEN = b',"entries":[\n'
_ENTRIES_CLOSE = b"\n]}\n"
_HEAD_MAX = 1 << 16  # a snapshot's head line is a few hundred bytes
_SNAPSHOT_HEAD_KEYS = frozenset({"schema", "list", "version", "published_at", "expires_at", "previous_version",
                                 "previous_sha256", "count", "entries_digest"})


def _key(line: bytes) -> tuple[bytes, bytes]:
    """(type, value) of a canonical line (``{"type":"T","value":"V",...``)."""
    t_end = line.index(b'"', 9)
    v_start = t_end + 11  # past '","value":"'
    return line[9:t_end], line[v_start : line.index(b'"', v_start)]


def _record_key(r: Record) -> tuple[bytes, bytes]:
    return r.type.encode(), r.value.encode()


def record_line(r: Record) -> bytes:
    return r.line().encode() + b"\n"


class Spliced:
    """Lines left where they already are: ranges of other buffers (the mapped file of the list
    held, the lines a change puts in), read like one bytes object without being joined. Every
    range is whole lines, so a search for text that holds no newline (but perhaps at its end)
    never has to look across two of them."""

    def __init__(self, pieces: Iterable[tuple[Buffer, int, int]]) -> None:
        self._bufs: list[Buffer] = []
        self._lows: list[int] = []
        self._starts: list[int] = []  # where each range starts here
        size = 0
        for buf, a, b in pieces:
            if b > a:
                self._bufs.append(buf)
                self._lows.append(a)
                self._starts.append(size)
                size += b - a
        self._size = size
        self._ends = [*self._starts[1:], size]

    def __len__(self) -> int:
        return self._size

    def _forward(self, start: int, stop: int) -> Iterator[tuple[Buffer, int, int, int]]:
        """(buffer, from, to, shift) of each range that bytes start..stop come from, in order;
        an offset here is an offset in the buffer less ``shift``."""
        i = bisect_right(self._starts, start) - 1
        while 0 <= i < len(self._bufs) and self._starts[i] < stop:
            shift = self._lows[i] - self._starts[i]
            yield self._bufs[i], max(start, self._starts[i]) + shift, min(stop, self._ends[i]) + shift, shift
            i += 1

    def _backward(self, start: int, stop: int) -> Iterator[tuple[Buffer, int, int, int]]:
        i = bisect_right(self._starts, stop - 1) - 1
        while i >= 0 and self._ends[i] > start:
            shift = self._lows[i] - self._starts[i]
            yield self._bufs[i], max(start, self._starts[i]) + shift, min(stop, self._ends[i]) + shift, shift
            i -= 1

    def pieces(self, start: int = 0, stop: int | None = None) -> list[tuple[Buffer, int, int]]:
        """The ranges of other buffers that bytes ``start`` to ``stop`` are."""
        stop = self._size if stop is None else min(stop, self._size)
        return [(buf, a, b) for buf, a, b, _ in self._forward(start, stop)] if start < stop else []

    def views(self, start: int = 0, stop: int | None = None) -> list[memoryview]:
        return [memoryview(buf)[a:b] for buf, a, b in self.pieces(start, stop)]  # type: ignore[arg-type]

    def join(self) -> bytes:
        return b"".join(self.views())

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, step = index.indices(self._size)
        if step != 1:
            raise ValueError("a slice of lines has no step")
        parts = [bytes(buf[a:b]) for buf, a, b in self.pieces(start, stop)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def find(self, sub: bytes, start: int = 0, end: int | None = None, /) -> int:
        _one_line(sub)
        start, end, _ = slice(start, end).indices(self._size)
        for buf, a, b, shift in self._forward(start, end) if start < end else ():
            i = buf.find(sub, a, b)
            if i >= 0:
                return i - shift
        return -1

    def rfind(self, sub: bytes, start: int = 0, end: int | None = None, /) -> int:
        _one_line(sub)
        start, end, _ = slice(start, end).indices(self._size)
        for buf, a, b, shift in self._backward(start, end) if start < end else ():
            i = buf.rfind(sub, a, b)
            if i >= 0:
                return i - shift
        return -1


def _one_line(sub: bytes) -> None:
    if not sub or b"\n" in sub[:-1]:
        raise ValueError("a search in lines kept in pieces must be for text within one line")


def hash_range(data: Buffer, start: int, stop: int) -> bytes:
    """The sha256 of bytes ``start`` to ``stop`` of ``data``, read in place."""
    if isinstance(data, Spliced):
        h = hashlib.sha256()
        for view in data.views(start, stop):
            h.update(view)
        return h.digest()
    return hashlib.sha256(memoryview(data)[start:stop]).digest()  # type: ignore[arg-type]


def joined(data: Buffer) -> bytes:
    """``data`` as one bytes object (bytes and bytearrays as they are)."""
    if isinstance(data, bytes | bytearray):
        return data  # (a bytearray reads like bytes)
    if isinstance(data, Spliced):
        return data.join()
    return data[0 : len(data)]


@dataclass(frozen=True)
class Lines:
    """A checked list: ``buf`` is every canonical line, each ending in a newline, as bytes or
    where the lines already are (the mapped file of the list held and the lines of the changes
    since, see :class:`Spliced`); :attr:`data` gives them as one bytes object."""

    buf: Buffer
    count: int
    url_start: int  # offset of the first URL line (len(buf) if none)
    digest: Digest = field(compare=False)  # its entries_digest, as sorted chunk digests
    # The domain names, in order, when they were read anyway (by check): saves reading them again.
    _values: list[bytes] | None = field(default=None, compare=False, repr=False)
    _flags: bytes | None = field(default=None, compare=False, repr=False)  # their subdomains flags, b"t" or b"f"
    _joined: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def data(self) -> bytes:
        """The lines as one bytes object: joined (once) when they are kept in pieces. Only a
        rendering in full and the checks of a list that failed need them so."""
        if isinstance(self.buf, bytes | bytearray):
            return self.buf  # (a bytearray reads like bytes)
        if not self._joined:
            self._joined.append(joined(self.buf))
        return self._joined[0]

    def parts(self) -> Sequence[bytes | memoryview]:
        """The lines as pieces to write one after another."""
        if isinstance(self.buf, Spliced):
            return self.buf.views()
        if isinstance(self.buf, bytes | bytearray):
            return [self.buf]
        return [memoryview(self.buf)]  # type: ignore[arg-type]  # a mapped file

    # ------------------------------------------------------------ building

    @classmethod
    def check(cls, data: bytes, what: str, *, count: int | None = None) -> Lines:
        """``data`` as a list, if every line is canonical, valid and in order."""
        if data and not data.endswith(b"\n"):
            raise RefusedError(f"{what} does not end with a complete line")
        url_start = find_url_start(data)
        domains = memoryview(data)[:url_start]
        # Computed first (it never fails), for it counts the lines on the way.
        digest, newlines = Digest.of_data_counted(data)
        values: list[bytes] = []
        flags = bytearray()
        pos = 0
        while pos < url_start:
            cut = data.find(b"\n", pos + _CHECK_WINDOW - 1) + 1 if pos + _CHECK_WINDOW < url_start else url_start
            found = _DOMAIN_LINES.findall(domains[pos:cut])
            values += map(_NAME_OF, found)
            flags += bytes(map(_FLAG_OF, found))
            pos = cut
        n = newlines - data.count(b"\n", url_start)
        if len(values) != n or (values and max(map(len, values)) > _NAME_MAX):
            _refuse_domain_lines(domains, what)
        if not all(map(bytes.__lt__, values, values[1:])):
            raise RefusedError(f"{what} is not in canonical order or repeats an entry")
        url_lines = data[url_start:].split(b"\n")[:-1]
        previous = b""
        for line in url_lines:
            r = _explain(line, what)
            if r.type != "url" or record_line(r) != line + b"\n":
                raise RefusedError(f"{what} holds an entry that is not in canonical form")
            if previous and _key(line) <= _key(previous):
                raise RefusedError(f"{what} is not in canonical order or repeats {r.value[:80]!r}")
            previous = line
        total = n + len(url_lines)
        if count is not None and total != count:
            raise RefusedError(f"{what} holds {total} entries, but {count} are stated")
        lines = cls(data, total, url_start, digest, values, bytes(flags))
        lines.refuse_reserved(what)
        return lines

    @classmethod
    def of_records(cls, records: Iterable[Record]) -> Lines:
        return cls.check(b"".join(record_line(r) for r in records), "the list")

    # ------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self.count

    def domain_values(self) -> list[bytes]:
        if isinstance(self.buf, Spliced):
            out: list[bytes] = []
            for view in self.buf.views(0, self.url_start):
                out += domain_values(view)
            return out
        return domain_values(memoryview(self.buf)[: self.url_start])  # type: ignore[arg-type]

    def cached_values(self) -> list[bytes] | None:
        return self._values

    def cached_flags(self) -> bytes | None:
        """The subdomains flag of each domain line (b"t" or b"f"), when the check read them."""
        return self._flags

    def url_records(self) -> list[Record]:
        return [_record(line) for line in self.buf[self.url_start : len(self.buf)].split(b"\n")[:-1]]

    def find(self, key: tuple[bytes, bytes]) -> tuple[int, bool]:
        """(offset of the first line whose key is >= ``key``, whether it is equal)."""
        return lower_bound(self.buf, key, _key)

    def line_of(self, key: tuple[bytes, bytes]) -> bytes | None:
        at, found = self.find(key)
        return self.buf[at : _line_end(self.buf, at)] if found else None

    def refuse_reserved(self, what: str) -> None:
        """The canary's names belong to the canary: an entry taking one would make the
        rpz, unbound and dnsmasq outputs contradict themselves (and hide the version)."""
        for name in RESERVED:
            if self.find((b"domain", name))[1]:
                raise RefusedError(f"{what} lists {name.decode()!r}, a name reserved for the canary")

    def wide_among(self, values: Iterable[bytes]) -> set[bytes]:
        """The names among ``values`` that are listed with their subdomains (one pass of searches)."""
        names = sorted(set(values))
        out: set[bytes] = set()
        for name, (at, found) in zip(names, lower_bounds(self.buf, [(b"domain", n) for n in names], _key),
                                     strict=True):
            if found and b'"subdomains":true,' in self.buf[at : _line_end(self.buf, at)]:
                out.add(name)
        return out

    def is_wide(self, value: bytes) -> bool:
        line = self.line_of((b"domain", value))
        return line is not None and b'"subdomains":true,' in line

    # ------------------------------------------------------------ deltas

    def apply(self, delta: Delta, ref: ArtifactRef, base_version: int, base_snapshot_sha256: str | None) -> Lines:
        """The list after ``delta``; refused unless it was made from exactly this list."""
        what = ref.path
        if delta.from_version != base_version or delta.from_version != ref.from_version \
                or delta.to_version != ref.to_version:
            raise RefusedError(
                f"{what} goes from version {delta.from_version} to {delta.to_version}, "
                f"but the version held is {base_version}: refusing a delta made from another base"
            )
        # Either side may be unknown (a version published as a delta only); the
        # removed lines, the count and the resulting digest still pin the base.
        if delta.from_sha256 is not None and base_snapshot_sha256 is not None \
                and delta.from_sha256 != base_snapshot_sha256:
            raise RefusedError(
                f"{what} was made from a different version {base_version} than the one held "
                "(its from_sha256 differs): refusing it"
            )
        if delta.from_count != self.count:
            raise RefusedError(f"{what} expects {delta.from_count} entries in version {base_version}, "
                               f"but {self.count} are held")
        removed: set[tuple[str, str]] = set()
        for r in delta.removed:
            if r.key in removed:
                raise RefusedError(f"{what} removes {r.value[:80]!r} twice")
            removed.add(r.key)
        new = sorted(delta.added)
        for r, after in pairwise(new):
            if r.key == after.key:
                raise RefusedError(f"{what} adds {r.value[:80]!r} twice")
        cuts, inserts = self._places([(_record_key(r), record_line(r)) for r in sorted(delta.removed)],
                                     [(_record_key(r), record_line(r)) for r in new], what)
        data, url_start = self._spliced(cuts, inserts)
        mismatch = RefusedError(f"the list after {what} does not match the digest the delta states")
        try:
            # Only the chunks around the change are hashed again.
            digest = update(self.digest, BlobView(self.buf), BlobView(data), [a for a, _ in cuts],
                            [a for a, _ in inserts], lambda line: lower_bound(data, _key(line), _key)[0],
                            moved(cuts, inserts))
        except ValueError:  # a chunk around the change is not in the held digest: not the list it states
            raise mismatch from None
        result = Lines(data, self.count - len(cuts) + len(inserts), url_start, digest)
        if result.count != delta.to_count or digest.hexdigest() != delta.to_entries_digest:
            raise mismatch
        result.refuse_reserved(f"the list after {what}")
        return result

    def edit(self, removed: dict[tuple[bytes, bytes], bytes], added: dict[tuple[bytes, bytes], bytes],
             what: str, digest: Digest) -> Lines:
        """The list with the lines of ``removed`` taken out and those of ``added`` put in (by
        key; lines end in a newline), carrying ``digest``, which the caller vouches for: a
        journal read back (:mod:`client.journal`). Refused unless every removed line is
        present byte for byte and no added key is present unless it is removed."""
        cuts, inserts = self._places(sorted(removed.items()), sorted(added.items()), what, set(removed))
        data, url_start = self._spliced(cuts, inserts)
        return Lines(data, self.count - len(cuts) + len(inserts), url_start, digest)

    def _places(self, gone: Sequence[tuple[tuple[bytes, bytes], bytes]],
                new: Sequence[tuple[tuple[bytes, bytes], bytes]], what: str,
                removed: set[tuple[bytes, bytes]] | None = None) -> tuple[list[tuple[int, int]],
                                                                          list[tuple[int, bytes]]]:
        """Where the lines ``gone`` are (cuts) and where ``new`` go (inserts), both sorted by key."""
        if removed is None:
            removed = {k for k, _ in gone}
        cuts: list[tuple[int, int]] = []
        for (k, line), (at, found) in zip(gone, lower_bounds(self.buf, [k for k, _ in gone], _key), strict=True):
            value = k[1].decode()[:80]
            if not found:
                raise RefusedError(f"{what} removes {value!r}, which is not in the list held")
            if self.buf[at : at + len(line)] != line:
                raise RefusedError(f"{what} removes a version of {value!r} that is not the one held")
            cuts.append((at, at + len(line)))
        inserts: list[tuple[int, bytes]] = []
        for (k, line), (at, found) in zip(new, lower_bounds(self.buf, [k for k, _ in new], _key), strict=True):
            if found and k not in removed:
                raise RefusedError(f"{what} adds {k[1].decode()[:80]!r}, which is already in the list held")
            inserts.append((at, line))
        return cuts, inserts

    def _spliced(self, cuts: Sequence[tuple[int, int]], inserts: Sequence[tuple[int, bytes]]) -> tuple[Spliced, int]:
        """(the lines with ``cuts`` taken out and ``inserts`` put in, left where they are; its url_start)."""
        data = spliced(self.buf, cuts, inserts)
        # Only the new lines need the entry rules; the rest was checked when it was first held.
        url_start = self.url_start - sum(b - a for a, b in cuts if a < self.url_start) \
            + sum(len(text) for _, text in inserts if not text.startswith(_URL_START))
        return data, url_start


def moved(cuts: Sequence[tuple[int, int]], inserts: Sequence[tuple[int, bytes]]) -> Callable[[int], int]:
    """Where a line that :func:`splice` keeps goes: its offset in the result, from its offset
    in the data (``cuts`` and ``inserts`` sorted by offset, as :meth:`Lines._places` gives them)."""
    cut_ends = [b for _, b in cuts]
    cut_bytes = list(accumulate(b - a for a, b in cuts))
    insert_at = [a for a, _ in inserts]
    insert_bytes = list(accumulate(len(text) for _, text in inserts))

    def offset(pos: int) -> int:
        c = bisect_right(cut_ends, pos)  # cuts that end at or before the line
        i = bisect_right(insert_at, pos)  # inserts placed before it (at its offset, too)
        return pos - (cut_bytes[c - 1] if c else 0) + (insert_bytes[i - 1] if i else 0)

    return offset


def domain_values(lines: bytes | memoryview) -> list[bytes]:
    """The names on the given domain lines, in order."""
    return _VALUE.findall(lines)


def find_url_start(data: Buffer) -> int:
    """Offset of the first URL line (URL lines follow every domain line), or len(data)."""
    if data[: len(_URL_START)] == _URL_START:
        return 0
    i = data.find(b"\n" + _URL_START)
    return len(data) if i < 0 else i + 1


def held_url_start(data: Buffer) -> int:
    """:func:`find_url_start` of a list whose lines were checked when it was first held: the
    line after the last domain line, found from the end (only the few URL lines are searched)."""
    i = data.rfind(b"\n" + _DOMAIN_START)
    if i >= 0:
        start = i + 1
    elif data[: len(_DOMAIN_START)] == _DOMAIN_START:
        start = 0
    else:
        return 0
    nl = data.find(b"\n", start)
    return len(data) if nl < 0 else nl + 1


def splice(data: bytes, cuts: Sequence[tuple[int, int]], inserts: Sequence[tuple[int, bytes]]) -> bytes:
    """``data`` without the ``cuts`` ranges and with ``inserts`` placed at their offsets.

    Offsets refer to ``data``; inserts at one offset keep their order, and go before a
    cut that starts there."""
    return b"".join(splice_parts(data, cuts, inserts))


def spliced(data: Buffer, cuts: Sequence[tuple[int, int]], inserts: Sequence[tuple[int, bytes]]) -> Spliced:
    """:func:`splice` of lines, left where they are (``cuts`` and ``inserts`` whole lines)."""
    pieces: list[tuple[Buffer, int, int]] = []
    for p in splice_spans(len(data), cuts, inserts):
        if not isinstance(p, tuple):
            pieces.append((p, 0, len(p)))
        elif isinstance(data, Spliced):
            pieces += data.pieces(*p)
        else:
            pieces.append((data, *p))
    return Spliced(pieces)


def splice_parts(data: Buffer, cuts: Sequence[tuple[int, int]],
                 inserts: Sequence[tuple[int, bytes]]) -> list[bytes | memoryview]:
    """What :func:`splice` joins: views of ``data`` (not copies) and the inserted bytes, in
    order. Write them one after another to get the result without building it in memory."""
    view = memoryview(data)  # type: ignore[arg-type]  # slices of a view are not copies
    return [view[p[0] : p[1]] if isinstance(p, tuple) else p for p in splice_spans(len(data), cuts, inserts)]


def splice_spans(size: int, cuts: Sequence[tuple[int, int]],
                 inserts: Sequence[tuple[int, bytes]]) -> list[tuple[int, int] | bytes]:
    """:func:`splice_parts` of data of ``size`` bytes, each kept range of it given as
    (start, stop): to be copied from a file rather than read into memory."""
    edits = sorted([(a, 0, i, a, text) for i, (a, text) in enumerate(inserts)]
                   + [(a, 1, 0, b, b"") for a, b in cuts])
    parts: list[tuple[int, int] | bytes] = []
    pos = 0
    for start, _kind, _seq, end, text in edits:
        if start > pos:
            parts.append((pos, start))
        if text:
            parts.append(text)
        pos = max(pos, end)
    if pos < size:
        parts.append((pos, size))
    return parts


def _line_end(data: Buffer, pos: int) -> int:
    """The offset after the newline that ends the line at ``pos``; ValueError if none does."""
    nl = data.find(b"\n", pos)
    if nl < 0:
        raise ValueError("the lines end in the middle of a line")
    return nl + 1


def lower_bound(data: Buffer, key: Any, key_of: Callable[[bytes], Any], lo: int = 0,
                hi: int | None = None) -> tuple[int, bool]:
    """Offset of the first line in ``data[lo:hi]`` whose key is >= ``key``, and whether it equals it.

    Lines are sorted by ``key_of(line)`` (without its newline); ``lo`` and ``hi`` are line
    starts. ``data`` is bytes, or an mmap of a file (only ``find``, ``rfind`` and slices are used)."""
    get = key_of
    end = len(data) if hi is None else hi
    limit = end
    start = lo
    while start < end:
        mid = (start + end) // 2
        s = data.rfind(b"\n", start, mid)
        s = start if s < 0 else s + 1
        e = data.find(b"\n", s)
        if get(data[s:e]) < key:
            start = e + 1
        else:
            end = s
    if start >= limit:
        return start, False
    return start, get(data[start : data.find(b"\n", start)]) == key


def lower_bounds(data: Buffer, keys: Sequence[Any], key_of: Callable[[bytes], Any], lo: int = 0,
                 hi: int | None = None) -> list[tuple[int, bool]]:
    """:func:`lower_bound` of each of ``keys`` (strictly increasing): each search narrows the
    range of those on either side of it, so many keys cost less than one full search each."""
    out: list[tuple[int, bool]] = [(0, False)] * len(keys)
    stack = [(0, len(keys), lo, len(data) if hi is None else hi)]
    while stack:
        a, b, low, high = stack.pop()
        if a >= b:
            continue
        m = (a + b) // 2
        at, found = lower_bound(data, keys[m], key_of, low, high)
        out[m] = (at, found)
        stack.append((a, m, low, at))
        stack.append((m + 1, b, data.find(b"\n", at) + 1 if found else at, high))
    return out


def _record(line: bytes) -> Record:
    doc = load_json(line, "an entry")
    if not isinstance(doc, Record):
        raise RefusedError("an entry is not in canonical form")
    return doc


def _refuse_domain_lines(domains: memoryview, what: str) -> NoReturn:
    """Refuse domain lines that are not all canonical and valid, saying what is wrong with the first
    line that is not."""
    rest, _ = _DOMAIN_LINE.subn(b"", domains)
    if rest:
        _explain(rest.split(b"\n", 1)[0], what)
    raise RefusedError(f"{what} holds an entry that is not in canonical form")


def _explain(line: bytes, what: str) -> Record:
    """The record on ``line``, or the error that says what is wrong with it."""
    try:
        return _record(line)
    except RefusedError as e:
        raise RefusedError(f"{what}: {e.message}") from None


def parse_snapshot_lines(data: bytes | bytearray, manifest: Manifest,
                         checked: Callable[[], None] = lambda: None) -> tuple[Lines, str]:
    """(the list, its published_at) from a snapshot checked against the manifest, or being
    checked: ``checked()`` returns once it is (or raises), and is called before the strict
    reader takes a snapshot of another layout (whole JSON documents are parsed only once
    they are known to be the ones signed)."""
    what = manifest.snapshot.path
    i = data.find(_ENTRIES_OPEN, 0, _HEAD_MAX)
    head = load_json(bytes(data[:i]) + b"}", what) if i > 0 and data.endswith(_ENTRIES_CLOSE) else None
    if not isinstance(head, dict) or set(head) != _SNAPSHOT_HEAD_KEYS:
        checked()
        strict, strict_published = parse_snapshot(bytes(data), manifest)  # another layout: the strict reader
        return Lines.of_records(strict.records), strict_published
    schema_error(head.get("schema"), what)
    if head.get("list") != manifest.list_name or head.get("version") != manifest.full_version:
        raise RefusedError(f"{what} is for another list or version than the manifest")
    start = i + len(_ENTRIES_OPEN)
    if start == len(data) - len(_ENTRIES_CLOSE):
        lines: bytes | bytearray = b""
    else:
        # ",\n" occurs only between entries: no line holds a newline, and the head is one line.
        buf = data.replace(b",\n", b"\n")
        if isinstance(buf, bytearray):  # cut in place: a big snapshot is not copied again
            del buf[len(buf) - len(_ENTRIES_CLOSE) + 1 :]
            del buf[:start]
            lines = buf
        else:
            lines = buf[start : len(buf) - len(_ENTRIES_CLOSE) + 1]
        del buf
    listed = Lines.check(lines, what)  # type: ignore[arg-type]  # a bytearray reads like bytes
    # A snapshot older than the manifest is checked against itself; the deltas after it
    # must then lead to the manifest's count and entries_digest.
    current = manifest.full_version == manifest.version
    count = manifest.count if current else head.get("count")
    digest = manifest.entries_digest if current else head.get("entries_digest")
    if head.get("count") != len(listed) or len(listed) != count:
        raise RefusedError(f"{what} holds {len(listed)} entries, but states {head.get('count')!r} "
                           f"and the manifest {manifest.count}")
    hexdigest = listed.digest.hexdigest()
    if hexdigest != head.get("entries_digest") or hexdigest != digest:
        raise RefusedError(f"the entries of {what} do not match the entries_digest in the manifest")
    published = head.get("published_at")
    if not isinstance(published, str):
        raise RefusedError(f"the published_at of {what} is not a string")
    parse_time(published, f"the published_at of {what}")
    return listed, published

