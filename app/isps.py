"""ISP subscribers: feed tokens, TSIG keys, NOTIFY targets, address ACLs, lag.

What must stay true:

* A feed token is shown once and stored only as its SHA-256. The TSIG
  secret is kept (the transfer server must sign with it) and is shown once;
  Redis access control protects it (see ``deploy/redis.conf``).
* A revoked ISP is refused at once (403 on the feed, REFUSED on transfers).
* An ISP has a TSIG key, and then every zone transfer it makes must be
  signed with it (its address list is a second gate only), unless it was
  registered in the explicit, weaker address-only mode: no TSIG key, and
  its non-empty address list is the only gate (for resolvers that cannot
  sign, such as Unbound).
* Every change is audited, without secrets.
* What an ISP's resolvers enforce (reports from ``blocklist-pull check``)
  is accepted only in a strictly checked form, at a bounded rate, and kept
  bounded: the lowest version its resolvers enforced in the last report,
  when, and one line per resolver (at most :data:`REPORT_RESOLVERS_KEPT`).
"""

from __future__ import annotations

import base64
import calendar
import ipaddress
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from app import audit
from app.clock import Clock
from app.config import parse_hostport
from app.domain import Actor, Role, clean_text, iso
from app.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from app.store import Store, Txn
from app.users import hash_token, new_token

FEED_TOKEN_PREFIX = "blf_"  # noqa: S105 (a prefix that makes leaked tokens recognisable, not a secret)
TSIG_ALGORITHM = "hmac-sha256"
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
REPORT_RESOLVERS_MAX = 16  # resolvers in one report
REPORT_RESOLVERS_KEPT = 32  # resolvers remembered per ISP, most recently seen first
REPORTS_PER_HOUR = 60
_RESOLVER_RE = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9._:\[\]-]{0,79}")
_ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_REPORT_KEYS = frozenset({"resolver", "version", "blocked", "checked_at"})


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValidationError(
            "an ISP name is 1-40 lower-case letters, digits or inner dashes (it becomes part of the TSIG key name)"
        )
    return name


def parse_notify(targets: Any) -> list[str]:
    if targets in (None, ""):
        return []
    if isinstance(targets, str):
        targets = [t for t in re.split(r"[\s,]+", targets) if t]
    if not isinstance(targets, list):
        raise ValidationError("notify targets are a list of IP:PORT")
    out = []
    for t in targets:
        try:
            host, port = parse_hostport(str(t), "notify target")
            ipaddress.ip_address(host)
        except (ConfigError, ValueError):
            raise ValidationError(f"notify target {t!r} must be an IP address and port, like 192.0.2.53:53") from None
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


def parse_cidrs(cidrs: Any) -> list[str]:
    if cidrs in (None, ""):
        return []
    if isinstance(cidrs, str):
        cidrs = [c for c in re.split(r"[\s,]+", cidrs) if c]
    if not isinstance(cidrs, list):
        raise ValidationError("allowed addresses are a list of CIDR prefixes")
    out = []
    for c in cidrs:
        try:
            out.append(str(ipaddress.ip_network(str(c), strict=False)))
        except ValueError:
            raise ValidationError(f"{c!r} is not an IP address or CIDR prefix like 192.0.2.0/24") from None
    return out


def _check_address_only(cidrs: list[str]) -> None:
    """An address-only ISP is identified by its addresses alone: a list, and no prefix that spans the world."""
    if not cidrs:
        raise ValidationError("an address-only ISP needs at least one allowed address (--allow-from CIDR)")
    wide = [c for c in cidrs if ipaddress.ip_network(c).prefixlen < 8]
    if wide:
        raise ValidationError(f"{wide[0]} is too wide for an address-only ISP: its addresses are its only gate")


