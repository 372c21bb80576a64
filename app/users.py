"""Curator accounts: roles, agencies, passwords, API tokens, second factor.

What must stay true:

* Passwords are stored only as argon2id hashes; API tokens only as SHA-256
  of a 256-bit random value (a fast hash is right for a random secret; a slow
  one is for guessable passwords). Both are shown once, when made.
* A disabled account loses access at once: every request re-reads the
  account, and its sessions are ended when it is disabled.
* Every change to an account is audited, without the secret itself.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app import audit
from app.clock import Clock
from app.domain import Actor, Role, clean_text
from app.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RetryableConflictError,
    ValidationError,
)
from app.store import Store, Txn

USER_TOKEN_PREFIX = "blu_"  # noqa: S105 (a prefix that makes leaked tokens recognisable, not a secret)
_NAME_RE = re.compile(r"[a-z][a-z0-9._-]{1,31}")
MIN_PASSWORD = 12

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) defaults


def use_password_hasher(hasher: PasswordHasher) -> None:
    """Swap the hasher (tests use cheap parameters; stored hashes carry their own)."""
    global _hasher, _dummy_hash  # noqa: PLW0603
    _hasher = hasher
    _dummy_hash = None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


# A hash to verify against when the user does not exist, so that timing does
# not tell which names exist.
_dummy_hash: str | None = None


def _dummy() -> str:
    global _dummy_hash  # noqa: PLW0603
    if _dummy_hash is None:
        _dummy_hash = hash_password("not-a-real-password-0000")
    return _dummy_hash


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValidationError(
            "a user name is 2-32 characters: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    return name


def validate_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValidationError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise ValidationError("the password is too long")
    return password


def validate_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValidationError(
            "role must be one of: " + ", ".join(r.value for r in Role)
        ) from None


@dataclass
class User:
    name: str
    role: Role
    agency: str
    disabled: bool
    created_at: int
    last_login: int | None
    totp_enabled: bool
    version: str
    password_hash: str = ""
    totp_secret: str = ""
    token_hash: str = ""
    locked: bool = False

    @property
    def actor(self) -> Actor:
        return Actor(name=self.name, role=self.role, agency=self.agency)

    def public(self) -> dict[str, object]:
        from app.domain import iso

        return {
            "name": self.name,
            "role": str(self.role),
            "agency": self.agency,
            "disabled": self.disabled,
            "locked": self.locked,
            "created_at": iso(self.created_at),
            "last_login": iso(self.last_login),
            "mfa": self.totp_enabled,
        }


def _from_raw(raw: dict[str, str]) -> User:
    return User(
        name=raw["name"],
        role=Role(raw["role"]),
        agency=raw.get("agency", ""),
        disabled=raw.get("disabled") == "1",
        created_at=int(raw.get("created_at", "0")),
        last_login=int(raw["last_login"]) if raw.get("last_login") else None,
        totp_enabled=bool(raw.get("totp_secret")) and raw.get("totp_confirmed") == "1",
        version=raw.get("version", "0"),
        password_hash=raw.get("password_hash", ""),
        totp_secret=raw.get("totp_secret", ""),
        token_hash=raw.get("token_hash", ""),
        locked=raw.get("locked") == "1",
    )


class Users:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # ------------------------------------------------------------------ reads

    def get(self, name: str) -> User:
        raw = self.store.user_raw(name)
        if not raw:
            raise NotFoundError(f"there is no user {name!r}")
        return _from_raw(raw)

    def find(self, name: str) -> User | None:
        raw = self.store.user_raw(name)
        return _from_raw(raw) if raw else None

    def list(self) -> list[User]:
        out = []
        for name in self.store.user_names():
            u = self.find(name)
            if u is not None:
                out.append(u)
        return out

    def exists_any(self) -> bool:
        return bool(self.store.user_names())

    # ------------------------------------------------------------------ auth

    def authenticate_token(self, token: str) -> User:
        if not token or not token.startswith(USER_TOKEN_PREFIX) or len(token) > 200:
            raise AuthenticationError("a valid API token is required (Authorization: Bearer blu_...)")
        name = self.store.token_owner(hash_token(token))
        user = self.find(name) if name else None
        if user is None or not secrets.compare_digest(user.token_hash, hash_token(token)):
            raise AuthenticationError("the API token is not valid")
        if user.disabled:
            raise PermissionDeniedError(f"the account {user.name} is disabled")
        return user

    def authenticate_password(self, name: str, password: str) -> User:
        """Check a password. Throttling and lock-out are the caller's (see web.auth)."""
        user = self.find(name) if isinstance(name, str) and _NAME_RE.fullmatch(name or "") else None
        if user is None or not user.password_hash:
            check_password(_dummy(), password or "")
            raise AuthenticationError("wrong user name or password")
        if not check_password(user.password_hash, password or ""):
            raise AuthenticationError("wrong user name or password")
        if user.disabled:
            raise PermissionDeniedError(f"the account {user.name} is disabled")
        if user.locked:
            raise PermissionDeniedError(
                f"the account {user.name} is locked after repeated failed sign-ins; an admin must unlock it"
            )
        return user

    def check_totp(self, user: User, code: str) -> bool:
        if not user.totp_secret:
            return False
        return pyotp.TOTP(user.totp_secret).verify((code or "").strip(), valid_window=1)

    # ------------------------------------------------------------------ changes

    def _change(self, actor: Actor, name: str, action: str, fields: dict[str, str],
                before: dict[str, object] | None, after: dict[str, object] | None,
                reason: str = "", create: bool = False, expect: str | None = None) -> None:
        for _ in range(20):
            head = audit.head(self.store)
            txn = Txn()
            now = self.clock()
            version = str(int(expect or "0") + 1) if not create else "1"
            f = dict(fields, version=version)
            self.store.put_user(txn, name, f, create=create, expect_version=expect)
            audit.add(txn, self.store, head, actor=actor, action=action, target=f"user:{name}",
                      before=before, after=after, reason=reason, ts=now)
            try:
                self.store.commit(txn)
                return
            except RetryableConflictError:
                if create and self.find(name) is not None:
                    raise ConflictError(f"a user named {name!r} already exists") from None
                if not create:
                    current = self.find(name)
                    if current is None or current.version != expect:
                        raise ConflictError(
                            f"the account {name} changed while you edited it; reload and try again"
                        ) from None
        raise ConflictError("too many concurrent changes; try again")

    def add(self, actor: Actor, name: str, role: str, agency: str, password: str | None = None) -> User:
        actor.require("user.manage")
        validate_name(name)
        r = validate_role(role)
        agency = clean_text(agency, "agency", 100, required=True)
        if self.find(name) is not None:
            raise ConflictError(f"a user named {name!r} already exists")
        fields = {
            "name": name, "role": str(r), "agency": agency, "disabled": "0",
            "created_at": str(int(self.clock())),
        }
        if password is not None:
            fields["password_hash"] = hash_password(validate_password(password))
        self._change(actor, name, "user.add", fields, None,
                     {"name": name, "role": str(r), "agency": agency}, create=True)
        return self.get(name)

    def update(self, actor: Actor, name: str, *, role: str | None = None, agency: str | None = None,
               reason: str = "") -> User:
        actor.require("user.manage")
        user = self.get(name)
        fields: dict[str, str] = {}
        before: dict[str, object] = {}
        after: dict[str, object] = {}
        if role is not None and validate_role(role) != user.role:
            if user.name == actor.name and user.role is Role.ADMIN:
                raise PermissionDeniedError("you cannot change your own admin role; ask another admin")
            fields["role"] = role
            before["role"], after["role"] = str(user.role), role
        if agency is not None:
            agency = clean_text(agency, "agency", 100, required=True)
            if agency != user.agency:
                fields["agency"] = agency
                before["agency"], after["agency"] = user.agency, agency
        if not fields:
            return user
        self._change(actor, name, "user.update", fields, before, after, reason, expect=user.version)
        if "role" in fields:
            self.store.sessions_end_for_user(name)
        return self.get(name)

    def set_password(self, actor: Actor, name: str, password: str, reason: str = "") -> None:
        if actor.name != name:
            actor.require("user.manage")
        user = self.get(name)
        fields = {"password_hash": hash_password(validate_password(password)), "locked": "0"}
        self._change(actor, name, "user.password", fields, None, {"password": "changed"}, reason,
                     expect=user.version)
        self.store.clear_login_failures(name)
        self.store.sessions_end_for_user(name)

    def set_disabled(self, actor: Actor, name: str, disabled: bool, reason: str = "") -> User:
        actor.require("user.manage")
        user = self.get(name)
        if disabled and user.name == actor.name:
            raise PermissionDeniedError("you cannot disable your own account")
        if user.disabled == disabled:
            return user
        self._change(actor, name, "user.disable" if disabled else "user.enable",
                     {"disabled": "1" if disabled else "0"},
                     {"disabled": user.disabled}, {"disabled": disabled}, reason, expect=user.version)
        if disabled:
            self.store.sessions_end_for_user(name)
        return self.get(name)

    def lock(self, name: str) -> None:
        """Lock after repeated failed sign-ins; audited as the system's action."""
        from app.domain import SYSTEM

        user = self.find(name)
        if user is None or user.locked:
            return
        try:
            self._change(SYSTEM, name, "user.lock", {"locked": "1"}, {"locked": False}, {"locked": True},
                         "too many failed sign-ins", expect=user.version)
        except ConflictError:
            pass
        self.store.sessions_end_for_user(name)

    def unlock(self, actor: Actor, name: str, reason: str = "") -> User:
        actor.require("user.manage")
        user = self.get(name)
        if not user.locked:
            return user
        self._change(actor, name, "user.unlock", {"locked": "0"}, {"locked": True}, {"locked": False},
                     reason, expect=user.version)
        self.store.clear_login_failures(name)
        return self.get(name)

    def issue_token(self, actor: Actor, name: str) -> str:
        """A new API token for ``name``; the old one stops working. Shown once."""
        if actor.name != name:
            actor.require("user.manage")
        user = self.get(name)
        token = new_token(USER_TOKEN_PREFIX)
        th = hash_token(token)
        for _ in range(20):
            user = self.get(name)
            head = audit.head(self.store)
            txn = Txn()
            self.store.put_user(txn, name, {"token_hash": th, "version": str(int(user.version) + 1)},
                                expect_version=user.version)
            self.store.set_token(txn, name, th, user.token_hash or None)
            audit.add(txn, self.store, head, actor=actor, action="user.token", target=f"user:{name}",
                      after={"token": "issued"}, ts=self.clock())
            try:
                self.store.commit(txn)
                return token
            except RetryableConflictError:
                continue
        raise ConflictError("too many concurrent changes; try again")

    def start_totp(self, actor: Actor, name: str) -> str:
        """Make a new TOTP secret (not yet active); returns the provisioning URI."""
        if actor.name != name:
            raise PermissionDeniedError("only the account holder can set up their second factor")
        self.get(name)
        secret = pyotp.random_base32()
        self.store.user_touch(name, {"totp_pending": secret})
        return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name="Blocklist")

    def confirm_totp(self, actor: Actor, name: str, code: str) -> bool:
        if actor.name != name:
            raise PermissionDeniedError("only the account holder can set up their second factor")
        raw = self.store.user_raw(name)
        pending = raw.get("totp_pending", "")
        if not pending or not pyotp.TOTP(pending).verify((code or "").strip(), valid_window=1):
            return False
        user = self.get(name)
        self._change(actor, name, "user.mfa", {"totp_secret": pending, "totp_confirmed": "1",
                                                "totp_pending": ""},
                     {"mfa": user.totp_enabled}, {"mfa": True}, expect=user.version)
        return True

    def pending_totp_secret(self, name: str) -> str:
        return self.store.user_raw(name).get("totp_pending", "")

    def record_login(self, name: str) -> None:
        self.store.user_touch(name, {"last_login": str(int(self.clock()))})
        self.store.clear_login_failures(name)

