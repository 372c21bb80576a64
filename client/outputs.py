"""Renderers: a verified list as the files resolvers and proxies read. No I/O.

Formats, and how each expresses an entry's scope (``subdomains`` true means
the name and every name under it; false means that one name only):

* ``rpz``: a response policy zone file (BIND, Knot Resolver, PowerDNS,
  Unbound): ``name CNAME .`` and, for subdomains, ``*.name CNAME .``
  (NXDOMAIN; resolvers put their own stop page in front). Same layout as the
  zone the service serves by transfer; serial = version.
* ``unbound``: ``local-zone`` lines in a ``server:`` clause. Subdomains:
  ``local-zone: "name." always_nxdomain``. One name only: a ``transparent``
  local zone with null addresses (``A 0.0.0.0``, ``AAAA ::``) for the name,
  so names under it still resolve. With ``redirect`` addresses, both point
  at the stop page instead.
* ``dnsmasq``: ``address=/name/`` (NXDOMAIN for the name and its
  subdomains); one name only: ``host-record=name,0.0.0.0,::`` (dnsmasq has
  no exact-name NXDOMAIN).
* ``hosts``: ``0.0.0.0 name`` lines. A hosts file cannot express
  subdomains: only the listed name is blocked, and the header says so.
* ``domains``: one name a line, ``*.name`` added for subdomains
  (``style = "wildcard"``), or Squid ``dstdomain`` form (``.name`` for a
  name and its subdomains, ``style = "squid"``).
* ``urls``: the URL entries as Squid ``url_regex`` lines
  (``style = "squid"``; Squid decodes %-escapes before matching, so the
  patterns match the decoded URL) or one URL a line (``style = "plain"``).

What must stay true:

* A file starts with a comment header whose first line is the marker
  (``# blocklist-pull output: ...``); the tool replaces only files that carry
  it, never a file it did not write.
* In formats where a nearer zone would shadow a farther one (Unbound,
  dnsmasq, Squid ``dstdomain``), a name already covered by a listed parent
  with subdomains is left out: a ``transparent`` zone under an
  ``always_nxdomain`` one would otherwise let its subdomains through.
* Values were checked by :mod:`client.verify` or :mod:`client.listfile`
  (LDH names; URLs without quotes, spaces or control characters), so no
  line can break its format.
* The DNS formats (rpz, unbound, dnsmasq) carry the canaries
  ``blocklist-pull check`` asks for: ``version.canary`` TXT with the version
  and ``blocked.canary``, always blocked.
* After each domain format's fixed lines, every entry has its own lines, in
  list order, and every one of them names the entry (:attr:`Format.key`
  reads it back): that is what lets :func:`patch` cut an entry's lines out
  and put new ones in place, giving the bytes a full rendering writes.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from client.config import STYLES, OutputSpec
from client.listfile import Buffer, Lines, domain_values, lower_bounds, splice_spans
from client.verify import Record, split_url

MARKER = "blocklist-pull output:"
NULL_ADDRESSES = ("0.0.0.0", "::")  # noqa: S104 (answers written into resolver data, not a bind address)
_SLAB = 4 << 20  # bytes of list rendered at a time: bounds the per-entry objects alive at once
_SLAB_ENTRIES = 1 << 15  # the same in entries, when their names and flags are at hand


@dataclass(frozen=True)
class ListInfo:
    list_name: str
    version: int
    published_at: str
    rpz_zone: str


@dataclass(frozen=True)
class Rendered:
    """One output file: comment header, fixed lines (``preamble``), then one chunk per entry."""

    header: bytes
    preamble: bytes
    entries: bytes
    count: int  # entries written to this file
    wide: int  # domain entries with subdomains in the list (the hosts header names it)

    @property
    def body(self) -> bytes:
        return self.preamble + self.entries

    def data(self) -> bytes:
        return self.header + self.preamble + self.entries


def comment_char(fmt: str) -> str:
    return ";" if fmt == "rpz" else "#"


def is_ours(existing: bytes, spec: OutputSpec) -> bool:
    """True if the file was written by this tool (it starts with the marker)."""
    first = existing[:200].split(b"\n", 1)[0].decode("utf-8", "replace")
    return first.startswith(f"{comment_char(spec.format)} {MARKER}")


def split_file(existing: Buffer, spec: OutputSpec) -> int:
    """Where the comment header of one of our files ends (``existing``: bytes or an mmap)."""
    c = comment_char(spec.format).encode()
    pos = 0
    while existing[pos : pos + 1] == c:
        nl = existing.find(b"\n", pos)
        if nl < 0:
            return len(existing)
        pos = nl + 1
    return pos


def fingerprint(spec: OutputSpec) -> str:
    """The options that shape a file's content (not where it lives)."""
    spec = _styled(spec)
    return repr((spec.format, spec.zone, spec.ttl, spec.redirect, spec.addresses, spec.style))