@dataclass
class Isp:
    name: str
    active: bool
    tsig_name: str
    tsig_secret: str
    notify: list[str]
    allow_from: list[str]
    created_at: int
    version: str
    token_hash: str = ""
    revoked_at: int | None = None
    last_version: int | None = None
    last_pull_at: int | None = None
    last_pull_via: str | None = None
    enforced_version: int | None = None
    enforced_at: int | None = None
    resolvers: list[dict[str, Any]] = field(default_factory=list)
    address_only: bool = False
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)

    def address_allowed(self, address: str) -> bool:
        """True if no ACL is set, or the address is in it."""
        if not self.allow_from:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.networks)

    def public(self, latest: int | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": "active" if self.active else "revoked",
            "transfer_auth": "address-only" if self.address_only else "tsig",
            "tsig_key_name": None if self.address_only else self.tsig_name,
            "tsig_algorithm": None if self.address_only else TSIG_ALGORITHM,
            "notify": self.notify,
            "allow_from": self.allow_from,
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at),
            "last_version": self.last_version,
            "last_pull_at": iso(self.last_pull_at),
            "last_pull_via": self.last_pull_via,
            "versions_behind": (None if latest is None or self.last_version is None
                                else max(0, latest - self.last_version)),
            "enforced_version": self.enforced_version,
            "enforced_at": iso(self.enforced_at),
            "enforced_behind": (None if latest is None or self.enforced_version is None
                                else max(0, latest - self.enforced_version)),
            "resolvers": self.resolvers,
        }


def _from_raw(raw: dict[str, str]) -> Isp:
    allow = json.loads(raw.get("allow_from", "[]"))
    return Isp(
        name=raw["name"],
        active=raw.get("status") == "active",
        tsig_name=raw.get("tsig_name", ""),
        tsig_secret=raw.get("tsig_secret", ""),
        notify=json.loads(raw.get("notify", "[]")),
        allow_from=allow,
        created_at=int(raw.get("created_at", 0)),
        version=raw.get("version", "0"),
        token_hash=raw.get("token_hash", ""),
        revoked_at=int(raw["revoked_at"]) if raw.get("revoked_at") else None,
        last_version=int(raw["last_version"]) if raw.get("last_version") else None,
        last_pull_at=int(raw["last_pull_at"]) if raw.get("last_pull_at") else None,
        last_pull_via=raw.get("last_pull_via") or None,
        enforced_version=int(raw["enforced_version"]) if raw.get("enforced_version") else None,
        enforced_at=int(raw["enforced_at"]) if raw.get("enforced_at") else None,
        resolvers=json.loads(raw.get("resolvers") or "[]"),
        address_only=raw.get("address_only") == "1",
        networks=[ipaddress.ip_network(c) for c in allow],
    )


