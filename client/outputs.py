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
* Values were checked by :mod:`client.verify` (LDH names; URLs without
  quotes, spaces or control characters), so no line can break its format.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace

from client.config import STYLES, OutputSpec
from client.verify import Record, split_url

MARKER = "blocklist-pull output:"
NULL_ADDRESSES = ("0.0.0.0", "::")  # noqa: S104 (answers written into resolver data, not a bind address)


@dataclass(frozen=True)
class ListInfo:
    list_name: str
    version: int
    published_at: str
    rpz_zone: str


@dataclass(frozen=True)
class Rendered:
    header: str
    body: str

    def data(self) -> bytes:
        return (self.header + self.body).encode()


def comment_char(fmt: str) -> str:
    return ";" if fmt == "rpz" else "#"


def is_ours(existing: bytes, spec: OutputSpec) -> bool:
    """True if the file was written by this tool (it starts with the marker)."""
    first = existing.split(b"\n", 1)[0].decode("utf-8", "replace")
    return first.startswith(f"{comment_char(spec.format)} {MARKER}")


def same_content(existing: bytes, rendered: Rendered, spec: OutputSpec) -> bool:
    """True if ``existing`` is one of our files with exactly this body.

    The header names the version that last changed the file; a new version
    that leaves this file's content as it was does not rewrite it."""
    body = rendered.body.encode()
    if not existing.endswith(body) or not is_ours(existing, spec):
        return False
    head = existing[: len(existing) - len(body)].decode("utf-8", "replace")
    c = comment_char(spec.format)
    return all(line.startswith(c) for line in head.splitlines())


def render(spec: OutputSpec, records: Sequence[Record], info: ListInfo) -> Rendered:
    if spec.format in STYLES and not spec.style:
        spec = replace(spec, style=STYLES[spec.format][0])
    domains = [r for r in records if r.type == "domain"]
    urls = [r for r in records if r.type == "url"]
    c = comment_char(spec.format)
    if spec.format == "rpz":
        body, count = _rpz(spec, domains, info)
        notes = ["Response policy zone: 'CNAME .' answers NXDOMAIN; '*.name' covers subdomains."]
    elif spec.format == "unbound":
        body, count = _unbound(spec, domains)
        notes = ["always_nxdomain (or redirect) zones cover a name and its subdomains;",
                 "transparent zones block one name only (A/AAAA answered locally, names under it resolve)."]
    elif spec.format == "dnsmasq":
        body, count = _dnsmasq(spec, domains)
        notes = ["address=/name/ covers a name and its subdomains;",
                 "host-record covers one name only (A and AAAA answered locally)."]
    elif spec.format == "hosts":
        body, count = _hosts(spec, domains)
        wide = sum(1 for r in domains if r.subdomains)
        notes = ["A hosts file cannot express 'a name and all its subdomains': for the entries "
                 f"that cover subdomains ({wide} here), only the name itself is blocked."]
    elif spec.format == "domains":
        body, count = _domains(spec, domains)
        notes = (["Squid dstdomain form: '.name' is the name and all its subdomains."]
                 if spec.style == "squid" else ["'*.name' lines stand for every name under name."])
    else:
        body, count = _urls(spec, urls)
        notes = (["Squid url_regex form (acl NAME url_regex \"FILE\"): https URLs match only "
                  "where the proxy decrypts them (ssl-bump)."]
                 if spec.style == "squid" else ["One URL a line."])
    lines = [
        f"{MARKER} {spec.format}. Written by blocklist-pull: local edits are replaced on the next pull.",
        f"List {info.list_name} version {info.version}, published {info.published_at}; entries here: {count}.",
        "Rewritten only when its content changes: the version above last changed it.",
        *notes,
    ]
    header = "".join(f"{c} {line}\n" for line in lines)
    return Rendered(header, body)


def covered(domains: Sequence[Record]) -> set[str]:
    """Names that a listed parent with subdomains already covers."""
    wide = {r.value for r in domains if r.subdomains}
    out: set[str] = set()
    if not wide:
        return out
    for r in domains:
        v = r.value
        i = v.find(".")
        while i != -1:
            if v[i + 1 :] in wide:
                out.add(v)
                break
            i = v.find(".", i + 1)
    return out


def _rpz(spec: OutputSpec, domains: Sequence[Record], info: ListInfo) -> tuple[str, int]:
    zone = spec.zone or info.rpz_zone
    parts = [
        f"$ORIGIN {zone}\n$TTL {spec.ttl}\n",
        f"@ SOA localhost. hostmaster.localhost. {info.version} 300 60 2592000 {spec.ttl}\n",
        "@ NS localhost.\n",
    ]
    for r in domains:
        parts.append(f"{r.value} CNAME .\n")
        if r.subdomains:
            parts.append(f"*.{r.value} CNAME .\n")
    return "".join(parts), len(domains)


def _split(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
    v6 = [a for a in addresses if ipaddress.ip_address(a).version == 6]
    return v4, v6


def _unbound(spec: OutputSpec, domains: Sequence[Record]) -> tuple[str, int]:
    skip = covered(domains)
    v4, v6 = _split(spec.redirect or NULL_ADDRESSES)
    parts = ["server:\n"]
    n = 0
    for r in domains:
        if r.value in skip:
            continue
        n += 1
        name = f"{r.value}."
        if r.subdomains and not spec.redirect:
            parts.append(f'    local-zone: "{name}" always_nxdomain\n')
            continue
        parts.append(f'    local-zone: "{name}" {"redirect" if r.subdomains else "transparent"}\n')
        parts.extend(f'    local-data: "{name} A {a}"\n' for a in v4)
        parts.extend(f'    local-data: "{name} AAAA {a}"\n' for a in v6)
    return "".join(parts), n


def _dnsmasq(spec: OutputSpec, domains: Sequence[Record]) -> tuple[str, int]:
    skip = covered(domains)
    v4, v6 = _split(spec.redirect or NULL_ADDRESSES)
    parts: list[str] = []
    n = 0
    for r in domains:
        if r.value in skip:
            continue
        n += 1
        if r.subdomains:
            if spec.redirect:
                parts.extend(f"address=/{r.value}/{a}\n" for a in spec.redirect)
            else:
                parts.append(f"address=/{r.value}/\n")
            continue
        for i in range(max(len(v4), len(v6))):
            addrs = [a[i] for a in (v4, v6) if i < len(a)]
            parts.append(f"host-record={r.value},{','.join(addrs)}\n")
    return "".join(parts), n


def _hosts(spec: OutputSpec, domains: Sequence[Record]) -> tuple[str, int]:
    return "".join(f"{a} {r.value}\n" for r in domains for a in spec.addresses), len(domains)


def _domains(spec: OutputSpec, domains: Sequence[Record]) -> tuple[str, int]:
    if spec.style == "squid":
        skip = covered(domains)
        kept = [r for r in domains if r.value not in skip]
        return "".join(f".{r.value}\n" if r.subdomains else f"{r.value}\n" for r in kept), len(kept)
    return "".join(f"{r.value}\n*.{r.value}\n" if r.subdomains else f"{r.value}\n" for r in domains), len(domains)


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


def _urls(spec: OutputSpec, urls: Sequence[Record]) -> tuple[str, int]:
    if spec.style == "squid":
        return "".join(f"{url_regex(r.value)}\n" for r in urls), len(urls)
    return "".join(f"{r.value}\n" for r in urls), len(urls)
