"""Entries, their normal form, the safety rules and the lifecycle. No I/O.

What must stay true:

* A stored value is always in normal form: domains are lower-case IDNA 2008
  A-labels without a trailing dot and within RFC 1035 limits; URLs are
  ``scheme://host[:port]/path[?query]`` with the host as a normal domain and
  percent-encoding normalised (RFC 3986 section 6.2.2). Normal values never
  contain ``"`` or ``\\``, so they can be written into JSON and zone files
  without escaping.
* Nothing that would take down legitimate sites can become an entry: IP
  literals, public suffixes (private section of the PSL included), allowlisted
  names and their parents are refused with a reason a curator can act on.
* Status changes follow :data:`TRANSITIONS` only; who may do what is
  :data:`PERMISSIONS`; approvals obey the four-eyes rule.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import idna
import msgspec
from publicsuffixlist import PublicSuffixList

from app.errors import PermissionDeniedError, RefusedError, ValidationError

MAX_DOMAIN_LENGTH = 253
MAX_LABEL_LENGTH = 63
MAX_URL_LENGTH = 2048
MAX_TEXT_LENGTH = 2000
MAX_REF_LENGTH = 200

_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


class EntryType(enum.StrEnum):
    DOMAIN = "domain"
    URL = "url"


class Status(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"
    DELISTED = "delisted"
    REJECTED = "rejected"
    SUSPENDED = "suspended"


class Role(enum.StrEnum):
    ADMIN = "admin"
    CURATOR = "curator"
    VETTER = "vetter"
    AUDITOR = "auditor"


# action -> (states it may start from, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[Status], Status]] = {
    "approve": (frozenset({Status.PENDING}), Status.ACTIVE),
    "reject": (frozenset({Status.PENDING}), Status.REJECTED),
    "reverify": (frozenset({Status.ACTIVE}), Status.ACTIVE),
    "suspend": (frozenset({Status.ACTIVE}), Status.SUSPENDED),
    "reinstate": (frozenset({Status.SUSPENDED}), Status.ACTIVE),
    # A pending entry was never published: it is rejected or withdrawn, not delisted.
    "delist": (frozenset({Status.ACTIVE, Status.SUSPENDED, Status.EXPIRED}), Status.DELISTED),
    # The submitter takes back their own pending entry; it ends as rejected,
    # with "withdrawn by submitter" as the state's reason.
    "withdraw": (frozenset({Status.PENDING}), Status.REJECTED),
    "expire": (frozenset({Status.ACTIVE}), Status.EXPIRED),
    "resubmit": (frozenset({Status.EXPIRED, Status.DELISTED, Status.REJECTED}), Status.PENDING),
}

# The actions people take on one entry (the web and the API offer these);
# "expire" is the system's and "resubmit" makes a new submission.
ENTRY_ACTIONS: tuple[str, ...] = tuple(a for a in TRANSITIONS if a not in ("expire", "resubmit"))

WITHDRAWN = "withdrawn by submitter"

# Actions that need a reason from the person taking them.
REASON_REQUIRED = frozenset({"reject", "suspend", "reinstate", "delist"})

_ALL = frozenset(Role)
PERMISSIONS: dict[str, frozenset[Role]] = {
    "entry.read": _ALL,
    "entry.submit": frozenset({Role.CURATOR, Role.VETTER, Role.ADMIN}),
    "entry.resubmit": frozenset({Role.CURATOR, Role.VETTER, Role.ADMIN}),
    "entry.approve": frozenset({Role.VETTER}),
    "entry.reject": frozenset({Role.VETTER}),
    "entry.reverify": frozenset({Role.CURATOR, Role.VETTER}),
    "entry.suspend": frozenset({Role.VETTER, Role.ADMIN}),
    "entry.reinstate": frozenset({Role.VETTER, Role.ADMIN}),
    "entry.delist": frozenset({Role.VETTER, Role.ADMIN}),
    # Only the submitter may withdraw (checked by the service); these roles submit.
    "entry.withdraw": frozenset({Role.CURATOR, Role.VETTER, Role.ADMIN}),
    "entry.import": frozenset({Role.CURATOR, Role.VETTER, Role.ADMIN}),
    "allowlist.read": _ALL,
    "allowlist.write": frozenset({Role.ADMIN}),
    "user.manage": frozenset({Role.ADMIN}),
    "isp.manage": frozenset({Role.ADMIN}),
    "isp.read": frozenset({Role.ADMIN, Role.AUDITOR}),
    "settings.write": frozenset({Role.ADMIN}),
    "publish.now": frozenset({Role.ADMIN, Role.VETTER}),
    "publish.release": frozenset({Role.ADMIN}),
    "publish.read": _ALL,
    "audit.read": frozenset({Role.ADMIN, Role.AUDITOR}),
    "appeal.read": frozenset({Role.ADMIN, Role.VETTER, Role.CURATOR}),
    "appeal.decide": frozenset({Role.VETTER, Role.ADMIN}),
}

#: What each permission lets a person do, as a person would say it.
PERMISSION_WORDS: dict[str, str] = {
    "entry.read": "see the list's entries",
    "entry.submit": "submit entries",
    "entry.resubmit": "submit entries again",
    "entry.approve": "approve entries",
    "entry.reject": "reject entries",
    "entry.reverify": "re-verify entries",
    "entry.suspend": "suspend entries",
    "entry.reinstate": "reinstate entries",
    "entry.delist": "delist entries",
    "entry.import": "import entries",
    "allowlist.read": "see the never-block allowlist",
    "allowlist.write": "change the never-block allowlist",
    "user.manage": "manage user accounts",
    "isp.manage": "manage ISPs",
    "isp.read": "see the ISPs",
    "settings.write": "change settings",
    "publish.now": "publish the list",
    "publish.release": "release or discard held publications",
    "publish.read": "see publications",
    "audit.read": "read the audit log",
    "appeal.read": "see appeals",
    "appeal.decide": "decide appeals",
}


def _with_article(role: str) -> str:
    return ("an " if role[:1] in "aeiou" else "a ") + role


@dataclass(frozen=True)
class Actor:
    """Whoever acts: a signed-in user, or the system itself (expiry, imports by CLI)."""

    name: str
    role: Role
    agency: str
    system: bool = False

    def may(self, permission: str) -> bool:
        return self.system or self.role in PERMISSIONS[permission]

    def require(self, permission: str) -> None:
        if not self.may(permission):
            allowed = sorted(str(r) for r in PERMISSIONS[permission])
            who = " or ".join(f"{r}s" for r in allowed)
            raise PermissionDeniedError(
                f"as {_with_article(str(self.role))} you may not {PERMISSION_WORDS.get(permission, permission)}; "
                f"only {who} may"
            )


SYSTEM = Actor(name="system", role=Role.ADMIN, agency="system", system=True)


# --------------------------------------------------------------------------- names


@functools.cache
def public_suffix_list() -> PublicSuffixList:
    """The PSL shipped with the ``publicsuffixlist`` package, private section included."""
    return PublicSuffixList(accept_unknown=True, only_icann=False)


def _refuse_ip(text: str, original: str) -> None:
    candidate = text.strip("[]")
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return
    raise RefusedError(
        f"{original!r} is an IP address; blocking an address would take down every site hosted on it"
    )


_ASCII_NAME = re.compile(r"[A-Za-z0-9.-]+")


def normalize_domain(raw: str) -> str:
    """Return the normal form of a domain name, or raise with a reason."""
    if not isinstance(raw, str):
        raise ValidationError("the domain must be a string")
    text = raw.strip()
    if not text:
        raise ValidationError("the domain is empty")
    if len(text) > 4 * MAX_DOMAIN_LENGTH:
        raise ValidationError("the domain is longer than 253 characters")
    if _ASCII_NAME.fullmatch(text):
        # Fast path: for ASCII letters, digits and hyphens UTS 46 mapping is
        # lower-casing, and IDNA 2008 adds only the hyphen rules checked below.
        if text.endswith("."):
            text = text[:-1]
        ascii_name = text.lower()
        if any(c.isdigit() for c in ascii_name[-1:]) or ascii_name.startswith("0x"):
            _refuse_ip(ascii_name, raw)
        if any(label.startswith("xn--") or label[2:4] == "--" for label in ascii_name.split(".")):
            ascii_name = _idna(text, raw)
    else:
        if "://" in text or "/" in text or "?" in text:
            raise ValidationError(
                f"{raw!r} looks like a URL: submit it as type url, or give only the host name"
            )
        if text.startswith("*"):
            raise ValidationError(
                f"{raw!r} is a wildcard: submit the domain itself with subdomains set to true instead"
            )
        if any(c.isspace() for c in text):
            raise ValidationError(f"{raw!r} contains white space")
        _refuse_ip(text, raw)
        if text.endswith("."):
            text = text[:-1]
        if ":" in text:
            raise ValidationError(f"{raw!r} contains a ':'; give the host name without a port")
        ascii_name = _idna(text, raw)
        _refuse_ip(ascii_name, raw)
    if len(ascii_name) > MAX_DOMAIN_LENGTH:
        raise ValidationError(f"{raw!r} is longer than {MAX_DOMAIN_LENGTH} characters in DNS form")
    labels = ascii_name.split(".")
    for label in labels:
        if not label:
            raise ValidationError(f"{raw!r} has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValidationError(f"{raw!r} has a label longer than {MAX_LABEL_LENGTH} characters")
        if not _LDH_LABEL.fullmatch(label):
            raise ValidationError(
                f"{raw!r} is not a valid host name (letters, digits and inner hyphens only)"
            )
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise RefusedError(
            f"{raw!r} looks like an IP address (numeric top-level label); "
            "blocking an address would take down every site hosted on it"
        )
    return ascii_name


def _idna(text: str, raw: str) -> str:
    if not text or text.startswith(".") or ".." in text:
        raise ValidationError(f"{raw!r} has an empty label")
    try:
        ascii_name = idna.encode(text, uts46=True, transitional=False).decode("ascii").lower()
    except idna.IDNAError as e:
        raise ValidationError(f"{raw!r} is not a valid domain name ({e})") from None
    except UnicodeError:
        raise ValidationError(f"{raw!r} is not a valid domain name") from None
    for label in ascii_name.split("."):
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                raise ValidationError(f"{raw!r} contains an invalid punycode label {label!r}") from None
    return ascii_name


def display_domain(ascii_name: str) -> str:
    """The Unicode form for people; the A-label form when it does not decode."""
    try:
        return idna.decode(ascii_name)
    except (idna.IDNAError, UnicodeError):
        return ascii_name


def display_url(url: str) -> str:
    """A URL with its host in Unicode form, for people."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, tail = rest.partition("/")
    name, colon, port = host.partition(":")
    return f"{scheme}://{display_domain(name)}{colon}{port}{slash}{tail}"


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_HEX = frozenset("0123456789abcdefABCDEF")