class Isps:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def get(self, name: str) -> Isp:
        raw = self.store.isps.raw(name)
        if not raw:
            raise NotFoundError(f"there is no ISP {name!r}")
        return _from_raw(raw)

    def list(self) -> list[Isp]:
        names = self.store.isps.names()
        return [_from_raw(r) for r in self.store.isps.raw_many(names) if r]

    def _change(self, actor: Actor, name: str, action: str, fields: dict[str, str], before: Any, after: Any,
                reason: str = "", *, create: bool = False, expect: str | None = None,
                token: tuple[str, str | None] | None = None) -> None:
        def step(txn: Txn) -> None:
            head = audit.head(self.store)
            f = dict(fields, version="1" if create else str(int(expect or "0") + 1))
            self.store.isps.put(txn, name, f, create=create, expect_version=expect)
            if token is not None:
                self.store.isps.set_token(txn, name, token[0], token[1])
            audit.add(txn, self.store, head, actor=actor, action=action, target=f"isp:{name}",
                      before=before, after=after, reason=reason, ts=self.clock())

        def isp_moved() -> None:
            # Only the audit head moved (a change elsewhere) unless the ISP itself did.
            if create and self.store.isps.raw(name):
                raise ConflictError(f"an ISP named {name!r} already exists") from None
            if not create and self.get(name).version != expect:
                raise ConflictError(f"the ISP {name} changed meanwhile; reload and try again") from None

        self.store.transact(step, on_conflict=isp_moved)

    def add(self, actor: Actor, name: Any, notify: Any = None, allow_from: Any = None,
            reason: str = "", *, address_only: Any = False) -> dict[str, Any]:
        """Create an ISP; returns its feed token and TSIG key (shown this once).

        ``address_only``: the weaker mode for resolvers that cannot sign
        transfers: no TSIG key, the address list (required) is the only gate."""
        actor.require("isp.manage")
        name = validate_name(name)
        if not isinstance(address_only, bool):
            raise ValidationError("address_only is true or false")
        targets = parse_notify(notify)
        cidrs = parse_cidrs(allow_from)
        if address_only:
            _check_address_only(cidrs)
        if self.store.isps.raw(name):
            raise ConflictError(f"an ISP named {name!r} already exists")
        token = new_token(FEED_TOKEN_PREFIX)
        secret = "" if address_only else base64.b64encode(secrets.token_bytes(32)).decode()
        tsig_name = "" if address_only else f"{name}.tsig."
        fields = {
            "name": name, "status": "active", "token_hash": hash_token(token), "tsig_name": tsig_name,
            "tsig_secret": secret, "notify": json.dumps(targets), "allow_from": json.dumps(cidrs),
            "created_at": str(int(self.clock())), "address_only": "1" if address_only else "0",
        }
        mode = "address-only" if address_only else "tsig"
        self._change(actor, name, "isp.add", fields, None,
                     {"name": name, "notify": targets, "allow_from": cidrs, "transfer_auth": mode,
                      "tsig_key_name": tsig_name or None},
                     clean_text(reason, "reason"), create=True, token=(hash_token(token), None))
        out: dict[str, Any] = {"name": name, "feed_token": token, "transfer_auth": mode}
        if not address_only:
            out.update(tsig_key_name=tsig_name, tsig_algorithm=TSIG_ALGORITHM, tsig_secret=secret)
        out.update(notify=targets, allow_from=cidrs)
        return out

    def update(self, actor: Actor, name: str, *, notify: Any = None, allow_from: Any = None,
               reason: str = "") -> Isp:
        actor.require("isp.manage")
        isp = self.get(name)
        fields: dict[str, str] = {}
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        if notify is not None:
            targets = parse_notify(notify)
            fields["notify"] = json.dumps(targets)
            before["notify"], after["notify"] = isp.notify, targets
        if allow_from is not None:
            cidrs = parse_cidrs(allow_from)
            if isp.address_only:
                _check_address_only(cidrs)
            fields["allow_from"] = json.dumps(cidrs)
            before["allow_from"], after["allow_from"] = isp.allow_from, cidrs
        if fields:
            self._change(actor, name, "isp.update", fields, before, after, clean_text(reason, "reason"),
                         expect=isp.version)
        return self.get(name)

    def revoke(self, actor: Actor, name: str, reason: str = "") -> Isp:
        actor.require("isp.manage")
        isp = self.get(name)
        if not isp.active:
            raise ConflictError(f"{name} is already revoked")
        self._change(actor, name, "isp.revoke", {"status": "revoked", "revoked_at": str(int(self.clock()))},
                     {"status": "active"}, {"status": "revoked"}, clean_text(reason, "reason"),
                     expect=isp.version)
        return self.get(name)

    def set_transfer_auth(self, actor: Actor, name: str, mode: Any, reason: str = "") -> dict[str, Any]:
        """Switch an ISP between ``tsig`` (a new key, shown this once) and ``address-only``
        (its key is dropped at once; its address list, required, becomes the only gate)."""
        actor.require("isp.manage")
        if mode not in ("tsig", "address-only"):
            raise ValidationError("the transfer mode is tsig or address-only")
        isp = self.get(name)
        if not isp.active:
            raise ConflictError(f"{name} is revoked")
        current = "address-only" if isp.address_only else "tsig"
        if mode == current:
            raise ConflictError(f"{name} already transfers in {mode} mode")
        out: dict[str, Any] = {"name": name, "transfer_auth": mode}
        if mode == "address-only":
            _check_address_only(isp.allow_from)
            fields = {"address_only": "1", "tsig_name": "", "tsig_secret": ""}
        else:
            secret = base64.b64encode(secrets.token_bytes(32)).decode()
            fields = {"address_only": "0", "tsig_name": f"{name}.tsig.", "tsig_secret": secret}
            out.update(tsig_key_name=f"{name}.tsig.", tsig_algorithm=TSIG_ALGORITHM, tsig_secret=secret)
        self._change(actor, name, "isp.transfer_auth", fields, {"transfer_auth": current},
                     {"transfer_auth": mode, "tsig_key_name": fields["tsig_name"] or None},
                     clean_text(reason, "reason"), expect=isp.version)
        return out

    def rotate(self, actor: Actor, name: str, *, token: bool = True, tsig: bool = False,
               reason: str = "") -> dict[str, Any]:
        """New feed token and/or TSIG secret; the old ones stop working at once."""
        actor.require("isp.manage")
        isp = self.get(name)
        if not isp.active:
            raise ConflictError(f"{name} is revoked; add it again instead")
        out: dict[str, Any] = {"name": name}
        fields: dict[str, str] = {}
        new_tok: tuple[str, str | None] | None = None
        if token:
            t = new_token(FEED_TOKEN_PREFIX)
            fields["token_hash"] = hash_token(t)
            new_tok = (hash_token(t), isp.token_hash or None)
            out["feed_token"] = t
        if tsig and isp.address_only:
            raise ValidationError(f"{name} is registered address-only and has no TSIG key; "
                                  "register it again without --address-only to give it one")
        if tsig:
            secret = base64.b64encode(secrets.token_bytes(32)).decode()
            fields["tsig_secret"] = secret
            out.update(tsig_key_name=isp.tsig_name, tsig_algorithm=TSIG_ALGORITHM, tsig_secret=secret)
        if not fields:
            raise ValidationError("rotate the token, the TSIG key, or both")
        self._change(actor, name, "isp.rotate", fields, None,
                     {"token": "rotated" if token else "kept", "tsig": "rotated" if tsig else "kept"},
                     clean_text(reason, "reason"), expect=isp.version, token=new_tok)
        return out

    def check_secrets(self, name: str, *, feed_token: str | None, tsig_secret: str | None) -> Isp:
        """The ISP, if the given feed token and TSIG secret are its current ones."""
        isp = self.get(name)
        if not feed_token and not tsig_secret:
            raise ValidationError("no credentials were given")
        token_ok = not feed_token or secrets.compare_digest(hash_token(feed_token), isp.token_hash)
        tsig_ok = not tsig_secret or secrets.compare_digest(tsig_secret.encode(), isp.tsig_secret.encode())
        if not (token_ok and tsig_ok):
            raise ValidationError(f"these are not the current credentials of {name}; rotate them to get new ones")
        return isp

    def record_bundle_download(self, actor: Actor, name: str, *, with_secrets: bool) -> None:
        """Audit a download of the ISP's onboarding bundle (the record never holds a secret)."""
        actor.require("isp.manage" if with_secrets else "isp.read")
        self.get(name)

        def step(txn: Txn) -> None:
            audit.add(txn, self.store, audit.head(self.store), actor=actor, action="isp.bundle",
                      target=f"isp:{name}", after={"secrets": "included" if with_secrets else "placeholders"},
                      reason="credentials bundle downloaded", ts=self.clock())

        self.store.transact(step)

    def authenticate_feed(self, token: str) -> Isp:
        if not token or not token.startswith(FEED_TOKEN_PREFIX) or len(token) > 200:
            raise AuthenticationError("a valid feed token is required (Authorization: Bearer blf_...)")
        th = hash_token(token)
        name = self.store.isps.token_owner(th)
        raw = self.store.isps.raw(name) if name else {}
        if not raw or not secrets.compare_digest(raw.get("token_hash", ""), th):
            raise AuthenticationError("the feed token is not valid")
        isp = _from_raw(raw)
        if not isp.active:
            raise PermissionDeniedError(f"access for {isp.name} has been revoked")
        return isp

    def record_pull(self, isp: Isp, version: int | None, via: str) -> None:
        fields = {"last_pull_at": str(int(self.clock())), "last_pull_via": via}
        if version is not None:
            fields["last_version"] = str(version)
        self.store.isps.record_pull(isp.name, fields)

    def record_report(self, isp: Isp, body: Any) -> dict[str, Any]:
        """Record what ``blocklist-pull check`` saw the ISP's resolvers enforce.

        ``body`` is ``{"resolvers": [{"resolver", "version", "blocked", "checked_at"}, ...]}``:
        the resolver's label, the version its canary answered (null: no answer), whether
        the always-blocked canary was blocked, and when. Anything else is refused whole."""
        now = self.clock()
        seen = parse_report(body, now)
        enforcing = [r["version"] for r in seen if r["blocked"] and r["version"] is not None]
        # A resolver that does not block the canary enforces nothing, whatever it answers.
        version = min(enforcing) if len(enforcing) == len(seen) else None
        stamp = iso(now)
        merged = {r["resolver"]: dict(r, reported_at=stamp) for r in seen}
        for old in isp.resolvers:
            if isinstance(old, dict) and old.get("resolver") not in merged:
                merged[str(old.get("resolver"))] = old
        kept = list(merged.values())[:REPORT_RESOLVERS_KEPT]
        fields = {"enforced_version": "" if version is None else str(version), "enforced_at": str(int(now)),
                  "resolvers": json.dumps(kept, separators=(",", ":"))}
        # The ISP itself reports; the audit record names it (an ISP is no user: the
        # least-privileged role is recorded).
        actor = Actor(name=f"isp:{isp.name}", role=Role.AUDITOR, agency=isp.name)

        def step(txn: Txn) -> None:
            head = audit.head(self.store)
            self.store.isps.put_report(txn, isp.name, fields)
            audit.add(txn, self.store, head, actor=actor, action="isp.report", target=f"isp:{isp.name}",
                      before={"enforced_version": isp.enforced_version},
                      after={"enforced_version": version, "resolvers": seen}, ts=now)

        def revoked() -> None:
            if not self.get(isp.name).active:
                raise PermissionDeniedError(f"access for {isp.name} has been revoked") from None

        self.store.transact(step, on_conflict=revoked)
        return {"enforced_version": version, "enforced_at": stamp, "resolvers": seen}

    def report_allowed(self, isp: Isp) -> bool:
        """Counts a report; False once the ISP has sent more than REPORTS_PER_HOUR this hour."""
        return self.store.rates.hit("isp-report", isp.name, 3600) <= REPORTS_PER_HOUR


