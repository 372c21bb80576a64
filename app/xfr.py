"""RPZ zone transfers on the wire: rendering, IXFR history, TSIG and the query
dispatcher. No I/O: ``workers/xfrd.py`` owns sockets, Redis and files.

What must stay true:

* A published version is rendered once. :class:`Snapshot` holds the zone's
  ``CNAME .`` records as pre-built DNS message bodies (:class:`Piece`), each
  small enough that every name in it can be the target of a compression
  pointer (offsets below 16 KiB) and the message with header, question, OPT
  and TSIG stays far below 64 KiB. Serving a transfer only adds the header
  (query id, counts), the question and, when the request was signed, a TSIG
  record to those bytes.
* Record owner names are the relative labels followed by a pointer to the
  question name at offset 12 (which is the zone name), and ``*.name`` right
  after ``name`` is ``\\x01*`` plus a pointer to ``name``. Pieces are sorted
  by :func:`sort_key`, so a changed name belongs to exactly one piece and a
  new version re-renders only the pieces its changes touch; untouched pieces
  are shared, not copied.
* Serials follow RFC 1982. IXFR (RFC 1995) from any serial still in history
  is one condensed difference (deletions and additions); an unknown or
  too-old serial gets the whole zone in AXFR form; a client that is current
  (or ahead) gets a single SOA, as does a UDP IXFR whose answer does not fit.
* Transfers need TSIG from every ISP that has a key; a source-address
  list is a second gate, and the only one just for ISPs registered
  address-only. A request is accepted only within :data:`FUDGE` seconds of
  our clock, whatever fudge the client asks for, and the MAC of a transfer
  request is accepted once (:class:`ReplayGuard`).
* Over UDP an unauthenticated request never gets an answer larger than
  itself (a larger one is sent truncated, so the client comes back over
  TCP): the server is no amplifier for spoofed queries.
* TSIG (RFC 8945): every message of a transfer answer is signed
  (:data:`SIGN_EVERY`). RFC 8945 5.3.1 would allow up to 99 unsigned
  messages between two signed ones, and the dispatcher can do that, but
  BIND 9.18 (9.18.49 here) refuses such a transfer ("expected a TSIG or
  SIG(0)"). An unknown key or algorithm is NOTAUTH/BADKEY,
  a wrong MAC NOTAUTH/BADSIG (both unsigned), a time outside the fudge
  NOTAUTH/BADTIME (signed, with the server time in Other Data).
* Nothing a client sends can crash the dispatcher: unparsable input gets
  FORMERR (or is dropped when it has no usable header, or is itself a
  response), a bug gets SERVFAIL, anything not served gets REFUSED.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import ipaddress
import operator
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate, compress, islice, repeat
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TSIG
import dns.serial
import dns.tsig

from app.rpz import CANARY_BLOCKED, CANARY_VERSION, RESERVED, SoaParams

if TYPE_CHECKING:
    from app.isps import Isp

# Wire constants (RFC 1035, 1995, 5936, 6891, 8945).
T_NS, T_CNAME, T_SOA, T_TXT, T_OPT, T_ZONEMD, T_TSIG, T_IXFR, T_AXFR = 2, 5, 6, 16, 41, 63, 250, 251, 252
C_IN, C_ANY = 1, 255
QR, AA, TC, RD = 0x8000, 0x0400, 0x0200, 0x0100
OP_QUERY, OP_NOTIFY = 0, 4
NOERROR, FORMERR, SERVFAIL, NOTIMP, REFUSED, NOTAUTH = 0, 1, 2, 4, 5, 9
BADVERS = 16
BADSIG, BADKEY, BADTIME = 16, 17, 18

#: Compression pointers carry a 14-bit offset: names that others point to
#: must start below this offset, so record pieces end there.
POINTER_LIMIT = 0x4000
#: A TSIG on every this many messages of a transfer. RFC 8945 5.3.1 allows
#: up to 100; BIND 9.18 secondaries accept only 1 (every message signed).
SIGN_EVERY = 1
#: The most RFC 8945 allows: at most 99 unsigned messages in a row.
SIGN_EVERY_MAX = 100
#: The fudge we sign with, and the most we accept whatever fudge a request
#: carries (RFC 8945 recommends 300 s): a request signed longer ago or
#: later than this is BADTIME.
FUDGE = 300
#: Request MACs remembered to refuse replays (they are kept for the time
#: window; beyond this many, the oldest are forgotten first).
REPLAY_MEMORY = 200_000
#: UDP payload we offer with EDNS, and never exceed (DNS flag day 2020).
EDNS_PAYLOAD = 1232
#: Length of a compressed ``*.name`` record: \x01* + pointer + fixed tail.
_WILD_SIZE = 2 + 2 + 10 + 1

_LEN = [chr(i) for i in range(256)]
_PTR = [chr(0xC0 | (o >> 8)) + chr(o & 0xFF) for o in range(POINTER_LIMIT)]
_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*.\n"
_HEADER = struct.Struct("!HHHHHH")


class ZoneDataError(ValueError):
    """A published version cannot be served as it is (a damaged zone or delta)."""


def base_of(name: str) -> str:
    """The name a record is ordered and found by: ``*.x`` goes with ``x``."""
    return name[2:] if name.startswith("*.") else name


class _BadLabelError(ValueError):
    """A label is empty or longer than 63 octets somewhere in a batch of names."""


def _label_wires(names: list[str]) -> list[str]:
    """Each relative name as DNS labels (latin-1 text, no root label).

    A few C-level string operations over all names at once: split every
    name into labels, put each label's length in front, and cut the result
    back into names at the separators (a one-octet label ``\\n``, which no
    valid name contains). Raises :class:`_BadLabelError` when a label is
    empty or too long."""
    if not names:
        return []
    parts = ".\n.".join(names).split(".")
    lens = list(map(len, parts))
    if min(lens) < 1 or max(lens) > 63:
        raise _BadLabelError("a label is empty or longer than 63 octets")
    out: list[str] = [""] * (2 * len(parts))
    out[::2] = map(_LEN.__getitem__, lens)
    out[1::2] = parts
    return "".join(out).split("\x01\n")


def valid_name(name: str, max_len: int) -> bool:
    """A relative owner name we can serve: LDH/underscore labels of 1-63
    octets, ``*`` only as the whole first label, fitting 255 octets with the zone."""
    if not name or len(name) > max_len or "\n" in name or not name.isascii():
        return False
    if name.encode().translate(None, _NAME_BYTES):
        return False
    labels = name.split(".")
    if any(not 0 < len(label) < 64 for label in labels):
        return False
    return "*" not in name or (labels[0] == "*" and len(labels) > 1 and "*" not in name[1:])


def clean_names(names: list[str], max_len: int) -> tuple[list[str], list[str]]:
    """(the names that can be served, the ones that cannot). Quick checks of
    the whole list first (label lengths are checked while encoding); the
    per-name check runs only when they find a problem."""
    if not names:
        return names, []
    text = "\n".join(names)
    if (
        text.isascii()
        and not text.encode().translate(None, _NAME_BYTES)
        and max(map(len, names)) <= max_len
        and text.count("*") == text.count("\n*.") + (1 if names[0].startswith("*.") else 0)
    ):
        return names, []
    return _filter(names, max_len)


def _filter(names: Iterable[str], max_len: int) -> tuple[list[str], list[str]]:
    good: list[str] = []
    bad: list[str] = []
    for n in names:
        (good if valid_name(n, max_len) else bad).append(n)
    return good, bad


def zone_file_names(text: str) -> tuple[int, list[str]]:
    """(serial, relative owner names) of a zone file the publisher wrote.

    The same result as :func:`app.rpz.parse_zone_names`, several times
    faster on large zones: the records follow the ``@ NS`` line, one
    ``name CNAME .`` a line. Anything unexpected goes through the general
    parser, which reports the problem."""
    from app.rpz import RECORD_SUFFIX, parse_zone_names

    ns = text.find("\n@ NS ")
    end = text.find("\n", ns + 1) if ns >= 0 else -1
    if end < 0:
        return parse_zone_names(text)
    serial, head_names = parse_zone_names(text[: end + 1])
    body = text[end + 1 :]
    if head_names or not body:
        return (serial, head_names) if not body else parse_zone_names(text)
    if not body.endswith(RECORD_SUFFIX):
        return parse_zone_names(text)
    names = body[: -len(RECORD_SUFFIX)].split(RECORD_SUFFIX)
    if body.count("\n") != len(names) or body.count(" ") != 2 * len(names):
        return parse_zone_names(text)
    return serial, names


# --------------------------------------------------------------------------- zone


@dataclass(frozen=True)
class ZoneInfo:
    """The fixed parts of the served zone: its name, SOA and NS, record TTL."""

    origin: dns.name.Name
    params: SoaParams

    @classmethod
    def from_params(cls, params: SoaParams) -> ZoneInfo:
        return cls(dns.name.from_text(params.zone), params)

    @cached_property
    def wire(self) -> bytes:
        return self.origin.to_wire() or b""

    @property
    def body_start(self) -> int:
        """Offset of the first answer record: header, then the question."""
        return 12 + len(self.wire) + 4

    @property
    def max_relative(self) -> int:
        """Longest relative name (text) whose absolute wire form fits 255 octets."""
        return 255 - len(self.wire) - 1

    @cached_property
    def tail(self) -> str:
        """A record's bytes after its relative labels: pointer to the zone,
        CNAME IN TTL, and rdata ``.`` (one zero octet)."""
        return "\xc0\x0c" + struct.pack("!HHIH", T_CNAME, C_IN, self.params.ttl, 1).decode("latin-1") + "\x00"

    @cached_property
    def wild_records(self) -> list[str]:
        """``*.name`` records pointing at ``name`` by its offset; the last
        item (index :data:`POINTER_LIMIT`) is the empty string, for names
        without a wildcard."""
        rest = self.tail[2:]
        return ["\x01*" + p + rest for p in _PTR] + [""]

    def soa(self, serial: int) -> bytes:
        return self.record(self.soa_rec(serial))

    def ns(self) -> bytes:
        return self.record(self.ns_rec())

    def soa_rec(self, serial: int) -> Rec:
        p = self.params
        rdata = (
            (dns.name.from_text(p.mname).to_wire() or b"").lower()
            + (dns.name.from_text(p.rname).to_wire() or b"").lower()
            + struct.pack("!IIIII", serial & 0xFFFFFFFF, p.refresh, p.retry, p.expire, p.minimum)
        )
        return Rec("", T_SOA, rdata)

    def ns_rec(self) -> Rec:
        return Rec("", T_NS, (dns.name.from_text(self.params.ns).to_wire() or b"").lower())

    def record(self, rec: Rec) -> bytes:
        """A record as it travels in our answers: the owner's relative labels,
        then a pointer to the question name (the zone) at offset 12."""
        owner = rec.owner_wire() + b"\xc0\x0c"
        return owner + struct.pack("!HHIH", rec.rtype, C_IN, self.params.ttl, len(rec.rdata)) + rec.rdata

    def canonical(self, rec: Rec) -> bytes:
        """A record in canonical form (RFC 4034 6.2): owner uncompressed."""
        owner = rec.owner_wire() + self.wire
        return owner + struct.pack("!HHIH", rec.rtype, C_IN, self.params.ttl, len(rec.rdata)) + rec.rdata

    def canary_recs(self, version: int) -> list[Rec]:
        """The canary: ``version.canary`` TXT with the version, and
        ``blocked.canary`` answered like a listed name."""
        text = str(version).encode()
        return [Rec(CANARY_VERSION, T_TXT, bytes([len(text)]) + text), Rec(CANARY_BLOCKED, T_CNAME, b"\x00")]

    def zonemd_rec(self, serial: int, digest: bytes) -> Rec:
        return Rec("", T_ZONEMD, struct.pack("!IBB", serial & 0xFFFFFFFF, ZONEMD_SIMPLE, ZONEMD_SHA384) + digest)


#: ZONEMD (RFC 8976): the SIMPLE scheme with SHA-384.
ZONEMD_SIMPLE, ZONEMD_SHA384 = 1, 1
#: The RPZ action "do not rewrite" (a CNAME to this name), for recent removals in the overlay.
PASSTHRU = dns.name.from_text("rpz-passthru.").to_wire() or b""


@dataclass(frozen=True, order=True)
class Rec:
    """One record of a served zone outside the snapshot pieces: owner name
    relative to the zone ("" for the apex), type, and RDATA in canonical
    form (uncompressed, lower case), class IN and the zone's TTL."""

    owner: str
    rtype: int
    rdata: bytes

    def owner_wire(self) -> bytes:
        return _label_wires([self.owner])[0].encode("latin-1") if self.owner else b""

    @property
    def order(self) -> tuple[str, int, bytes]:
        """Canonical order (RFC 4034 6.1 and 6.3; RFC 8976 3.3.2)."""
        return (canonical_key(self.owner), self.rtype, self.rdata)