def _styled(spec: OutputSpec) -> OutputSpec:
    if spec.format in STYLES and not spec.style:
        return replace(spec, style=STYLES[spec.format][0])
    return spec


# ---------------------------------------------------------------- formats


Piece = bytes | None  # None stands for the entry's name


@dataclass(frozen=True)
class Format:
    """How one output format writes an entry, and how to read an entry's name back from a line.

    An entry's lines are a template of constant pieces and the name, one template for a
    name with its subdomains and one for the name only: many entries are then written
    by list operations that run in C, not once per entry in Python."""

    wide: tuple[Piece, ...]
    narrow: tuple[Piece, ...]
    key: Callable[[bytes], bytes]  # a line -> the domain it belongs to
    nested: bool  # leaves out names covered by a listed parent with subdomains
    notes: Callable[[int], list[str]] = field(default=lambda wide: [])

    def chunk(self, name: bytes, wide: bool) -> bytes:
        return b"".join(name if p is None else p for p in (self.wide if wide else self.narrow))

    def run(self, names: list[bytes], wide: bool) -> bytes:
        """The lines of consecutive entries that share their subdomains flag."""
        template = self.wide if wide else self.narrow
        if not names:
            return b""
        # The constant text before, between and after an entry's names.
        consts = [b""]
        for piece in template:
            if piece is None:
                consts.append(b"")
            else:
                consts[-1] += piece
        first, last = consts[0], consts[-1]
        if len(consts) == 2:  # one name: the entries are the names joined by last + first
            return first + (last + first).join(names) + last
        if len(set(consts[1:-1])) == 1:  # the name repeated, the same text between
            same = map(consts[1].join, zip(*[names] * (len(consts) - 1), strict=True))
            return first + (last + first).join(same) + last
        k, n = len(template), len(names)
        parts: list[bytes] = [b""] * (k * n)
        for i, piece in enumerate(template):
            parts[i::k] = names if piece is None else [piece] * n
        return b"".join(parts)


def _after_star(line: bytes) -> bytes:
    name = line.split(b" ", 1)[0]
    return name[2:] if name.startswith(b"*.") else name


def _quoted(line: bytes) -> bytes:
    start = line.index(b'"') + 1
    end = line.index(b'"', start)
    space = line.find(b" ", start, end)  # local-data: "name. A 0.0.0.0"
    return line[start : (end if space == -1 else space) - 1]  # without the name's final dot


def _dnsmasq_key(line: bytes) -> bytes:
    if line.startswith(b"address=/"):
        return line[9 : line.index(b"/", 9)]
    return line[12 : line.index(b",")]  # host-record=


def _domains_key(line: bytes) -> bytes:
    return line[2:] if line.startswith(b"*.") else line[1:] if line.startswith(b".") else line