def _normalize_percent(part: str, safe: frozenset[str]) -> str:
    """Decode %XX of unreserved characters, upper-case the rest, encode the unsafe."""
    out: list[str] = []
    data = part.encode("utf-8")
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b == 0x25 and i + 2 < n and chr(data[i + 1]) in _HEX and chr(data[i + 2]) in _HEX:
            value = int(data[i + 1 : i + 3], 16)
            ch = chr(value)
            if value < 128 and ch in _UNRESERVED:
                out.append(ch)
            else:
                out.append("%" + data[i + 1 : i + 3].decode("ascii").upper())
            i += 3
            continue
        ch = chr(b)
        if b < 128 and ch in safe:
            out.append(ch)
        else:
            out.append(f"%{b:02X}")
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    if "." not in path:
        return path
    segments = path.split("/")
    output: list[str] = []
    for seg in segments[1:]:
        if seg == "..":
            if output:
                output.pop()
        elif seg != ".":
            output.append(seg)
    result = "/" + "/".join(output)
    if segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"
    return result


@dataclass(frozen=True)
class NormalUrl:
    url: str
    host: str
    is_site_root: bool


def normalize_url(raw: str) -> NormalUrl:
    """Return the canonical form of an http(s) URL, or raise with a reason."""
    if not isinstance(raw, str):
        raise ValidationError("the URL must be a string")
    text = raw.strip()
    if not text:
        raise ValidationError("the URL is empty")
    if len(text) > MAX_URL_LENGTH:
        raise ValidationError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() for c in text) or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValidationError("the URL contains white space or control characters")
    try:
        parts = urlsplit(text)
    except ValueError as e:
        if "[" in text:
            host_part = text.split("//", 1)[-1].split("/", 1)[0]
            _refuse_ip(host_part.rsplit("@", 1)[-1].split("]")[0] + "]", raw)
        raise ValidationError(f"{raw!r} is not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValidationError(f"{raw!r} is not an http:// or https:// URL")
    netloc = parts.netloc.rsplit("@", 1)[-1]  # user information is not part of what is blocked
    if not netloc:
        raise ValidationError(f"{raw!r} has no host")
    if netloc.startswith("["):
        _refuse_ip(netloc.split("]")[0] + "]", raw)
        raise ValidationError(f"{raw!r} has a malformed host")
    host_text, sep, port_text = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    port: int | None = None
    if sep:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValidationError(f"{raw!r} has an invalid port")
        port = int(port_text)
    host = normalize_domain(host_text)
    default_port = 80 if scheme == "http" else 443
    authority = host if port in (None, default_port) else f"{host}:{port}"
    path = _remove_dot_segments(_normalize_percent(parts.path or "/", _PATH_SAFE))
    if not path.startswith("/"):
        path = "/" + path
    query = _normalize_percent(parts.query, _QUERY_SAFE) if parts.query else ""
    url = f"{scheme}://{authority}{path}" + (f"?{query}" if query else "")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"the URL is longer than {MAX_URL_LENGTH} characters once normalised")
    return NormalUrl(url=url, host=host, is_site_root=(path == "/" and not query))