def canonical_key(relative: str) -> str:
    """A text key whose order is DNSSEC canonical name order for names
    relative to one zone: labels from the right, compared as octet strings,
    a shorter label first (NUL sorts below every character of a name)."""
    return "\x00".join(reversed(relative.split("."))) if relative else ""


def zonemd_digest(info: ZoneInfo, serial: int, recs: Iterable[Rec], snapshot: Snapshot | None = None) -> bytes:
    """The SHA-384 ZONEMD digest (RFC 8976, SIMPLE scheme) of a zone made of
    its SOA at ``serial``, the records ``recs`` (apex NS included, ZONEMD
    excluded) and the ``CNAME .`` records of ``snapshot``.

    The snapshot's names are re-sorted in canonical order once: this is the
    cost of a base version (about a second per million names), paid once per
    base version, never per overlay version."""
    h = hashlib.sha384()
    small = sorted([info.soa_rec(serial), *recs], key=operator.attrgetter("order"))
    if snapshot is None or not snapshot.pieces:
        for r in small:
            h.update(info.canonical(r))
        return h.digest()
    bases: list[str] = []
    kinds = bytearray()
    for p in snapshot.pieces:
        bases.extend(p.bases.split("\n"))
        kinds += p.kinds
    keys = ["\x00".join(b.split(".")[::-1]) for b in bases]  # canonical_key, inlined: a million calls
    order = sorted(range(len(bases)), key=keys.__getitem__)
    keys = [keys[i] for i in order]
    small_keys = [r.order[0] for r in small]
    origin = info.wire.decode("latin-1")
    tail = origin + struct.pack("!HHIH", T_CNAME, C_IN, info.params.ttl, 1).decode("latin-1") + "\x00"
    start = 0
    for r_key, r in zip(small_keys, small, strict=True):
        # A name of the snapshot and an extra record never share an owner.
        stop = bisect.bisect_left(keys, r_key, start)
        if stop > start:
            h.update(_canonical_cnames([bases[i] for i in order[start:stop]],
                                       [kinds[i] for i in order[start:stop]], tail))
        start = stop
        h.update(info.canonical(r))
    if start < len(keys):
        h.update(_canonical_cnames([bases[i] for i in order[start:]], [kinds[i] for i in order[start:]], tail))
    return h.digest()