def _split(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    return v4, v6


def format_of(spec: OutputSpec) -> Format:
    """The writer of a domain output (every format but ``urls``)."""
    spec = _styled(spec)
    if spec.format == "rpz":
        return Format((None, b" CNAME .\n*.", None, b" CNAME .\n"), (None, b" CNAME .\n"), _after_star, False,
                      lambda wide: ["Response policy zone: 'CNAME .' answers NXDOMAIN; '*.name' covers subdomains."])
    if spec.format == "unbound":
        v4, v6 = _split(spec.redirect or NULL_ADDRESSES)
        data = [f' A {a}"\n'.encode() for a in v4] + [f' AAAA {a}"\n'.encode() for a in v6]
        local_data: list[Piece] = [x for d in data for x in (b'    local-data: "', None, b"." + d)]
        narrow: tuple[Piece, ...] = (b'    local-zone: "', None, b'." transparent\n', *local_data)
        if spec.redirect:
            wide: tuple[Piece, ...] = (b'    local-zone: "', None, b'." redirect\n', *local_data)
        else:
            wide = (b'    local-zone: "', None, b'." always_nxdomain\n')
        return Format(wide, narrow, _quoted, True, lambda wide: [
            "always_nxdomain (or redirect) zones cover a name and its subdomains;",
            "transparent zones block one name only (A/AAAA answered locally, names under it resolve)."])
    if spec.format == "dnsmasq":
        v4, v6 = _split(spec.redirect or NULL_ADDRESSES)
        pairs = [",".join(a[i] for a in (v4, v6) if i < len(a)).encode() for i in range(max(len(v4), len(v6)))]
        tails = [b"/" + a.encode() + b"\n" for a in spec.redirect] if spec.redirect else [b"/\n"]
        return Format(tuple(x for t in tails for x in (b"address=/", None, t)),
                      tuple(x for p in pairs for x in (b"host-record=", None, b"," + p + b"\n")),
                      _dnsmasq_key, True, lambda wide: [
                          "address=/name/ covers a name and its subdomains;",
                          "host-record covers one name only (A and AAAA answered locally)."])
    if spec.format == "hosts":
        lines = tuple(x for a in spec.addresses for x in (a.encode() + b" ", None, b"\n"))
        return Format(lines, lines, lambda line: line.split(b" ", 1)[1], False,
                      lambda wide: ["A hosts file cannot express 'a name and all its subdomains': for the entries "
                                    f"that cover subdomains ({wide} here), only the name itself is blocked."])
    if spec.format == "domains" and spec.style == "squid":
        return Format((b".", None, b"\n"), (None, b"\n"), _domains_key, True,
                      lambda wide: ["Squid dstdomain form: '.name' is the name and all its subdomains."])
    if spec.format == "domains":
        return Format((None, b"\n*.", None, b"\n"), (None, b"\n"), _domains_key, False,
                      lambda wide: ["'*.name' lines stand for every name under name."])
    raise ValueError(f"{spec.format} is not a domain output")


def _url_notes(spec: OutputSpec) -> list[str]:
    if spec.style == "squid":
        return ["Squid url_regex form (acl NAME url_regex \"FILE\"): https URLs match only "
                "where the proxy decrypts them (ssl-bump)."]
    return ["One URL a line."]


def header(spec: OutputSpec, info: ListInfo, count: int, notes: Iterable[str]) -> bytes:
    lines = [
        f"{MARKER} {spec.format}. Written by blocklist-pull: local edits are replaced on the next pull.",
        f"List {info.list_name} version {info.version}, published {info.published_at}; entries here: {count}.",
        "Rewritten only when its content changes: the version above last changed it.",
        *notes,
    ]
    c = comment_char(spec.format)
    return "".join(f"{c} {line}\n" for line in lines).encode()


def preamble(spec: OutputSpec, info: ListInfo) -> bytes:
    """The lines before the entries. The DNS formats carry the canaries that
    ``blocklist-pull check`` asks a resolver for: ``version.canary`` TXT with the
    version, and ``blocked.canary``, always blocked."""
    if spec.format == "rpz":
        zone = spec.zone or info.rpz_zone
        return (f"$ORIGIN {zone}\n$TTL {spec.ttl}\n"
                f"@ SOA localhost. hostmaster.localhost. {info.version} 300 60 2592000 {spec.ttl}\n"
                "@ NS localhost.\n"
                f'version.canary TXT "{info.version}"\n'
                "blocked.canary CNAME .\n").encode()
    if spec.format == "unbound":
        return (b"server:\n"
                + f'    local-data: \'version.canary. TXT "{info.version}"\'\n'.encode()
                + b'    local-zone: "blocked.canary." always_nxdomain\n')
    if spec.format == "dnsmasq":
        return f'txt-record=version.canary,"{info.version}"\naddress=/blocked.canary/\n'.encode()
    return b""


# ---------------------------------------------------------------- full rendering


class ListView:
    """What the renderers need from a list, each computed once per run."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self._wide_count: int | None = None
        self._domain_count: int | None = None
        self._covered: set[bytes] | None = None
        self._parents: dict[str, int] | None = None

    @property
    def wide_count(self) -> int:
        if self._wide_count is None:
            flags = self.lines.cached_flags()
            self._wide_count = flags.count(b"t") if flags is not None \
                else self.lines.data.count(b'"subdomains":true,', 0, self.lines.url_start)
        return self._wide_count

    @property
    def domain_count(self) -> int:
        if self._domain_count is None:
            values = self.lines.cached_values()
            self._domain_count = len(values) if values is not None \
                else self.lines.data.count(b"\n", 0, self.lines.url_start)
        return self._domain_count

    @property
    def covered(self) -> set[bytes]:
        """Names that a listed parent with subdomains already covers."""
        if self._covered is None:
            self._scan_parents()
        assert self._covered is not None
        return self._covered

    def parent_counts(self) -> dict[str, int]:
        """How many listed names sit directly under each parent name."""
        if self._parents is None:
            self._scan_parents()
        assert self._parents is not None
        return self._parents

    def _scan_parents(self) -> None:
        values = self.lines.cached_values() or self.lines.domain_values()
        counts = Counter(v.partition(b".")[2] for v in values)
        self._parents = {p.decode(): n for p, n in counts.items()}
        del counts
        wide_parents = [p for p in ancestors(self._parents) if self.lines.is_wide(p.encode())]
        ends = tuple(f".{p}".encode() for p in wide_parents)
        self._covered = {v for v in values if v.endswith(ends)} if ends else set()

    def slabs(self) -> Iterable[tuple[list[bytes], bytes]]:
        """(domains, their subdomain flags as b"t"/b"f" one byte each) a few megabytes of list
        at a time, in order."""
        values, flags = self.lines.cached_values(), self.lines.cached_flags()
        if values is not None and flags is not None:  # read by the check: taken as they are
            for i in range(0, len(values), _SLAB_ENTRIES):
                yield values[i : i + _SLAB_ENTRIES], flags[i : i + _SLAB_ENTRIES]
            return
        data, end = self.lines.data, self.lines.url_start
        pos = index = 0
        while pos < end:
            stop = min(end, pos + _SLAB)
            if stop < end:
                stop = data.index(b"\n", stop) + 1
            view = memoryview(data)[pos:stop]
            flags = b"".join(_FLAG.findall(view))
            if values is None:
                yield domain_values(view), flags
            else:
                yield values[index : index + len(flags)], flags
            index += len(flags)
            pos = stop


_FLAG = re.compile(rb'"subdomains":([tf])')
_RUNS = re.compile(rb"t+|f+")


def ancestors(parents: Iterable[str]) -> set[str]:
    """The given parent names and every name above them: all the names that have
    a listed name somewhere under them."""
    out: set[str] = set()
    for name in parents:
        p = name
        while p and p not in out:
            out.add(p)
            p = p.partition(".")[2]
    return out


Sink = Callable[[bytes], object]


def render_into(specs: Sequence[OutputSpec], view: ListView, info: ListInfo, sinks: Sequence[Sink]) -> list[int]:
    """Write each output, in full, to its sink (in pieces, in order); returns the entry count
    of each. The list is read once, a slab at a time, for all of them together, so no whole
    output is ever held in memory."""
    specs = [_styled(s) for s in specs]
    counts: list[int] = []
    domain_outputs: list[tuple[Format, Sink]] = []
    for spec, sink in zip(specs, sinks, strict=True):
        if spec.format == "urls":
            urls = view.lines.url_records()
            sink(header(spec, info, len(urls), _url_notes(spec)))
            if spec.style == "squid":
                sink("".join(f"{url_regex(r.value)}\n" for r in urls).encode())
            else:
                sink("".join(f"{r.value}\n" for r in urls).encode())
            counts.append(len(urls))
            continue
        fmt = format_of(spec)
        domains = view.domain_count
        count = domains - len(view.covered) if fmt.nested else domains
        sink(header(spec, info, count, fmt.notes(view.wide_count)))
        sink(preamble(spec, info))
        domain_outputs.append((fmt, sink))
        counts.append(count)
    if domain_outputs:
        skip = view.covered if any(fmt.nested for fmt, _ in domain_outputs) else set()
        for slab, flags in view.slabs():
            kept: tuple[list[bytes], bytes] | None = None
            for fmt, sink in domain_outputs:
                if fmt.nested and skip:
                    if kept is None:
                        keep = [i for i, v in enumerate(slab) if v not in skip]
                        kept = ([slab[i] for i in keep], bytes(flags[i] for i in keep))
                    sink(_render_slab(fmt, *kept))
                else:
                    sink(_render_slab(fmt, slab, flags))
    return counts


def _render_slab(fmt: Format, names: list[bytes], flags: bytes) -> bytes:
    runs = _RUNS.findall(flags)
    if len(runs) * 8 > len(names):  # flags change often: entry by entry costs less
        return b"".join(map(fmt.chunk, names, [f == 116 for f in flags]))
    out: list[bytes] = []
    start = 0
    for run in runs:
        out.append(fmt.run(names[start : start + len(run)], run[0] == 116))  # 116: "t"
        start += len(run)
    return b"".join(out)


def render_view(spec: OutputSpec, view: ListView, info: ListInfo) -> Rendered:
    parts: list[bytes] = []
    [count] = render_into([spec], view, info, [parts.append])
    head, rest = parts[0], parts[1:]
    pre = rest.pop(0) if spec.format != "urls" else b""
    return Rendered(head, pre, b"".join(rest), count, view.wide_count)


def render(spec: OutputSpec, records: Sequence[Record], info: ListInfo) -> Rendered:
    """The file for ``records`` (sorted by type and value, as the feed sends them)."""
    return render_view(spec, ListView(Lines.of_records(records)), info)


# ---------------------------------------------------------------- patching


@dataclass(frozen=True)
class Change:
    """The domain entries an update removes and adds: (name, subdomains, covered), where covered
    means a parent is listed with its subdomains (before the update for a removal, after it for
    an addition)."""

    removed: Sequence[tuple[bytes, bool, bool]]
    added: Sequence[tuple[bytes, bool, bool]]


@dataclass(frozen=True)
class Patched:
    # The new file, in order: bytes, and (start, stop) ranges of the old file, copied as they are.
    parts: list[tuple[int, int] | bytes]
    count: int
    lines_added: int
    lines_removed: int

    def data(self, existing: Buffer) -> bytes:
        return b"".join(existing[p[0] : p[1]] if isinstance(p, tuple) else p for p in self.parts)


def patch(spec: OutputSpec, existing: Buffer, old_count: int, change: Change, info: ListInfo,
          wide_count: int) -> Patched | None:
    """The file after ``change``, made from the file this tool wrote before it (and only
    from such a file: its lines are in list order, one chunk per entry); None if the
    content stays as it is. ``existing`` may be an mmap of the file: only the lines
    around the change are read, and the result names the rest by its place in the file.

    The lines of each removed entry are cut out and each added entry's lines are put in
    where a full rendering would place them, so the result is that rendering's bytes."""
    spec = _styled(spec)
    fmt = format_of(spec)
    new_pre = preamble(spec, info)
    start = split_file(existing, spec)
    pre_start = start
    for _ in range(new_pre.count(b"\n")):  # same options, so the same number of lines as before
        start = _line_end(existing, start)
    cuts: list[tuple[int, int]] = []
    inserts: list[tuple[int, bytes]] = []
    lines_removed = lines_added = 0
    count = old_count
    gone = sorted(name for name, _wide, covered in change.removed if not (covered and fmt.nested))
    for name, (at, found) in zip(gone, lower_bounds(existing, gone, fmt.key, start), strict=True):
        if not found:
            raise ValueError(f"{name!r} is not in {spec.path}")
        end = at
        while end < len(existing) and fmt.key(existing[end : _line_end(existing, end) - 1]) == name:
            end = _line_end(existing, end)
            lines_removed += 1
        cuts.append((at, end))
        count -= 1
    new = sorted((name, wide) for name, wide, covered in change.added if not (covered and fmt.nested))
    places = lower_bounds(existing, [name for name, _ in new], fmt.key, start)
    for (name, wide), (at, _) in zip(new, places, strict=True):
        text = fmt.chunk(name, wide)
        inserts.append((at, text))
        lines_added += text.count(b"\n")
        count += 1
    if not cuts and not inserts and existing[pre_start:start] == new_pre:
        return None
    head = header(spec, info, count, fmt.notes(wide_count)) + new_pre
    parts = splice_spans(len(existing), [(0, start), *cuts], [(0, head), *inserts])
    return Patched(parts, count, lines_added, lines_removed)


def _line_end(data: Buffer, pos: int) -> int:
    """The offset after the newline that ends the line at ``pos``."""
    nl = data.find(b"\n", pos)
    if nl < 0:
        raise ValueError("the file ends in the middle of a line")
    return nl + 1


_ERE_SPECIAL = frozenset("\\.[]()*+?{}|^$")


def ere_escape(text: str) -> str:
    """``text`` as a POSIX extended regular expression matching it literally."""
    return "".join(f"\\{ch}" if ch in _ERE_SPECIAL else ch for ch in text)


def _decoded_ere(text: str) -> str:
    """``text`` as Squid matches it: Squid decodes %-escapes before applying
    ``url_regex``, so ``%20`` must match a space. A decoded byte that cannot
    be written literally on an ACL line (space, control, non-ASCII) becomes
    ``.``: one byte, any value."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%" and i + 2 < len(text) and all(c in "0123456789ABCDEFabcdef" for c in text[i + 1 : i + 3]):
            byte = int(text[i + 1 : i + 3], 16)
            out.append(ere_escape(chr(byte)) if 0x21 <= byte <= 0x7E else ".")
            i += 3
            continue
        out.append(ere_escape(ch))
        i += 1
    return "".join(out)


def url_regex(url: str) -> str:
    """A Squid ``url_regex`` line matching exactly this URL, over http or https."""
    parts = split_url(url)
    if parts is None:  # verify.make_record admits only URLs split_url accepts
        raise ValueError(f"not a normal-form URL: {url[:80]!r}")
    _scheme, host, port, rest = parts
    port_re = f":{port}" if port is not None else "(:(80|443))?"
    return f"^https?://{ere_escape(host)}{port_re}{_decoded_ere(rest)}$"


