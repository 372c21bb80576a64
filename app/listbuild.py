"""Building a version's list: sorted feed lines and zone lines, the change
between two versions, and splicing a change into a list. No I/O.

What must stay true:

* A list is its entries' canonical feed lines (compact JSON, keys in schema
  order, as :meth:`app.domain.Entry.feed_line` writes them) sorted by key
  (``d:<value>`` before ``u:<value>``), with each domain's zone lines beside
  it; the bytes are what is hashed, signed and served, so every path that
  builds a list (from every entry, from the change feed, from a snapshot and
  its deltas) yields the same bytes for the same entries.
* Cost follows the change: a splice copies list references, never re-encodes
  an unchanged entry.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import msgspec

from app.domain import Entry, Status, iso
from app.rpz import fragment
from client.digest import Digest, ListView, ends_chunk, update

_PREFIX_D = b'{"type":"domain","value":"'
_PREFIX_U = b'{"type":"url","value":"'


class _FeedFields(msgspec.Struct):
    """The fields of a stored entry record that its feed line needs (see Entry.to_json)."""

    v: str
    t: str
    s: int = 0
    c: str = ""
    at: int = 0
    ls: int | None = None
    va: int | None = None


_FEED_DECODER = msgspec.json.Decoder(_FeedFields)


def line_key(line: bytes) -> str:
    """The sort/identity key of a snapshot line (``d:<value>`` or ``u:<value>``)."""
    if line.startswith(_PREFIX_D):
        start = len(_PREFIX_D)
        return "d:" + line[start : line.index(b'"', start)].decode()
    start = len(_PREFIX_U)
    return "u:" + line[start : line.index(b'"', start)].decode()


def zone_fragment_of(line: bytes) -> bytes:
    if not line.startswith(_PREFIX_D):
        return b""
    start = len(_PREFIX_D)
    end = line.index(b'"', start)
    return fragment(line[start:end].decode(), line.startswith(b'"subdomains":true', end + 2)).encode()


@dataclass
class ListState:
    """A published version's entries, sorted by key, with their zone lines.

    Kept as bytes: a million-entry version is written, hashed and signed as
    a few large buffers, and encoding it again on every publication would
    cost more than the change itself.
    """

    version: int
    lines: list[bytes]
    zone: list[bytes]
    snapshot_sha256: str | None
    #: False when only the number is known (its list could not be rebuilt).
    known: bool = True
    #: The list's ``entries_digest`` (client.digest), kept so a change costs only its chunks.
    digest: Digest = field(default_factory=lambda: Digest(()))

    @classmethod
    def of(cls, version: int, lines: list[bytes], zone: list[bytes], snapshot_sha256: str | None,
           digest: Digest | None = None) -> ListState:
        return cls(version, lines, zone, snapshot_sha256, digest=digest or Digest.of_lines(lines))

    @property
    def count(self) -> int:
        return len(self.lines)

    def find(self, key: str) -> int:
        return position(self.lines, key)


def position(lines: list[bytes], key: str) -> int:
    """Where the line with ``key`` is, or would go, in sorted ``lines``.

    A domain line sorts like its value (the '"' that ends a value sorts
    before every character a host name may hold), so domain lines are
    searched as plain bytes; URL lines, which follow them, by their key."""
    urls = bisect.bisect_left(lines, _PREFIX_U)
    if key.startswith("d:"):
        return bisect.bisect_left(lines, _PREFIX_D + key[2:].encode() + b'"', 0, urls)
    return bisect.bisect_left(lines, key, urls, key=line_key)


@dataclass
class Change:
    key: str
    old: bytes | None
    new: bytes | None


@dataclass
class Diff:
    """What a publication changes.

    ``changes`` (sorted by key) is kept when the new list is spliced from the
    previous one; a full rebuild from nothing only needs the lines it adds.
    """

    changes: list[Change]
    added: int = 0
    removed: int = 0
    changed: int = 0
    all_new: list[bytes] | None = None

    @classmethod
    def of(cls, changes: list[Change]) -> Diff:
        d = cls(changes=[c for c in changes if c.old != c.new])
        for c in d.changes:
            if c.old is None:
                d.added += 1
            elif c.new is None:
                d.removed += 1
            else:
                d.changed += 1
        return d

    @classmethod
    def everything_new(cls, lines: list[bytes]) -> Diff:
        return cls(changes=[], added=len(lines), all_new=lines)

    @property
    def empty(self) -> bool:
        return not self.changes and not self.all_new

    def summary(self) -> dict[str, int]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed}

    def sample(self, n: int = 10) -> dict[str, list[str]]:
        if self.all_new is not None:
            return {"added": [line_key(x)[2:] for x in self.all_new[:n]], "removed": []}
        added = [c.key[2:] for c in self.changes if c.old is None][:n]
        removed = [c.key[2:] for c in self.changes if c.new is None][:n]
        return {"added": added, "removed": removed}

    def new_lines(self) -> list[bytes]:
        """Lines of entries added or changed (the delta's "added")."""
        if self.all_new is not None:
            return self.all_new
        return [c.new for c in self.changes if c.new is not None]

    def old_lines(self) -> list[bytes]:
        """Previous lines of entries removed or changed (the delta's "removed")."""
        return [c.old for c in self.changes if c.old is not None]




def _format(e: _FeedFields) -> tuple[str, str]:
    """The feed line of a decoded record, and its zone lines ("" for a URL):
    byte for byte what :meth:`Entry.feed_line` and :func:`app.rpz.fragment` write."""
    at = e.at
    ls = at if e.ls is None else e.ls
    va = at if e.va is None else e.va
    v = e.v
    if e.t == "d":
        sub = e.s == 1
        return (f'{{"type":"domain","value":"{v}","subdomains":{"true" if sub else "false"},'
                f'"category":"{e.c}","listed_since":"{iso(ls)}","verified_at":"{iso(va)}"}}', fragment(v, sub))
    return (f'{{"type":"url","value":"{v}","subdomains":false,'
            f'"category":"{e.c}","listed_since":"{iso(ls)}","verified_at":"{iso(va)}"}}', "")


def feed_members(raw: str) -> tuple[str, str]:
    """(feed line, zone lines) of a stored entry record, as the store keeps them
    in its published form (see app.store.published)."""
    return _format(_FEED_DECODER.decode(raw))


def full_lines(records: Iterable[str]) -> tuple[list[bytes], list[bytes]]:
    """Every active entry among stored ``records``, sorted: the path without a
    previous version when the store's published form cannot be used.

    A million records are decoded with a typed msgspec decoder into just the
    fields the feed needs, formatted exactly like :meth:`Entry.feed_line`, and
    sorted with tuple fast paths.
    """
    decode = _FEED_DECODER.decode
    lines: list[bytes] = []
    frags: list[bytes] = []
    urls: list[bytes] = []
    add_line, add_frag, add_url = lines.append, frags.append, urls.append
    marker = '"st":"active"'
    gc_was = gc.isenabled()
    gc.disable()  # a million small objects: the cyclic GC only costs time here
    try:
        for raw in records:
            if marker not in raw:
                continue
            e = decode(raw)
            line, frag = _format(e)
            if e.t == "d":
                add_line(line.encode())
                add_frag(frag.encode())
            else:
                add_url(line.encode())
        # Domain lines, and their zone lines, each sort like their values:
        # '"' ends a value in a line and ' ' in a zone line, and both sort
        # before every character a domain may hold. So two plain string
        # sorts keep them aligned. URL values may hold '!', which sorts
        # before '"', so URLs are sorted by their key.
        lines.sort()
        frags.sort()
        urls.sort(key=line_key)
        lines.extend(urls)
        frags.extend([b""] * len(urls))
        return lines, frags
    finally:
        if gc_was:
            gc.enable()


def lines_from_store(batches: Iterable[tuple[list[bytes], list[bytes | None], list[bytes | None]]]
                     ) -> tuple[list[bytes], list[bytes], Digest] | None:
    """The list, its zone lines and its digest from the store's published form,
    read in batches of whole chunks by :meth:`app.store.published.PublishedForm.read`,
    or None when the form is damaged (build from the records then).

    The form keeps the list in its order, cut into the list digest's chunks,
    so a chunk's digest is the sha256 of the bytes read. Lines that a merge
    behind the reader's back moved into a later batch are dropped there."""
    from app.store.published import OPEN

    open_name = OPEN.encode()
    lines: list[bytes] = []
    frags: list[bytes] = []
    chunks: list[bytes] = []
    sha = hashlib.sha256
    after: str | None = None  # the last chunk name read
    for names, blobs, zblobs in batches:
        if any(b is None for b in blobs) or any(z is None for z in zblobs):
            return None
        texts = cast("list[bytes]", blobs)
        ztexts = cast("list[bytes]", zblobs)
        if after is not None and texts:
            first = texts[0].split(b"\n")[:-1]
            zfirst = ztexts[0].split(b"\x1e")[:-1]
            keep = [i for i, x in enumerate(first) if line_key(x) > after]
            if len(keep) < len(first):
                texts = [b"".join(first[i] + b"\n" for i in keep), *texts[1:]]
                ztexts = [b"".join(zfirst[i] + b"\x1e" for i in keep), *ztexts[1:]]
        for name, text in zip(names, texts, strict=True):
            # Every chunk but the open one ends with a line that ends a digest chunk.
            if text and name != open_name and not ends_chunk(text[text.rfind(b"\n", 0, -1) + 1 : -1]):
                return None
        chunks += [sha(t).digest() for t in texts if t]
        batch = b"".join(texts).split(b"\n")
        batch.pop()
        zone = b"".join(ztexts).split(b"\x1e")
        zone.pop()
        if len(zone) != len(batch):
            return None
        lines += batch
        frags += zone
        after = names[-1].decode()
    return lines, frags, Digest(chunks)


def changes_from_records(state: ListState, records: Iterable[str | None]) -> Diff:
    """The change that the current ``records`` of entries named by the change feed make to ``state``."""
    changes: dict[str, Change] = {}
    for raw in records:
        if raw is None:
            continue
        e = Entry.from_json(raw)
        new = e.feed_line().encode() if e.status is Status.ACTIVE else None
        pos = state.find(e.key)
        old = state.lines[pos] if pos < state.count and line_key(state.lines[pos]) == e.key else None
        changes[e.key] = Change(e.key, old, new)
    return Diff.of(sorted(changes.values(), key=lambda c: c.key))


def diff_lists(old: list[bytes], new: list[bytes]) -> Diff:
    if not old:
        return Diff.everything_new(new)
    if old == new:
        return Diff(changes=[])
    changes: list[Change] = []
    i = j = 0
    old_keys = [line_key(x) for x in old]
    new_keys = [line_key(x) for x in new]
    while i < len(old) or j < len(new):
        if j >= len(new) or (i < len(old) and old_keys[i] < new_keys[j]):
            changes.append(Change(old_keys[i], old[i], None))
            i += 1
        elif i >= len(old) or new_keys[j] < old_keys[i]:
            changes.append(Change(new_keys[j], None, new[j]))
            j += 1
        else:
            if old[i] != new[j]:
                changes.append(Change(old_keys[i], old[i], new[j]))
            i += 1
            j += 1
    return Diff.of(changes)


def splice(state: ListState, diff: Diff) -> tuple[list[bytes], list[bytes], Digest]:
    """The list, zone lines and digest after ``diff``: list references are
    copied, and only the digest's chunks around each change are hashed again."""
    lines: list[bytes] = []
    zone: list[bytes] = []
    removed: list[int] = []
    inserted: list[int] = []
    prev = 0
    for c in diff.changes:
        pos = state.find(c.key)
        lines.extend(state.lines[prev:pos])
        zone.extend(state.zone[prev:pos])
        if c.new is not None:
            lines.append(c.new)
            zone.append(zone_fragment_of(c.new))
            inserted.append(pos)
        if c.old is not None:
            removed.append(pos)
        prev = pos + (1 if c.old is not None else 0)
    lines.extend(state.lines[prev:])
    zone.extend(state.zone[prev:])
    digest = update(state.digest, ListView(state.lines), ListView(lines), removed, inserted,
                    lambda line: position(lines, line_key(line)))
    return lines, zone, digest


def snapshot_lines(data: bytes) -> list[bytes]:
    """The entry lines of a snapshot file."""
    start = data.index(b'"entries":[\n') + len(b'"entries":[\n')
    end = data.rindex(b"\n]}")
    body = data[start:end]
    return body.split(b",\n") if body else []


def delta_diff(data: bytes) -> Diff:
    """A published delta file as the change it made (see Publisher._delta_text)."""
    a0 = data.index(b',"added":[') + len(b',"added":[')
    a1 = data.index(b'],"removed":[', a0)
    r0 = a1 + len(b'],"removed":[')
    r1 = data.rindex(b"]}")
    # Entry lines are compact JSON objects: no raw newline, no unquoted ']'.
    added = data[a0:a1].strip(b"\n")
    removed = data[r0:r1].strip(b"\n")
    changes: dict[str, Change] = {}
    for line in removed.split(b",\n") if removed else []:
        key = line_key(line)
        changes[key] = Change(key, line, None)
    for line in added.split(b",\n") if added else []:
        key = line_key(line)
        old = changes.get(key)
        changes[key] = Change(key, old.old if old else None, line)
    return Diff.of(sorted(changes.values(), key=lambda c: c.key))