def _canonical_cnames(bases: list[str], kinds: list[int], tail: str) -> bytes:
    """``name CNAME .`` records in canonical form; ``*.name`` follows ``name``
    in canonical order (``*`` sorts below every other label character).
    C-level list operations: a record a name, a wildcard record a name, and
    an empty string where the name has no such record."""
    if not bases:
        return b""
    named = list(map(str.__add__, _label_wires(bases), repeat(tail)))
    out = [""] * (2 * len(named))
    out[::2] = map(operator.mul, named, map(operator.and_, kinds, repeat(NAME)))
    out[1::2] = map(operator.mul, map(str.__add__, repeat("\x01*"), named), map(operator.rshift, kinds, repeat(1)))
    return "".join(out).encode("latin-1")


# Kinds of a base name in a piece: the name, only ``*.name``, or both.
NAME, WILD, BOTH = 1, 2, 3
_ATTACHED = [0, 0, 0, 1]  # a ``*.name`` compressed against its name
_NOT_ATTACHED = [POINTER_LIMIT, POINTER_LIMIT, POINTER_LIMIT, 0]
_PREFIX = ["", "", "\x01*", ""]


@dataclass(frozen=True)
class Piece:
    """Consecutive records of a snapshot, rendered as one message's answer body."""

    first: str  # its first base name (pieces are found by bisecting these)
    bases: str  # base names, newline separated
    kinds: bytes  # NAME, WILD or BOTH for each base
    body: bytes
    count: int

    def names(self) -> list[str]:
        out: list[str] = []
        for b, k in zip(self.bases.split("\n"), self.kinds, strict=True):
            if k & NAME:
                out.append(b)
            if k & WILD:
                out.append("*." + b)
        return out


def _layout(names: list[str]) -> tuple[list[str], list[int]]:
    """Sorted unique base names and their kinds. The publisher's order
    (names sorted, each ``*.name`` right after ``name``) costs no sort and
    no set."""
    is_wild = list(map(str.startswith, names, repeat("*.")))
    plain = list(compress(names, map(operator.not_, is_wild)))
    wild = list(map(operator.itemgetter(slice(2, None)), compress(names, is_wild)))
    next_wild = [*is_wild[1:], False]
    before_wild = list(compress(names, next_wild))
    if (
        len(before_wild) == len(wild)
        and all(map(operator.eq, before_wild, wild))
        and (len(plain) < 2 or all(map(str.__lt__, plain, islice(plain, 1, None))))
    ):
        has = compress(next_wild, map(operator.not_, is_wild))
        return plain, list(map(operator.add, repeat(NAME), map(operator.mul, has, repeat(WILD))))
    pset = set(plain)
    wset = set(wild)
    bases = sorted(pset | wset)
    return bases, list(map(operator.add, map(pset.__contains__, bases),
                           map(operator.mul, map(wset.__contains__, bases), repeat(WILD))))


def _pack(info: ZoneInfo, bases: list[str], kinds: list[int], start: int, end: int,
          restart: int | None = None) -> list[tuple[int, int, bytes, int]]:
    """Render base names (sorted, valid) as records into message bodies.

    Returns (first index, end index, body, record count) per body. Records
    of the first body start at offset ``start`` of its message, those of
    later ones at ``restart`` (default ``start``); all end by ``end``, which
    is at most :data:`POINTER_LIMIT`, so every ``*.name`` can point at its
    name, which it directly follows. Per-record work is done by C-level
    string and list operations; the loop runs once per body."""
    if not bases:
        return []
    wires = _label_wires(bases)
    tail = info.tail
    if WILD in kinds:
        recs = list(map(str.__add__, map(str.__add__, map(_PREFIX.__getitem__, kinds), wires), repeat(tail)))
    else:
        recs = list(map(str.__add__, wires, repeat(tail)))
    attached = list(map(_ATTACHED.__getitem__, kinds))
    empty = list(map(_NOT_ATTACHED.__getitem__, kinds))
    cum = list(accumulate(map(operator.add, map(len, recs), map(operator.mul, attached, repeat(_WILD_SIZE))),
                          initial=0))
    table = info.wild_records
    end = min(end, POINTER_LIMIT)
    bodies: list[tuple[int, int, bytes, int]] = []
    i, n, pos = 0, len(bases), start
    while i < n:
        j = max(i + 1, bisect.bisect_right(cum, cum[i] + end - pos, i + 1) - 1)
        offsets = map(operator.add, cum[i:j], repeat(pos - cum[i]))
        index = map(operator.add, map(operator.mul, offsets, attached[i:j]), empty[i:j])
        parts = [""] * (2 * (j - i))
        parts[::2] = recs[i:j]
        parts[1::2] = map(table.__getitem__, index)
        bodies.append((i, j, "".join(parts).encode("latin-1"), j - i + sum(attached[i:j])))
        i = j
        pos = start if restart is None else restart
    return bodies


def _pieces(info: ZoneInfo, names: list[str], report: BuildReport) -> list[Piece]:
    """Render names (validated by :func:`clean_names`) as snapshot pieces."""
    bases, kinds = _layout(names)
    try:
        packed = _pack(info, bases, kinds, info.body_start, POINTER_LIMIT)
    except _BadLabelError:
        names, bad = _filter(names, info.max_relative)
        report.skipped.extend(bad)
        bases, kinds = _layout(names)
        packed = _pack(info, bases, kinds, info.body_start, POINTER_LIMIT)
    report.pieces_rendered += len(packed)
    return [Piece(bases[a], "\n".join(bases[a:b]), bytes(kinds[a:b]), body, count)
            for a, b, body, count in packed]


@dataclass(frozen=True)
class Snapshot:
    """One version's records, ready to serve."""

    serial: int
    pieces: tuple[Piece, ...]
    firsts: tuple[str, ...]
    records: int
    size: int

    @classmethod
    def of(cls, serial: int, pieces: Sequence[Piece]) -> Snapshot:
        return cls(serial, tuple(pieces), tuple(p.first for p in pieces),
                   sum(p.count for p in pieces), sum(len(p.body) for p in pieces))

    def names(self) -> Iterator[str]:
        for p in self.pieces:
            yield from p.names()


@dataclass
class BuildReport:
    """What a build did, for the log."""

    skipped: list[str] = field(default_factory=list)
    missing: int = 0  # deletions of names the base did not have
    present: int = 0  # additions of names the base already had
    pieces_rendered: int = 0

    @property
    def consistent(self) -> bool:
        return not self.missing and not self.present


def build_snapshot(info: ZoneInfo, serial: int, names: list[str],
                   report: BuildReport | None = None) -> Snapshot:
    """Render a whole version. Names that cannot be served are skipped and
    listed in the report."""
    report = report if report is not None else BuildReport()
    good, bad = clean_names(names, info.max_relative)
    report.skipped.extend(bad)
    return Snapshot.of(serial, _pieces(info, good, report))