def url_host(url: str) -> str:
    """Host of a URL that is already in normal form."""
    rest = url.split("://", 1)[1]
    return rest.split("/", 1)[0].split(":", 1)[0]


def parents(domain: str) -> Iterable[str]:
    """``a.b.c`` -> ``b.c``, ``c``."""
    labels = domain.split(".")
    for i in range(1, len(labels)):
        yield ".".join(labels[i:])


@dataclass(frozen=True)
class AllowItem:
    domain: str
    subdomains: bool
    reason: str = ""
    added_by: str = ""
    added_at: int = 0


class SafetyRules:
    """The safety refusals (allowlist, public suffixes, IP literals), over a snapshot of the allowlist."""

    def __init__(self, allowlist: Mapping[str, AllowItem] | Iterable[AllowItem]) -> None:
        items = allowlist.values() if isinstance(allowlist, Mapping) else allowlist
        self.allow: dict[str, AllowItem] = {}
        self.ancestors: dict[str, str] = {}
        for item in items:
            self.allow[item.domain] = item
            for p in parents(item.domain):
                self.ancestors.setdefault(p, item.domain)
        self.psl = public_suffix_list()

    def check_domain(self, domain: str) -> None:
        if self.psl.is_public(domain):
            if "." in domain:
                raise RefusedError(
                    f"{domain} is a public suffix: names under it belong to unrelated owners"
                )
            raise RefusedError(f"{domain} is a top-level domain")
        item = self.allow.get(domain)
        if item is not None:
            raise RefusedError(f"{domain} is on the never-block allowlist")
        for p in parents(domain):
            item = self.allow.get(p)
            if item is not None and item.subdomains:
                raise RefusedError(
                    f"{domain} is under {p}, which is on the never-block allowlist with all its subdomains"
                )
        child = self.ancestors.get(domain)
        if child is not None:
            raise RefusedError(f"{domain} is a parent of {child}, which is on the never-block allowlist")

    def check_url(self, nurl: NormalUrl) -> None:
        host = nurl.host
        if self.psl.is_public(host):
            raise RefusedError(f"the host {host} is a public suffix, not a site")
        covered = host in self.allow or any(
            p in self.allow and self.allow[p].subdomains for p in parents(host)
        )
        if covered and nurl.is_site_root:
            raise RefusedError(
                f"{nurl.url} is the front page of {host}, which is on the never-block allowlist; "
                "list the exact page instead"
            )

    def check(self, etype: EntryType, value: str) -> None:
        if etype is EntryType.DOMAIN:
            self.check_domain(value)
        else:
            self.check_url(normalize_url(value))