def parse_report(body: Any, now: float) -> list[dict[str, Any]]:
    """The resolvers of a report, checked strictly (see :meth:`Isps.record_report`)."""
    if not isinstance(body, dict) or set(body) != {"resolvers"}:
        raise ValidationError('a report is a JSON object with one key, "resolvers"')
    items = body["resolvers"]
    if not isinstance(items, list) or not 1 <= len(items) <= REPORT_RESOLVERS_MAX:
        raise ValidationError(f'"resolvers" is a list of 1 to {REPORT_RESOLVERS_MAX} resolvers')
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict) or set(item) != _REPORT_KEYS:
            raise ValidationError(f"resolver {i} must have exactly the keys resolver, version, blocked and checked_at")
        label, version, blocked, checked = item["resolver"], item["version"], item["blocked"], item["checked_at"]
        if not isinstance(label, str) or not _RESOLVER_RE.fullmatch(label):
            raise ValidationError(f"resolver {i}: the label must be 1-80 letters, digits or . _ : [ ] -")
        if any(r["resolver"] == label for r in out):
            raise ValidationError(f"resolver {label} is reported twice")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or not 0 <= version < 1 << 53):
            raise ValidationError(f"resolver {label}: version must be a whole number or null")
        if not isinstance(blocked, bool):
            raise ValidationError(f"resolver {label}: blocked must be true or false")
        if not isinstance(checked, str) or not _ISO_RE.fullmatch(checked):
            raise ValidationError(f"resolver {label}: checked_at must be a time like 2026-01-31T12:00:00Z")
        try:
            ts = calendar.timegm(time.strptime(checked, "%Y-%m-%dT%H:%M:%SZ"))
        except ValueError:
            raise ValidationError(f"resolver {label}: checked_at is not a valid time") from None
        if not now - 86400 <= ts <= now + 300:
            raise ValidationError(f"resolver {label}: checked_at must be within the last day")
        out.append({"resolver": label, "version": version, "blocked": blocked, "checked_at": checked})
    return out