def apply_changes(info: ZoneInfo, base: Snapshot, serial: int, deleted: Iterable[str], added: Iterable[str],
                  report: BuildReport | None = None) -> Snapshot:
    """The next version from the previous one: only the pieces that hold a
    changed name are rendered again; the others are shared."""
    report = report if report is not None else BuildReport()
    gone = set(deleted)
    add_ok, add_bad = _filter(sorted(set(added)), info.max_relative)
    report.skipped.extend(add_bad)
    if not base.pieces:
        report.missing += len(gone)
        return Snapshot.of(serial, _pieces(info, add_ok, report))
    firsts = base.firsts
    touched: dict[int, tuple[set[str], list[str]]] = {}
    for name in gone:
        i = max(0, bisect.bisect_right(firsts, base_of(name)) - 1)
        touched.setdefault(i, (set(), []))[0].add(name)
    for name in add_ok:
        i = max(0, bisect.bisect_right(firsts, base_of(name)) - 1)
        touched.setdefault(i, (set(), []))[1].append(name)
    pieces: list[Piece] = []
    prev = 0
    for i in sorted(touched):
        pieces.extend(base.pieces[prev:i])
        dels, adds = touched[i]
        current = base.pieces[i].names()
        have = set(current)
        report.missing += len(dels - have)
        fresh = [n for n in adds if n not in have]
        report.present += len(adds) - len(fresh)
        merged = [n for n in current if n not in dels] + fresh
        if merged:
            pieces.extend(_pieces(info, merged, report))
        prev = i + 1
    pieces.extend(base.pieces[prev:])
    return Snapshot.of(serial, pieces)


@dataclass(frozen=True)
class Step:
    """The condensed name difference between two consecutive served versions."""

    old: int
    new: int
    deleted: frozenset[str]
    added: frozenset[str]


def compose_steps(steps: Sequence[Step]) -> tuple[set[str], set[str]]:
    """One condensed difference for several consecutive steps (a name
    deleted and added again appears in neither set)."""
    deleted: set[str] = set()
    added: set[str] = set()
    for s in steps:
        for n in s.deleted:
            if n in added:
                added.discard(n)
            else:
                deleted.add(n)
        for n in s.added:
            if n in deleted:
                deleted.discard(n)
            else:
                added.add(n)
    return deleted, added


class Zone:
    """What is served: the current snapshot and the differences that lead
    to it from older versions (the IXFR history).

    ``extras`` are the version's records outside the snapshot (the canary
    TXT, the ZONEMD), sent after the apex NS; ``past_extras`` holds those of
    the versions in history, so an IXFR replaces them too."""

    def __init__(self, info: ZoneInfo, snapshot: Snapshot, steps: Sequence[Step] = (), history: int = 100,
                 extras: Sequence[bytes] = (), past_extras: dict[int, tuple[bytes, ...]] | None = None) -> None:
        self.info = info
        self.snapshot = snapshot
        self.extras = tuple(extras)
        self.history = max(0, history)
        # Keep only an unbroken chain of differences that ends at this version.
        kept: list[Step] = []
        expect = snapshot.serial
        for s in reversed(list(steps)[-self.history:] if self.history else []):
            if s.new != expect:
                break
            kept.append(s)
            expect = s.old
        self.steps: tuple[Step, ...] = tuple(reversed(kept))
        self._index = {s.old: i for i, s in enumerate(self.steps)}
        self._ixfr_cache: dict[tuple[int, int], list[tuple[bytes, int]]] = {}
        self.soa_record = info.soa(snapshot.serial)
        self._first = self.soa_record + info.ns() + b"".join(self.extras)
        self._first_count = 2 + len(self.extras)
        past = past_extras or {}
        self.past_extras = {s.old: past.get(s.old, ()) for s in self.steps}

    @property
    def serial(self) -> int:
        return self.snapshot.serial

    @property
    def oldest(self) -> int:
        """The oldest serial an IXFR can start from."""
        return self.steps[0].old if self.steps else self.serial

    @property
    def records(self) -> int:
        return self.snapshot.records + 2 + len(self.extras)

    def advance(self, serial: int, deleted: Iterable[str], added: Iterable[str],
                report: BuildReport | None = None,
                extras: Callable[[Snapshot], Sequence[bytes]] | None = None) -> Zone:
        """The next version; ``extras`` makes its extra records from its snapshot."""
        dels, adds = frozenset(deleted), frozenset(added)
        snap = apply_changes(self.info, self.snapshot, serial, dels, adds, report)
        return Zone(self.info, snap, [*self.steps, Step(self.serial, serial, dels, adds)], self.history,
                    extras(snap) if extras is not None else (), {**self.past_extras, self.serial: self.extras})

    def is_current(self, client_serial: int) -> bool:
        """The client has this version or a newer one (RFC 1982 comparison)."""
        c, s = dns.serial.Serial(client_serial), dns.serial.Serial(self.serial)
        return bool(c == s or c > s)

    def difference(self, client_serial: int) -> tuple[set[str], set[str]] | None:
        """(deleted, added) from the client's version to this one, or None
        when that version is not in history."""
        i = self._index.get(client_serial)
        if i is None:
            return None
        return compose_steps(self.steps[i:])

    def axfr_bodies(self) -> list[tuple[bytes, int]]:
        """(body, record count) of each AXFR message: SOA and NS, every piece,
        and the closing SOA appended to the last one."""
        pieces = self.snapshot.pieces
        if not pieces:
            return [(self._first + self.soa_record, self._first_count + 1)]
        out = [(self._first, self._first_count)]
        out.extend((p.body, p.count) for p in pieces[:-1])
        out.append((pieces[-1].body + self.soa_record, pieces[-1].count + 1))
        return out

    def ixfr_bodies(self, client_serial: int, end: int = POINTER_LIMIT) -> list[tuple[bytes, int]] | None:
        """An IXFR answer as message bodies (new SOA, old SOA, deletions, new
        SOA, additions, new SOA: RFC 1995, one condensed difference), or None
        when the client's version is not in history."""
        key = (client_serial, end)
        cached = self._ixfr_cache.get(key)
        if cached is not None:
            return cached
        diff = self.difference(client_serial)
        if diff is None:
            return None
        deleted, added = diff
        old_extras = self.past_extras.get(client_serial, ())
        b = _Bodies(self.info, self.info.body_start, end)
        b.record(self.soa_record)
        b.record(self.info.soa(client_serial))
        for rec in old_extras:
            if rec not in self.extras:
                b.record(rec)
        b.names(sorted(deleted))
        b.record(self.soa_record)
        for rec in self.extras:
            if rec not in old_extras:
                b.record(rec)
        b.names(sorted(added))
        b.record(self.soa_record)
        out = b.done()
        if len(self._ixfr_cache) >= 2 * max(8, self.history):
            self._ixfr_cache.pop(next(iter(self._ixfr_cache)))
        self._ixfr_cache[key] = out
        return out


@dataclass(frozen=True)
class RecStep:
    """The records deleted and added between two consecutive versions of a :class:`RecordZone`."""

    old: int
    new: int
    deleted: frozenset[bytes]
    added: frozenset[bytes]


