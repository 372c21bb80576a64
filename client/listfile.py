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

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any, Protocol

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
# The canary's names (see client.check): no entry may take them.
RESERVED = (b"version.canary", b"blocked.canary")
_VALUE = re.compile(rb'"value":"([^"\n]*)"')
_URL_START = b'{"type":"url",'
_DOMAIN_START = b'{"type":"domain",'
_ENTRIES_OPEN = b',"entries":[\n'
_ENTRIES_CLOSE = b"\n]}\n"
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


@dataclass(frozen=True)
class Lines:
    """A checked list: ``data`` is every canonical line, each ending in a newline."""

    data: bytes
    count: int
    url_start: int  # offset of the first URL line (len(data) if none)
    digest: Digest = field(compare=False)  # its entries_digest, as sorted chunk digests
    # The domain names, in order, when they were read anyway (by check): saves reading them again.
    _values: list[bytes] | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------ building

    @classmethod
    def check(cls, data: bytes, what: str, *, count: int | None = None) -> Lines:
        """``data`` as a list, if every line is canonical, valid and in order."""
        if data and not data.endswith(b"\n"):
            raise RefusedError(f"{what} does not end with a complete line")
        url_start = find_url_start(data)
        domains = memoryview(data)[:url_start]
        rest, n = _DOMAIN_LINE.subn(b"", domains)
        if rest:
            bad = rest.split(b"\n", 1)[0]
            _explain(bad, what)
            raise RefusedError(f"{what} holds an entry that is not in canonical form")
        values = _VALUE.findall(domains)
        if len(values) != n or not all(map(bytes.__lt__, values, values[1:])):
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
        lines = cls(data, total, url_start, Digest.of_data(data), values)
        lines.refuse_reserved(what)
        return lines

    @classmethod
    def of_records(cls, records: Iterable[Record]) -> Lines:
        return cls.check(b"".join(record_line(r) for r in records), "the list")

    # ------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self.count

    def domain_values(self) -> list[bytes]:
        return domain_values(memoryview(self.data)[: self.url_start])

    def cached_values(self) -> list[bytes] | None:
        return self._values

    def url_records(self) -> list[Record]:
        return [_record(line) for line in self.data[self.url_start :].split(b"\n")[:-1]]

    def find(self, key: tuple[bytes, bytes]) -> tuple[int, bool]:
        """(offset of the first line whose key is >= ``key``, whether it is equal)."""
        return lower_bound(self.data, key, _key)

    def line_of(self, key: tuple[bytes, bytes]) -> bytes | None:
        at, found = self.find(key)
        return self.data[at : self.data.index(b"\n", at) + 1] if found else None

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
        for name, (at, found) in zip(names, lower_bounds(self.data, [(b"domain", n) for n in names], _key),
                                     strict=True):
            if found and b'"subdomains":true,' in self.data[at : self.data.index(b"\n", at)]:
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
            digest = update(self.digest, BlobView(self.data), BlobView(data), [a for a, _ in cuts],
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
        for (k, line), (at, found) in zip(gone, lower_bounds(self.data, [k for k, _ in gone], _key), strict=True):
            value = k[1].decode()[:80]
            if not found:
                raise RefusedError(f"{what} removes {value!r}, which is not in the list held")
            if self.data[at : at + len(line)] != line:
                raise RefusedError(f"{what} removes a version of {value!r} that is not the one held")
            cuts.append((at, at + len(line)))
        inserts: list[tuple[int, bytes]] = []
        for (k, line), (at, found) in zip(new, lower_bounds(self.data, [k for k, _ in new], _key), strict=True):
            if found and k not in removed:
                raise RefusedError(f"{what} adds {k[1].decode()[:80]!r}, which is already in the list held")
            inserts.append((at, line))
        return cuts, inserts

    def _spliced(self, cuts: Sequence[tuple[int, int]], inserts: Sequence[tuple[int, bytes]]) -> tuple[bytes, int]:
        """(the data with ``cuts`` taken out and ``inserts`` put in, its url_start)."""
        data = splice(self.data, cuts, inserts)
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


def _explain(line: bytes, what: str) -> Record:
    """The record on ``line``, or the error that says what is wrong with it."""
    try:
        return _record(line)
    except RefusedError as e:
        raise RefusedError(f"{what}: {e.message}") from None


def parse_snapshot_lines(data: bytes | bytearray, manifest: Manifest) -> tuple[Lines, str]:
    """(the list, its published_at) from a snapshot already checked against the manifest."""
    what = manifest.snapshot.path
    i = data.find(_ENTRIES_OPEN)
    head = load_json(bytes(data[:i]) + b"}", what) if i > 0 and data.endswith(_ENTRIES_CLOSE) else None
    if not isinstance(head, dict) or set(head) != _SNAPSHOT_HEAD_KEYS:
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