def normalize(etype: EntryType | str, raw: str) -> str:
    try:
        kind = EntryType(etype)
    except ValueError:
        raise ValidationError("type must be 'domain' or 'url'") from None
    if kind is EntryType.DOMAIN:
        return normalize_domain(raw)
    return normalize_url(raw).url


def index_key(etype: EntryType | str, value: str) -> str:
    """The uniqueness key of an entry: one entry per (type, value)."""
    return ("d:" if etype == EntryType.DOMAIN else "u:") + value


# --------------------------------------------------------------------------- entries


_decode = msgspec.json.decode
_DAYS: dict[int, str] = {}
_ISO: dict[int, str] = {}
_TIME_OF_DAY: list[str] = []


def epoch(value: object) -> float | None:
    """Unix time of ISO 8601 UTC text (as :func:`iso` writes it); None for none or unreadable text."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def iso(ts: float | int | None) -> str | None:
    """UTC ``YYYY-MM-DDTHH:MM:SSZ``. Fast: a publication formats millions of these,
    so results are cached and the time of day comes from a table."""
    if ts is None:
        return None
    t = int(ts)
    hit = _ISO.get(t)
    if hit is not None:
        return hit
    day, sec = divmod(t, 86400)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))
    if not _TIME_OF_DAY:
        # Built aside and swapped in whole: other threads may read it meanwhile.
        _TIME_OF_DAY[:] = [f"{h:02d}:{m:02d}:{x:02d}Z" for h in range(24) for m in range(60) for x in range(60)]
    out = date + _TIME_OF_DAY[sec]
    if len(_ISO) > 2_000_000:
        _ISO.clear()
    _ISO[t] = out
    return out


def clean_text(value: object, what: str, limit: int = MAX_TEXT_LENGTH, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string")
    text = value.strip()
    if required and not text:
        raise ValidationError(f"{what} is required")
    if len(text) > limit:
        raise ValidationError(f"{what} is longer than {limit} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise ValidationError(f"{what} contains control characters")
    return text


_SHORT = {
    "id": "i", "value": "v", "category": "c", "reason": "r", "evidence_ref": "e",
    "submitted_by": "sb", "agency": "a", "submitted_at": "sa", "updated_at": "ua",
    "approved_by": "ab", "approved_agency": "aa", "approved_at": "at", "listed_since": "ls",
    "verified_at": "va", "verified_by": "vb", "status_reason": "sr", "history": "h",
}


@dataclass
class Entry:
    id: int
    type: EntryType
    value: str
    subdomains: bool
    category: str
    status: Status
    reason: str
    evidence_ref: str
    submitted_by: str
    agency: str
    submitted_at: int
    updated_at: int
    approved_by: str | None = None
    approved_agency: str | None = None
    approved_at: int | None = None
    listed_since: int | None = None
    verified_at: int | None = None
    verified_by: str | None = None
    status_reason: str | None = None
    history: list[int] = field(default_factory=list)

    # -- storage form: compact JSON with short keys, empty fields left out.
    # One active entry is about 220 bytes this way, which keeps the whole
    # entry (record, indexes, audit share) under 500 bytes of Redis memory.

    def to_json(self) -> str:
        d: dict[str, object] = {}
        dd = self.__dict__
        for attr, short in _SHORT.items():
            v = dd[attr]
            if v is None or v in ("", []):
                continue
            d[short] = v
        # Fields that usually equal another are left out when they do.
        at = self.approved_at
        if at is not None:
            if self.listed_since == at:
                d.pop("ls", None)
            if self.verified_at == at:
                d.pop("va", None)
            if self.verified_by == self.approved_by:
                d.pop("vb", None)
        if self.updated_at == (at if at is not None else self.submitted_at):
            d.pop("ua", None)
        d["t"] = "d" if self.type is EntryType.DOMAIN else "u"
        d["s"] = 1 if self.subdomains else 0
        d["st"] = self.status.value
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Entry:
        d = _decode(text)
        g = d.get
        at = g("at")
        sa = int(g("sa", 0))
        return cls(
            id=int(d["i"]),
            type=EntryType.DOMAIN if d["t"] == "d" else EntryType.URL,
            value=d["v"],
            subdomains=bool(g("s", 0)),
            category=g("c", ""),
            status=Status(d["st"]),
            reason=g("r", ""),
            evidence_ref=g("e", ""),
            submitted_by=g("sb", ""),
            agency=g("a", ""),
            submitted_at=sa,
            updated_at=int(g("ua", at if at is not None else sa)),
            approved_by=g("ab"),
            approved_agency=g("aa"),
            approved_at=at,
            listed_since=g("ls", at),
            verified_at=g("va", at),
            verified_by=g("vb", g("ab")),
            status_reason=g("sr"),
            history=list(g("h", [])),
        )

    # -- what people and the API see

    @property
    def key(self) -> str:
        return index_key(self.type, self.value)

    def display(self) -> str:
        """The value as people read it: Unicode host names."""
        return display_domain(self.value) if self.type is EntryType.DOMAIN else display_url(self.value)

    def label(self) -> str:
        """The value for messages: the Unicode form, with the stored A-label
        form beside it when the two differ."""
        shown = self.display()
        return shown if shown == self.value else f"{shown} ({self.value})"

    def covers(self) -> str:
        """What blocking this entry affects, in words shown before approval."""
        if self.type is EntryType.URL:
            return f"only the URL {self.label()} (web proxies; not in the DNS zone)"
        if self.subdomains:
            return f"{self.label()} and every name under it (*.{self.display()})"
        return f"exactly {self.label()}; names under it stay reachable"

    def expires_at(self, reverify_days: int) -> int | None:
        if self.status is not Status.ACTIVE or self.verified_at is None:
            return None
        return self.verified_at + reverify_days * 86400

    def public(self, reverify_days: int) -> dict[str, object]:
        return {
            "id": self.id,
            "type": str(self.type),
            "value": self.value,
            "display": display_domain(self.value) if self.type is EntryType.DOMAIN else self.value,
            "subdomains": self.subdomains,
            "covers": self.covers(),
            "category": self.category,
            "status": str(self.status),
            "reason": self.reason,
            "evidence_ref": self.evidence_ref,
            "submitted_by": self.submitted_by,
            "agency": self.agency,
            "submitted_at": iso(self.submitted_at),
            "updated_at": iso(self.updated_at),
            "approved_by": self.approved_by,
            "approved_agency": self.approved_agency,
            "approved_at": iso(self.approved_at),
            "listed_since": iso(self.listed_since),
            "verified_at": iso(self.verified_at),
            "verified_by": self.verified_by,
            "expires_at": iso(self.expires_at(reverify_days)),
            "status_reason": self.status_reason,
        }

    # -- what leaves the system in the feed (no evidence, reasons or names)

    def feed_record(self) -> dict[str, object]:
        return {
            "type": str(self.type),
            "value": self.value,
            "subdomains": self.subdomains,
            "category": self.category,
            "listed_since": iso(self.listed_since),
            "verified_at": iso(self.verified_at),
        }

    def feed_line(self) -> str:
        """The canonical one-line JSON of :meth:`feed_record` (values need no escaping)."""
        return (
            f'{{"type":"{self.type}","value":"{self.value}","subdomains":'
            f'{"true" if self.subdomains else "false"},"category":"{self.category}",'
            f'"listed_since":"{iso(self.listed_since)}","verified_at":"{iso(self.verified_at)}"}}'
        )


def check_transition(entry: Entry, action: str) -> Status:
    allowed, target = TRANSITIONS[action]
    if entry.status not in allowed:
        raise_state(entry, action)
    return target


def raise_state(entry: Entry, action: str) -> None:
    from app.errors import ConflictError

    allowed = ", ".join(sorted(TRANSITIONS[action][0]))
    raise ConflictError(f"entry {entry.id} is {entry.status}; {action} needs it to be {allowed}")


def check_withdraw(entry: Entry, actor: Actor) -> None:
    if actor.name != entry.submitted_by:
        raise PermissionDeniedError(
            f"entry {entry.id} was submitted by {entry.submitted_by}; only the submitter may withdraw it"
        )


def parse_bool(value: object, what: str) -> bool:
    """A yes/no from a form, a query string, JSON or a CSV cell. The text
    "false" is false; anything that is not clearly yes or no is refused
    rather than guessed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise ValidationError(f"{what} must be true or false, not {value!r}")


def check_four_eyes(entry: Entry, approver: Actor, require_other_agency: bool) -> None:
    if approver.name == entry.submitted_by:
        raise PermissionDeniedError(
            f"entry {entry.id} was submitted by {approver.name}; a second person must approve it"
        )
    if require_other_agency and approver.agency.casefold() == entry.agency.casefold():
        raise PermissionDeniedError(
            f"entry {entry.id} was submitted from {entry.agency}; "
            "approval must come from a vetter of another agency"
        )