class RecordZone:
    """A small zone served record by record (the overlay): every version is
    a sorted tuple of records in answer form, so any two hosts send the same
    bytes; IXFR is the condensed difference of the record sets. Same
    interface as :class:`Zone` for the dispatcher."""

    def __init__(self, info: ZoneInfo, serial: int, recs: Iterable[Rec], steps: Sequence[RecStep] = (),
                 history: int = 100) -> None:
        self.info = info
        self.serial = serial
        self.history = max(0, history)
        body = sorted(set(recs))
        digest = zonemd_digest(info, serial, [info.ns_rec(), *body])
        self.digest = digest
        ns = info.ns()
        # The apex NS goes out with the SOA; the rest is one sorted set.
        self.rest = (info.record(info.zonemd_rec(serial, digest)), *(info.record(r) for r in body))
        self.names = len(body)
        self.soa_record = info.soa(serial)
        self._first = self.soa_record + ns
        self._keep(steps)

    def _keep(self, steps: Sequence[RecStep]) -> None:
        """Keep the unbroken chain of differences that ends at this version."""
        kept: list[RecStep] = []
        expect = self.serial
        for st in reversed(list(steps)[-self.history:] if self.history else []):
            if st.new != expect:
                break
            kept.append(st)
            expect = st.old
        self.steps = tuple(reversed(kept))
        self._index = {st.old: i for i, st in enumerate(self.steps)}

    @property
    def oldest(self) -> int:
        return self.steps[0].old if self.steps else self.serial

    @property
    def records(self) -> int:
        return 2 + len(self.rest)

    def advance(self, serial: int, recs: Iterable[Rec]) -> RecordZone:
        nxt = RecordZone(self.info, serial, recs, (), self.history)
        old, new = frozenset(self.rest), frozenset(nxt.rest)
        nxt._keep([*self.steps, RecStep(self.serial, serial, old - new, new - old)])
        return nxt

    def is_current(self, client_serial: int) -> bool:
        c, s = dns.serial.Serial(client_serial), dns.serial.Serial(self.serial)
        return bool(c == s or c > s)

    def axfr_bodies(self) -> list[tuple[bytes, int]]:
        b = _Bodies(self.info, self.info.body_start, POINTER_LIMIT)
        b.record(self._first)
        b.count += 1  # the SOA and the NS went in as one
        for rec in self.rest:
            b.record(rec)
        b.record(self.soa_record)
        return b.done()

    def ixfr_bodies(self, client_serial: int, end: int = POINTER_LIMIT) -> list[tuple[bytes, int]] | None:
        i = self._index.get(client_serial)
        if i is None:
            return None
        deleted: set[bytes] = set()
        added: set[bytes] = set()
        for st in self.steps[i:]:
            for r in st.deleted:
                if r in added:
                    added.discard(r)
                else:
                    deleted.add(r)
            for r in st.added:
                if r in deleted:
                    deleted.discard(r)
                else:
                    added.add(r)
        b = _Bodies(self.info, self.info.body_start, end)
        b.record(self.soa_record)
        b.record(self.info.soa(client_serial))
        for r in sorted(deleted):
            b.record(r)
        b.record(self.soa_record)
        for r in sorted(added):
            b.record(r)
        b.record(self.soa_record)
        return b.done()


def base_digest(info: ZoneInfo, snap: Snapshot) -> bytes:
    """The ZONEMD digest of the base zone whose records are ``snap``."""
    return zonemd_digest(info, snap.serial, [info.ns_rec(), info.canary_recs(snap.serial)[0]], snap)


def base_extras(info: ZoneInfo, serial: int, digest: bytes) -> tuple[bytes, ...]:
    """The base zone's records outside its snapshot: the ZONEMD and the
    canary TXT (the version is the base's own: what a resolver listing only
    the base enforces). ``blocked.canary`` is a name in the snapshot."""
    return info.record(info.zonemd_rec(serial, digest)), info.record(info.canary_recs(serial)[0])


def base_names(names: Iterable[str]) -> list[str]:
    """The base zone's names: the version's, without the canary's owner
    names (an entry can never take them), plus ``blocked.canary``."""
    return [*(n for n in names if n not in RESERVED), CANARY_BLOCKED]


def overlay_recs(info: ZoneInfo, version: int, blocked: Iterable[str], passed: Iterable[str],
                 report: BuildReport | None = None) -> list[Rec]:
    """The overlay's records for ``version``: the canary, ``name CNAME .``
    for names the version lists that a covered base does not, and
    ``name CNAME rpz-passthru.`` for names a covered base lists that the
    version does not. Names that cannot be served are left out (reported)."""
    report = report if report is not None else BuildReport()
    recs = info.canary_recs(version)
    for names, rdata in ((blocked, b"\x00"), (passed, PASSTHRU)):
        good, bad = _filter(sorted(set(names)), info.max_relative)
        report.skipped.extend(bad)
        recs.extend(Rec(n, T_CNAME, rdata) for n in good if n not in RESERVED)
    return recs


class _Bodies:
    """Message bodies built record by record, for answers made per request."""

    def __init__(self, info: ZoneInfo, start: int, end: int) -> None:
        self.info = info
        self.start = start
        self.end = min(end, POINTER_LIMIT)
        self.out: list[tuple[bytes, int]] = []
        self.cur: list[bytes] = []
        self.count = 0
        self.pos = start

    def _flush(self) -> None:
        if self.cur:
            self.out.append((b"".join(self.cur), self.count))
        self.cur, self.count, self.pos = [], 0, self.start

    def record(self, rec: bytes) -> None:
        if self.pos + len(rec) > self.end and self.cur:
            self._flush()
        self.cur.append(rec)
        self.count += 1
        self.pos += len(rec)

    def names(self, names: list[str]) -> None:
        if not names:
            return
        bases, kinds = _layout(names)
        # Start a new message unless the first name and its wildcard fit here.
        if self.cur and self.pos + len(bases[0]) + 16 + 2 * _WILD_SIZE > self.end:
            self._flush()
        for j, (_a, _b, body, count) in enumerate(_pack(self.info, bases, kinds, self.pos, self.end, self.start)):
            if j:
                self._flush()
            self.cur.append(body)
            self.count += count
            self.pos += len(body)

    def done(self) -> list[tuple[bytes, int]]:
        self._flush()
        return self.out


# --------------------------------------------------------------------------- TSIG


def tsig_record(keyname: dns.name.Name, rdata: dns.rdtypes.ANY.TSIG.TSIG) -> bytes:
    """A TSIG resource record (names uncompressed, as RFC 8945 requires)."""
    rd = rdata.to_wire() or b""
    return (keyname.to_wire() or b"") + struct.pack("!HHIH", T_TSIG, C_ANY, 0, len(rd)) + rd


def tsig_rdata(algorithm: dns.name.Name, time_signed: int, original_id: int, error: int = 0,
               other: bytes = b"", mac: bytes = b"", fudge: int = FUDGE) -> dns.rdtypes.ANY.TSIG.TSIG:
    return dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
        dns.rdataclass.ANY, dns.rdatatype.TSIG, algorithm, time_signed, fudge, mac, original_id, error, other)


class TsigSigner:
    """Signs the messages of one response (RFC 8945 4.3 and 5.3.1): the first
    with the request MAC, each later one chained to the previous MAC and
    covering any unsigned messages in between.

    The MAC is computed by dnspython's TSIG context (``dns.tsig.get_context``)
    over exactly the fields ``dns.tsig.sign`` digests; the record around it is
    assembled here, because building dnspython rdata objects for each of the
    thousands of messages of a large transfer costs several times the HMAC."""

    def __init__(self, key: dns.tsig.Key, request_mac: bytes, original_id: int,
                 now: Callable[[], float] = time.time, error: int = 0, other: bytes = b"",
                 time_signed: int | None = None) -> None:
        self.key = key
        self.request_mac = request_mac
        self.original_id = original_id
        self.now = now
        self.error = error
        self.other = other
        self.time_signed = time_signed
        self.ctx: Any = None
        self.signed = 0
        self._owner = (key.name.to_wire() or b"") + struct.pack("!HHI", T_TSIG, C_ANY, 0)
        self._alg_wire = key.algorithm.to_wire() or b""
        self._first_tail = (key.name.to_digestable() + struct.pack("!HI", C_ANY, 0)
                            + key.algorithm.to_digestable())
        self._id = struct.pack("!H", original_id)

    def sign(self, wire: bytes | memoryview) -> bytes:
        """The TSIG record to append to ``wire`` (whose ARCOUNT does not count it yet)."""
        t = self.time_signed if self.time_signed is not None else int(self.now())
        timers = struct.pack("!HIH", (t >> 32) & 0xFFFF, t & 0xFFFFFFFF, FUDGE)
        body = memoryview(wire)[2:]
        if self.ctx is None:
            ctx = dns.tsig.get_context(self.key)  # type: ignore[no-untyped-call]
            if self.request_mac:
                ctx.update(struct.pack("!H", len(self.request_mac)) + self.request_mac)
            ctx.update(self._id)
            ctx.update(body)
            ctx.update(self._first_tail + timers + struct.pack("!HH", self.error, len(self.other)) + self.other)
        else:
            ctx = self.ctx
            ctx.update(self._id)
            ctx.update(body)
            ctx.update(timers)
        mac = ctx.sign()
        # The next MAC starts from this one (RFC 8945 5.3.1).
        self.ctx = dns.tsig.get_context(self.key)  # type: ignore[no-untyped-call]
        self.ctx.update(struct.pack("!H", len(mac)) + mac)
        self.signed += 1
        rdata = b"".join((self._alg_wire, timers, struct.pack("!H", len(mac)), mac, self._id,
                          struct.pack("!HH", self.error, len(self.other)), self.other))
        return self._owner + struct.pack("!H", len(rdata)) + rdata

    def skip(self, wire: bytes | memoryview) -> None:
        """An unsigned message between two signed ones: the next MAC covers it."""
        if self.ctx is None:
            raise RuntimeError("the first message of a response must be signed")
        self.ctx.update(wire)


def unsigned_error(keyname: dns.name.Name, algorithm: dns.name.Name, original_id: int, error: int,
                   now: float) -> bytes:
    """The TSIG of a BADKEY/BADSIG answer: no MAC (RFC 8945 5.3.2)."""
    return tsig_record(keyname, tsig_rdata(algorithm, int(now), original_id, error))


# --------------------------------------------------------------------------- access


@dataclass
class Access:
    """Who may transfer the zone, from the active ISPs."""

    keys: dict[dns.name.Name, tuple[Isp, dns.tsig.Key]] = field(default_factory=dict)
    revoked: set[dns.name.Name] = field(default_factory=set)
    address_only: list[Isp] = field(default_factory=list)
    notify: list[tuple[Isp, str]] = field(default_factory=list)

    @classmethod
    def from_isps(cls, isps: Iterable[Isp]) -> Access:
        out = cls()
        for isp in isps:
            try:
                name = dns.name.from_text(isp.tsig_name) if isp.tsig_name else None
            except dns.exception.DNSException:
                name = None
            if not isp.active:
                if name is not None:
                    out.revoked.add(name)
                continue
            if name is not None and isp.tsig_secret:
                try:
                    out.keys[name] = (isp, dns.tsig.Key(name, isp.tsig_secret, dns.tsig.HMAC_SHA256))
                except (ValueError, TypeError):
                    pass
            if isp.address_only and isp.allow_from:
                out.address_only.append(isp)
            out.notify.extend((isp, target) for target in isp.notify)
        # A key that is both active and revoked (a re-added ISP) is active.
        out.revoked -= set(out.keys)
        return out

    def keyring(self, _message: object, name: dns.name.Name) -> dns.tsig.Key | None:
        entry = self.keys.get(name)
        return entry[1] if entry else None

    def by_address(self, address: str) -> Isp | None:
        """The address-only ISP that allows this source address without TSIG, if any."""
        try:
            ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        for isp in self.address_only:
            if isp.address_allowed(address):
                return isp
        return None


class ReplayGuard:
    """Request MACs seen within the time window: a captured signed request
    replayed while its time is still valid is refused (RFC 8945 5.2.3
    bounds a request's age; only memory of its MAC stops a second use).

    Memory is bounded: MACs leave once the window has passed, and beyond
    ``limit`` the oldest go first."""

    def __init__(self, window: float = 2 * FUDGE, limit: int = REPLAY_MEMORY) -> None:
        self.window = window
        self.limit = limit
        self.seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def first_use(self, mac: bytes, now: float) -> bool:
        """True the first time a MAC is offered within the window."""
        seen = self.seen
        while seen:  # forget what the window has passed
            oldest, at = next(iter(seen.items()))
            if now - at <= self.window:
                break
            del seen[oldest]
        if mac in seen:
            return False
        while len(seen) >= self.limit:  # make room: the oldest go first
            del seen[next(iter(seen))]
        seen[mac] = now
        return True


# --------------------------------------------------------------------------- dispatcher


@dataclass
class Answer:
    """What to send back for one request, and what to log and count."""

    kind: str  # soa | axfr | ixfr | notify | other
    result: str  # ok | refused | notauth | formerr | servfail | notimp
    messages: Iterable[bytes] = ()
    reason: str | None = None  # refusal reason (a short label) when refused
    detail: str = ""  # one sentence for the log
    isp: Isp | None = None
    serial: int | None = None
    transfer: str | None = None  # "xfr:axfr" | "xfr:ixfr" when zone data was sent
    error: BaseException | None = None  # the bug behind a SERVFAIL
    authenticated: bool = False  # a valid TSIG, or the address of an address-only ISP


@dataclass
class _Request:
    qid: int
    opcode: int
    flags: int
    question: bytes  # wire of the question section (empty when none)
    edns: int  # -1 without OPT, else the EDNS version
    payload: int
    tcp: bool
    signer: TsigSigner | None = None
    udp_cap: int = 0  # over UDP, the most an answer may hold (0: no cap beyond the payload size)


def _rcode_flags(req: _Request, rcode: int, aa: bool = False) -> int:
    return QR | (req.opcode << 11) | (AA if aa else 0) | (req.flags & RD) | (rcode & 0xF)


class Dispatcher:
    """Maps one request (wire bytes, peer address, transport) to an :class:`Answer`."""

    def __init__(self, info: ZoneInfo, zone: Zone | None = None, access: Access | None = None,
                 now: Callable[[], float] = time.time, sign_every: int = SIGN_EVERY,
                 overlay_info: ZoneInfo | None = None, overlay: RecordZone | None = None) -> None:
        self.info = info
        self.zone = zone
        self.overlay_info = overlay_info
        self.overlay = overlay
        self.access = access or Access()
        self.now = now
        self.sign_every = max(1, min(SIGN_EVERY_MAX, sign_every))
        self.replays = ReplayGuard()

    # -- framing

    def _opt(self, req: _Request, ext_rcode: int = 0) -> bytes:
        if req.edns < 0:
            return b""
        return b"\x00" + struct.pack("!HHIH", T_OPT, EDNS_PAYLOAD, (ext_rcode >> 4) << 24, 0)

    def _messages(self, req: _Request, flags: int, bodies: Sequence[tuple[bytes, int]],
                  ext_rcode: int = 0) -> Iterator[bytes]:
        """Whole messages (with the TCP length prefix over TCP), signed as the
        request was. A generator: a long transfer is framed and signed as it
        is sent."""
        opt = self._opt(req, ext_rcode)
        ar = 1 if opt else 0
        signer = req.signer
        last = len(bodies) - 1
        since = 0
        for i, (body, count) in enumerate(bodies):
            head = _HEADER.pack(req.qid, flags, 1 if req.question else 0, count, 0, ar)
            if signer is None:
                wire = b"".join((head, req.question, body, opt))
            elif i in (0, last) or since + 1 >= self.sign_every:
                unsigned = b"".join((head, req.question, body, opt))
                tsig = signer.sign(unsigned)
                wire = b"".join((_HEADER.pack(req.qid, flags, 1 if req.question else 0, count, 0, ar + 1),
                                 unsigned[12:], tsig))
                since = 0
            else:
                wire = b"".join((head, req.question, body, opt))
                signer.skip(wire)
                since += 1
            yield struct.pack("!H", len(wire)) + wire if req.tcp else wire

    def _single(self, req: _Request, rcode: int, records: Sequence[bytes] = (), aa: bool = False) -> list[bytes]:
        """A one-message answer; over UDP one that does not fit is sent
        truncated (TC, no records) so the client retries over TCP."""
        ext = rcode if rcode > 15 else 0
        flags = _rcode_flags(req, rcode, aa)
        msgs = list(self._messages(req, flags, [(b"".join(records), len(records))], ext))
        if not req.tcp and len(msgs[0]) > self._udp_limit(req):
            if req.signer is not None:
                req.signer = TsigSigner(req.signer.key, req.signer.request_mac, req.qid, self.now)
            msgs = list(self._messages(req, flags | TC, [(b"", 0)], ext))
        return msgs

    @staticmethod
    def _udp_limit(req: _Request) -> int:
        limit = 512 if req.edns < 0 else max(512, min(req.payload, EDNS_PAYLOAD))
        return min(limit, req.udp_cap) if req.udp_cap else limit

    @staticmethod
    def _header_only(wire: bytes, rcode: int) -> bytes:
        qid, flags = struct.unpack("!HH", wire[:4])
        return _HEADER.pack(qid, QR | (flags & 0x7800) | (flags & RD) | rcode, 0, 0, 0, 0)

    # -- entry point

    def handle(self, wire: bytes, peer: str, tcp: bool) -> Answer:
        try:
            return self._handle(wire, peer, tcp)
        except Exception as e:  # a bug must cost one answer, never the server
            if len(wire) < 12:
                return Answer("other", "servfail", (), detail="internal error", error=e)
            msg = self._header_only(wire, SERVFAIL)
            return Answer("other", "servfail", [struct.pack("!H", len(msg)) + msg if tcp else msg],
                          detail=f"internal error: {type(e).__name__}", error=e)

    def _formerr(self, wire: bytes, tcp: bool, detail: str, kind: str = "other") -> Answer:
        msg = self._header_only(wire, FORMERR)
        return Answer(kind, "formerr", [struct.pack("!H", len(msg)) + msg if tcp else msg], reason="formerr",
                      detail=detail)

    def _handle(self, wire: bytes, peer: str, tcp: bool) -> Answer:
        if len(wire) < 12:
            return Answer("other", "formerr", (), reason="short", detail="dropped a packet shorter than a header")
        flags = struct.unpack("!H", wire[2:4])[0]
        if flags & QR:
            return Answer("other", "formerr", (), reason="response", detail="dropped a response sent to us")
        tsig_error: tuple[int, str] | None = None
        try:
            msg = dns.message.from_wire(wire, keyring=self.access.keyring, continue_on_error=False)
        except (dns.message.UnknownTSIGKey, dns.tsig.BadAlgorithm, dns.tsig.BadKey):
            tsig_error = (BADKEY, "badkey")
        except dns.tsig.BadSignature:
            tsig_error = (BADSIG, "badsig")
        except dns.tsig.BadTime:
            tsig_error = (BADTIME, "badtime")
        except Exception as e:  # anything dnspython cannot parse is malformed input
            return self._formerr(wire, tcp, f"unparsable request: {type(e).__name__}")
        if tsig_error is not None:
            try:
                msg = dns.message.from_wire(wire, keyring=False)
            except Exception as e:  # as above
                return self._formerr(wire, tcp, f"unparsable request: {type(e).__name__}")
        return self._answer(msg, wire, peer, tcp, tsig_error)

    def _answer(self, msg: dns.message.Message, wire: bytes, peer: str, tcp: bool,
                tsig_error: tuple[int, str] | None) -> Answer:
        opcode = msg.opcode()
        if len(msg.question) > 1:
            return self._formerr(wire, tcp, "more than one question")
        question = b""
        qname: dns.name.Name | None = None
        qtype = qclass = 0
        q_text = ""
        if msg.question:
            rrset = msg.question[0]
            qname, qtype, qclass = rrset.name, int(rrset.rdtype), int(rrset.rdclass)
            question = (qname.to_wire() or b"") + struct.pack("!HH", qtype, qclass)
            q_text = f"{dns.rdataclass.to_text(rrset.rdclass)} {dns.rdatatype.to_text(rrset.rdtype)}"
        opt_payload = msg.payload if msg.edns >= 0 else 512
        req = _Request(msg.id, int(opcode), msg.flags, question, msg.edns, opt_payload, tcp)
        # Until the request proves who sent it, a UDP answer is no larger than the request.
        req.udp_cap = 0 if tcp else len(wire)
        kind = {T_SOA: "soa", T_AXFR: "axfr", T_IXFR: "ixfr"}.get(qtype, "other")
        if opcode == dns.opcode.NOTIFY:
            kind = "notify"
        isp_by_key: Isp | None = None
        key_text = ""
        if msg.had_tsig:
            keyname = msg.keyname
            key_text = keyname.to_text() if keyname is not None else ""
            if tsig_error is not None:
                return self._tsig_refusal(msg, req, kind, tsig_error, peer)
            entry = self.access.keys.get(keyname) if keyname is not None else None
            if entry is None:  # dnspython verified with a key we no longer hold
                return self._tsig_refusal(msg, req, kind, (BADKEY, "badkey"), peer)
            rd = msg.tsig[0] if msg.tsig else None
            now = self.now()
            if rd is None or abs(now - rd.time_signed) > FUDGE:  # our window, whatever fudge the client chose
                return self._tsig_refusal(msg, req, kind, (BADTIME, "badtime"), peer)
            # Only transfers carry the list: an SOA query may be sent again as it was (a secondary's
            # UDP retry resends the same bytes) and tells nothing an unsigned one does not.
            if qtype in (T_AXFR, T_IXFR) and not self.replays.first_use(bytes(rd.mac), now):
                return Answer(kind, "refused", self._single(req, REFUSED), reason="replay", isp=entry[0],
                              detail=f"key {key_text}: a request already answered was sent again (from {peer})")
            isp_by_key = entry[0]
            req.signer = TsigSigner(entry[1], msg.mac or b"", msg.id, self.now)
        # An address-only ISP's address is its identity.
        by_address = None if msg.had_tsig else self.access.by_address(peer)
        trusted = (isp_by_key is not None and isp_by_key.address_allowed(peer)) or by_address is not None
        if trusted:
            req.udp_cap = 0
        answer = self._serve(msg, wire, peer, req, kind, qname, qtype, qclass, q_text, isp_by_key, by_address)
        answer.authenticated = trusted
        return answer

    def _serve(self, msg: dns.message.Message, wire: bytes, peer: str, req: _Request, kind: str,
               qname: dns.name.Name | None, qtype: int, qclass: int, q_text: str, isp_by_key: Isp | None,
               by_address: Isp | None) -> Answer:
        """The answer to a request whose TSIG, if any, is valid."""
        tcp = req.tcp
        opcode = msg.opcode()
        key_text = isp_by_key.tsig_name if isp_by_key is not None else ""
        if opcode != dns.opcode.QUERY:
            return Answer(kind, "notimp", self._single(req, NOTIMP), reason="opcode",
                          detail=f"{dns.opcode.to_text(opcode)} is not served here", isp=isp_by_key)
        if msg.edns > 0:
            return Answer(kind, "formerr", self._single(req, BADVERS), reason="badvers",
                          detail=f"EDNS version {msg.edns} is not supported")
        if qname is None:
            return self._formerr(wire, tcp, "a query without a question", kind)
        served = self._served(qname)
        if qclass != C_IN or served is None:
            return Answer(kind, "refused", self._single(req, REFUSED), reason="not_served",
                          detail=f"not served here: {qname} {q_text}", isp=isp_by_key)
        if qtype not in (T_SOA, T_AXFR, T_IXFR):
            return Answer(kind, "refused", self._single(req, REFUSED), reason="not_served",
                          detail=f"only SOA, AXFR and IXFR are served, not {q_text}",
                          isp=isp_by_key)
        zone = served[1]
        if qtype == T_SOA:
            if zone is None:
                return self._no_version(req, kind, isp_by_key)
            return Answer(kind, "ok", self._single(req, NOERROR, [zone.soa_record], aa=True), isp=isp_by_key,
                          serial=zone.serial)
        if qtype == T_AXFR and not tcp:
            return Answer(kind, "formerr", self._single(req, FORMERR), reason="axfr_udp",
                          detail="AXFR over UDP is not defined (RFC 5936)")
        # A transfer: a valid key whose ISP allows this address, or an address-only ISP.
        if isp_by_key is not None:
            if not isp_by_key.address_allowed(peer):
                return Answer(kind, "refused", self._single(req, REFUSED), reason="acl", isp=isp_by_key,
                              detail=f"key {key_text} is not allowed from {peer}")
            isp = isp_by_key
        elif by_address is not None:
            isp = by_address
        else:
            return Answer(kind, "refused", self._single(req, REFUSED), reason="no_tsig",
                          detail=f"a transfer without TSIG from {peer}: every ISP with a key must sign, "
                                 "and no address-only ISP has this address")
        if zone is None:  # only a request allowed to transfer learns that nothing is published yet
            return self._no_version(req, kind, isp)
        if qtype == T_AXFR:
            return self._axfr(req, zone, isp, "axfr")
        soa = self._client_soa(msg, served[0].origin)
        if soa is None:
            return self._formerr(wire, tcp, "an IXFR query needs the client's SOA in the authority section", kind)
        client_serial = soa
        if zone.is_current(client_serial):
            return Answer(kind, "ok", self._single(req, NOERROR, [zone.soa_record], aa=True), isp=isp,
                          serial=zone.serial, transfer="xfr:ixfr")
        flags = _rcode_flags(req, NOERROR, aa=True)
        if tcp:
            bodies = zone.ixfr_bodies(client_serial)
            if bodies is None:
                return self._axfr(req, zone, isp, "ixfr")
            return Answer(kind, "ok", self._messages(req, flags, bodies), isp=isp, serial=zone.serial,
                          transfer="xfr:ixfr")
        room = self._udp_limit(req) - len(self._opt(req)) - (self._tsig_room(req.signer) if req.signer else 0)
        bodies = zone.ixfr_bodies(client_serial, room)
        if bodies is not None and len(bodies) == 1:
            return Answer(kind, "ok", list(self._messages(req, flags, bodies)), isp=isp, serial=zone.serial,
                          transfer="xfr:ixfr")
        # RFC 1995 4: the client retries over TCP.
        return Answer(kind, "ok", self._single(req, NOERROR, [zone.soa_record], aa=True), isp=isp,
                      serial=zone.serial, detail="UDP IXFR answered with the SOA: the difference does not fit")

    def _no_version(self, req: _Request, kind: str, isp: Isp | None) -> Answer:
        return Answer(kind, "servfail", self._single(req, SERVFAIL), reason="no_version",
                      detail="no version has been published yet", isp=isp)

    @staticmethod
    def _tsig_room(signer: TsigSigner) -> int:
        return len(signer.key.name.to_wire() or b"") + 10 + len(signer.key.algorithm.to_wire() or b"") + 16 + 64

    def _served(self, qname: dns.name.Name) -> tuple[ZoneInfo, Zone | RecordZone | None] | None:
        """The zone a question is about (the base or the overlay), or None."""
        if qname == self.info.origin:
            return self.info, self.zone
        if self.overlay_info is not None and qname == self.overlay_info.origin:
            return self.overlay_info, self.overlay
        return None

    @staticmethod
    def _client_soa(msg: dns.message.Message, origin: dns.name.Name) -> int | None:
        for rrset in msg.authority:
            if rrset.rdtype == T_SOA and rrset.name == origin and len(rrset):
                rd = rrset[0]
                if isinstance(rd, dns.rdtypes.ANY.SOA.SOA):
                    return int(rd.serial)
        return None

    def _axfr(self, req: _Request, zone: Zone | RecordZone, isp: Isp, kind: str) -> Answer:
        flags = _rcode_flags(req, NOERROR, aa=True)
        return Answer(kind, "ok", self._messages(req, flags, zone.axfr_bodies()), isp=isp, serial=zone.serial,
                      transfer="xfr:axfr")

    def _tsig_refusal(self, msg: dns.message.Message, req: _Request, kind: str, error: tuple[int, str],
                      peer: str) -> Answer:
        code, label = error
        keyname = msg.keyname or dns.name.root
        key_text = keyname.to_text()
        rd = msg.tsig[0] if msg.tsig else None
        algorithm = rd.algorithm if rd is not None else dns.tsig.HMAC_SHA256
        if code == BADKEY and keyname in self.access.revoked:
            return Answer(kind, "refused", self._single(req, REFUSED), reason="revoked",
                          detail=f"key {key_text} belongs to a revoked ISP (from {peer})")
        now = self.now()
        if code == BADTIME and rd is not None:
            entry = self.access.keys.get(keyname)
            if entry is not None:
                # Signed, with the request's time and ours in Other Data (RFC 8945 5.2.3). The
                # MAC was good, so the sender holds the key: the answer may exceed the request.
                req.udp_cap = 0
                req.signer = TsigSigner(entry[1], rd.mac, msg.id, self.now, error=BADTIME,
                                        other=struct.pack("!HI", (int(now) >> 32) & 0xFFFF, int(now) & 0xFFFFFFFF),
                                        time_signed=int(rd.time_signed))
                return Answer(kind, "notauth", self._single(req, NOTAUTH), reason=label,
                              detail=f"key {key_text}: time signed is {int(rd.time_signed - now)} s off (from {peer})")
        flags = _rcode_flags(req, NOTAUTH)
        tsig = unsigned_error(keyname, algorithm, msg.id, code, now)
        head = _HEADER.pack(req.qid, flags, 1 if req.question else 0, 0, 0, 1 + (1 if req.edns >= 0 else 0))
        wire = b"".join((head, req.question, self._opt(req), tsig))
        what = {BADKEY: "unknown key or algorithm", BADSIG: "bad signature"}.get(code, label)
        return Answer(kind, "notauth", [struct.pack("!H", len(wire)) + wire if req.tcp else wire], reason=label,
                      detail=f"TSIG {what}: key {key_text} (from {peer})")


def soa_query_serial(wire: bytes) -> int | None:
    """The serial in an SOA answer (for health checks and tests)."""
    msg = dns.message.from_wire(wire, keyring=False)
    for rrset in msg.answer:
        if rrset.rdtype == T_SOA:
            return int(rrset[0].serial)
    return None
