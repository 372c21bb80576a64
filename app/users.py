"""Curator accounts: roles, agencies, passwords, API tokens, second factor.

What must stay true:

* Passwords are stored only as argon2id hashes; API tokens only as SHA-256
  of a 256-bit random value (a fast hash is right for a random secret; a slow
  one is for guessable passwords). Both are shown once, when made.
* A disabled account loses access at once: every request re-reads the
  account, and its sessions are ended when it is disabled.
* Every change to an account is audited, without the secret itself.
* A password set by someone other than its holder (the first admin's
  printed one, an admin's reset, ``user password``) is temporary: the holder
  must replace it at the next sign-in. Changing one's own password needs
  the current one, and the second factor when the account has one; an API
  token alone never changes a password. A locked account stays locked until
  an admin unlocks it, whatever happens to its password.
* A TOTP code is accepted once: the account remembers the last time step it
  accepted and refuses any code of that step or an earlier one, in the same
  compare-and-set that records the new step.
* Recovery codes are shown once, stored only as SHA-256 hashes (they are
  random), and each works once in place of a TOTP code.
* Agencies are a list admins curate. An account's agency is the id of an
  agency on the list (its name when it was added); renaming changes only the
  label, so the four-eyes rule, which compares ids, never sees a rename as a
  different agency. A retired agency cannot be given to anyone new.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
import secrets
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from app import audit
from app.clock import Clock
from app.domain import SYSTEM, Actor, Role, clean_text
from app.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from app.store import Store, Txn

USER_TOKEN_PREFIX = "blu_"  # noqa: S105 (a prefix that makes leaked tokens recognisable, not a secret)
_NAME_RE = re.compile(r"[a-z][a-z0-9._-]{1,31}")
MIN_PASSWORD = 12
#: TOTP time step (RFC 6238) and how many steps either side of now are accepted.
TOTP_STEP = 30
TOTP_WINDOW = 1
#: Recovery codes issued at a time.
RECOVERY_CODES = 10
_RECOVERY_RE = re.compile(r"[a-z2-7]{4}-?[a-z2-7]{4}-?[a-z2-7]{4}")

class SecondFactorError(AuthenticationError):
    """The password was right but the second-factor code was not."""


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
    must_change: bool = False
    recovery_left: int = 0

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
            "must_change_password": self.must_change,
            "recovery_codes_left": self.recovery_left,
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
        must_change=raw.get("must_change") == "1",
        recovery_left=len(_recovery_hashes(raw)),
    )


def _recovery_hashes(raw: dict[str, str]) -> list[str]:
    try:
        hashes = json.loads(raw.get("recovery") or "[]")
    except ValueError:
        return []
    return [h for h in hashes if isinstance(h, str)] if isinstance(hashes, list) else []


def new_recovery_code() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    raw = "".join(secrets.choice(alphabet) for _ in range(12))  # 60 bits
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def _recovery_digest(code: str) -> str:
    return hash_token(code.replace("-", "").strip().lower())


@dataclass(frozen=True)
class Agency:
    id: str
    name: str
    retired: bool
    created_at: int

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "retired": self.retired, "created_at": self.created_at},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, agency_id: str, text: str) -> Agency:
        d = json.loads(text)
        return cls(id=agency_id, name=str(d.get("name") or agency_id), retired=bool(d.get("retired")),
                   created_at=int(d.get("created_at") or 0))

    def public(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "retired": self.retired}


class Users:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # ------------------------------------------------------------------ reads

    def get(self, name: str) -> User:
        validate_name(name)
        raw = self.store.users.raw(name)
        if not raw:
            raise NotFoundError(f"there is no user {name!r}")
        return _from_raw(raw)

    def find(self, name: str) -> User | None:
        """The account called ``name``, or None (also for a name no account could have)."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            return None
        raw = self.store.users.raw(name)
        return _from_raw(raw) if raw else None

    def list(self) -> list[User]:
        out = []
        for name in self.store.users.names():
            u = self.find(name)
            if u is not None:
                out.append(u)
        return out

    def exists_any(self) -> bool:
        return bool(self.store.users.names())

    # ------------------------------------------------------------------ auth

    def authenticate_token(self, token: str) -> User:
        if not token or not token.startswith(USER_TOKEN_PREFIX) or len(token) > 200:
            raise AuthenticationError("a valid API token is required (Authorization: Bearer blu_...)")
        name = self.store.users.token_owner(hash_token(token))
        user = self.find(name) if name else None
        if user is None or not secrets.compare_digest(user.token_hash, hash_token(token)):
            raise AuthenticationError("the API token is not valid")
        if user.disabled:
            raise PermissionDeniedError(f"the account {user.name} is disabled")
        return user

    def authenticate_password(self, name: str, password: str) -> User:
        """Check a password. Throttling and lock-out are the caller's (see web.auth)."""
        user = self.find(name)
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
        """True if ``code`` is a current TOTP code of ``user`` newer than any
        accepted before; the step is recorded, so the same code (or an older
        one) is refused from now on."""
        if not user.totp_secret:
            return False
        step = _matching_step(user.totp_secret, code, int(self.clock()))
        if step is None:
            return False

        def spend(txn: Txn) -> bool:
            last = self.store.users.raw(user.name).get("totp_last_step")
            if last is not None and step <= int(last):
                return False
            self.store.users.expect_field(txn, user.name, "totp_last_step", last)
            self.store.users.put(txn, user.name, {"totp_last_step": str(step)})
            return True

        return self.store.transact(spend)

    def use_recovery_code(self, user: User, code: str) -> bool:
        """True if ``code`` is one of the account's unused recovery codes; it is used up."""
        code = (code or "").strip().lower()
        if not _RECOVERY_RE.fullmatch(code):
            return False
        digest = _recovery_digest(code)

        def spend(txn: Txn) -> bool:
            raw = self.store.users.raw(user.name)
            hashes = _recovery_hashes(raw)
            if digest not in hashes:
                return False
            left = [h for h in hashes if h != digest]
            head = audit.head(self.store)
            self.store.users.expect_field(txn, user.name, "recovery", raw.get("recovery"))
            self.store.users.put(txn, user.name, {"recovery": json.dumps(left)})
            audit.add(txn, self.store, head, actor=user.actor, action="user.recovery_used",
                      target=f"user:{user.name}", after={"recovery_codes_left": len(left)}, ts=self.clock())
            return True

        return self.store.transact(spend)

    def check_second_factor(self, user: User, code: str) -> bool:
        """A TOTP code or, failing that, a recovery code."""
        code = (code or "").strip()
        if re.fullmatch(r"\d{6}", code):
            return self.check_totp(user, code)
        return self.use_recovery_code(user, code)

    # ------------------------------------------------------------------ changes

    def _change(self, actor: Actor, name: str, action: str, fields: dict[str, str],
                before: dict[str, object] | None, after: dict[str, object] | None,
                reason: str = "", create: bool = False, expect: str | None = None) -> None:
        def step(txn: Txn) -> None:
            head = audit.head(self.store)
            now = self.clock()
            version = str(int(expect or "0") + 1) if not create else "1"
            f = dict(fields, version=version)
            self.store.users.put(txn, name, f, create=create, expect_version=expect)
            audit.add(txn, self.store, head, actor=actor, action=action, target=f"user:{name}",
                      before=before, after=after, reason=reason, ts=now)

        def account_moved() -> None:
            # Only the audit head moved (a change elsewhere) unless the account
            # itself did, which the person must see.
            if create and self.find(name) is not None:
                raise ConflictError(f"a user named {name!r} already exists") from None
            if not create:
                current = self.find(name)
                if current is None or current.version != expect:
                    raise ConflictError(
                        f"the account {name} changed while you edited it; reload and try again"
                    ) from None

        self.store.transact(step, on_conflict=account_moved)

    def add(self, actor: Actor, name: str, role: str, agency: str, password: str | None = None,
            *, must_change: bool | None = None) -> User:
        """Make an account. A password given here is someone else's choice, so
        by default the holder must change it at first sign-in; only accounts
        the program makes for itself (``SYSTEM``) may say otherwise."""
        actor.require("user.manage")
        validate_name(name)
        r = validate_role(role)
        if self.find(name) is not None:
            raise ConflictError(f"a user named {name!r} already exists")
        if actor == SYSTEM:
            # The program's own accounts (first start) bring their agency with them.
            agency_id = self._ensure_agency(clean_text(agency, "agency", 100, required=True))
        else:
            agency_id = self.resolve_agency(agency)
        fields = {
            "name": name, "role": str(r), "agency": agency_id, "disabled": "0",
            "created_at": str(int(self.clock())),
        }
        if password is not None:
            fields["password_hash"] = hash_password(validate_password(password))
            forced = must_change if must_change is not None else actor != SYSTEM
            fields["must_change"] = "1" if forced else "0"
        self._change(actor, name, "user.add", fields, None,
                     {"name": name, "role": str(r), "agency": agency_id}, create=True)
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
            agency_id = user.agency if agency == user.agency else self.resolve_agency(agency)
            if agency_id != user.agency:
                fields["agency"] = agency_id
                before["agency"], after["agency"] = user.agency, agency_id
        if not fields:
            return user
        self._change(actor, name, "user.update", fields, before, after, reason, expect=user.version)
        if "role" in fields or "agency" in fields:
            self.store.sessions.end_for_user(name)
        return self.get(name)

    def set_password(self, actor: Actor, name: str, password: str, reason: str = "") -> None:
        """An admin sets someone's password: a temporary one, to be changed at
        the next sign-in. A lock-out stays (unlocking is its own decision)."""
        actor.require("user.manage")
        user = self.get(name)
        if user.name == actor.name:
            raise PermissionDeniedError(
                "change your own password on your account page, with your current password"
            )
        fields = {"password_hash": hash_password(validate_password(password)), "must_change": "1"}
        self._change(actor, name, "user.password", fields, None,
                     {"password": "set by an admin", "must_change": True}, reason, expect=user.version)
        self.store.sessions.end_for_user(name)

    def reset_password(self, actor: Actor, name: str, reason: str = "") -> str:
        """A new random temporary password for ``name``; returned to be shown once."""
        password = secrets.token_urlsafe(12)
        self.set_password(actor, name, password, reason)
        return password

    def change_own_password(self, actor: Actor, current: str, new: str, code: str | None = None, *,
                            second_factor_checked: bool = False) -> None:
        """The holder replaces their password: the current one (and the second
        factor, when set) must be right. Raises AuthenticationError when they are not.

        ``second_factor_checked``: the caller saw a second-factor code from this
        person a moment ago (the web sign-in that just happened), so it is not
        asked again (that code is spent and the next one is up to 30 s away).
        """
        user = self.get(actor.name)
        self.authenticate_password(user.name, current)
        if user.totp_enabled and not second_factor_checked and not self.check_second_factor(user, code or ""):
            raise SecondFactorError("the code from your authenticator app (or a recovery code) is not right")
        validate_password(new)
        if check_password(user.password_hash, new):
            raise ValidationError("the new password must differ from the current one")
        user = self.get(actor.name)
        fields = {"password_hash": hash_password(new), "must_change": "0"}
        self._change(actor, user.name, "user.password", fields, None,
                     {"password": "changed by the holder"}, "changed by the account holder",
                     expect=user.version)
        self.store.users.clear_login_failures(user.name)
        self.store.sessions.end_for_user(user.name)

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
            self.store.sessions.end_for_user(name)
        return self.get(name)

    def lock(self, name: str) -> None:
        """Lock after repeated failed sign-ins; audited as the system's action."""
        user = self.find(name)
        if user is None or user.locked:
            return
        try:
            self._change(SYSTEM, name, "user.lock", {"locked": "1"}, {"locked": False}, {"locked": True},
                         "too many failed sign-ins", expect=user.version)
        except ConflictError:
            pass
        self.store.sessions.end_for_user(name)

    def unlock(self, actor: Actor, name: str, reason: str = "") -> User:
        actor.require("user.manage")
        user = self.get(name)
        if not user.locked:
            return user
        self._change(actor, name, "user.unlock", {"locked": "0"}, {"locked": True}, {"locked": False},
                     reason, expect=user.version)
        self.store.users.clear_login_failures(name)
        return self.get(name)

    def issue_token(self, actor: Actor, name: str) -> str:
        """A new API token for ``name``; the old one stops working. Shown once."""
        if actor.name != name:
            actor.require("user.manage")
        self.get(name)  # NotFoundError before a token is made
        token = new_token(USER_TOKEN_PREFIX)
        th = hash_token(token)

        def step(txn: Txn) -> None:
            user = self.get(name)
            head = audit.head(self.store)
            self.store.users.put(txn, name, {"token_hash": th, "version": str(int(user.version) + 1)},
                                 expect_version=user.version)
            self.store.users.set_token(txn, name, th, user.token_hash or None)
            audit.add(txn, self.store, head, actor=actor, action="user.token", target=f"user:{name}",
                      after={"token": "issued"}, ts=self.clock())

        self.store.transact(step)
        return token

    def start_totp(self, actor: Actor, name: str) -> str:
        """Make a new TOTP secret (not yet active); returns the provisioning URI."""
        if actor.name != name:
            raise PermissionDeniedError("only the account holder can set up their second factor")
        self.get(name)
        secret = pyotp.random_base32()
        self.store.users.touch(name, {"totp_pending": secret})
        return totp_uri(name, secret)

    def confirm_totp(self, actor: Actor, name: str, code: str) -> builtins.list[str] | None:
        """Turn the pending secret on if ``code`` fits it; returns fresh
        recovery codes (shown once), or None when the code is wrong."""
        if actor.name != name:
            raise PermissionDeniedError("only the account holder can set up their second factor")
        raw = self.store.users.raw(name)
        pending = raw.get("totp_pending", "")
        step = _matching_step(pending, code, int(self.clock())) if pending else None
        if step is None:
            return None
        user = self.get(name)
        codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
        # Recorded as used: the code that turned the factor on cannot also sign in.
        self._change(actor, name, "user.mfa", {"totp_secret": pending, "totp_confirmed": "1",
                                                "totp_pending": "", "totp_last_step": str(step),
                                                "recovery": json.dumps([_recovery_digest(c) for c in codes])},
                     {"mfa": user.totp_enabled}, {"mfa": True, "recovery_codes": len(codes)}, expect=user.version)
        return codes

    def regenerate_recovery_codes(self, actor: Actor, current: str) -> builtins.list[str]:
        """New recovery codes for the holder (the old ones stop working); needs the password."""
        user = self.get(actor.name)
        self.authenticate_password(user.name, current)
        if not user.totp_enabled:
            raise ConflictError("set up a second factor first; recovery codes stand in for it")
        codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
        self._change(actor, user.name, "user.recovery_codes",
                     {"recovery": json.dumps([_recovery_digest(c) for c in codes])},
                     {"recovery_codes_left": user.recovery_left}, {"recovery_codes_left": len(codes)},
                     "new recovery codes", expect=user.version)
        return codes

    def pending_totp_secret(self, name: str) -> str:
        return self.store.users.raw(name).get("totp_pending", "")

    def record_login(self, name: str) -> None:
        self.store.users.touch(name, {"last_login": str(int(self.clock()))})
        self.store.users.clear_login_failures(name)

    # ------------------------------------------------------------------ agencies

    def agencies(self, include_retired: bool = True) -> builtins.list[Agency]:
        raw = self.store.agencies.all_raw()
        if not raw and self.store.users.names():
            self._seed_agencies()
            raw = self.store.agencies.all_raw()
        out = [Agency.from_json(k, v) for k, v in raw.items()]
        out.sort(key=lambda a: a.name.casefold())
        return [a for a in out if include_retired or not a.retired]

    def agency_names(self) -> dict[str, str]:
        """Agency id -> its current label."""
        return {a.id: a.name for a in self.agencies()}

    def _seed_agencies(self) -> None:
        """Upgrade from free-text agencies: every agency an account names joins the list."""
        for agency in sorted({u.agency for u in self.list() if u.agency}):
            self._ensure_agency(agency)

    def _ensure_agency(self, agency: str) -> str:
        if agency in self.store.agencies.all_raw():
            return agency
        new = Agency(id=agency, name=agency, retired=False, created_at=int(self.clock()))
        try:
            self._write_agency(SYSTEM, "agency.add", new, None, None, {"name": new.name}, "an account names it")
        except ConflictError:
            pass  # added meanwhile by another process
        return new.id

    def resolve_agency(self, text: str, *, include_retired: bool = False) -> str:
        """The id of the active agency ``text`` names (its id or its label, any case)."""
        wanted = clean_text(text, "agency", 100, required=True).casefold()
        active = self.agencies(include_retired=include_retired)
        for a in active:
            if wanted in (a.id.casefold(), a.name.casefold()):
                return a.id
        known = ", ".join(a.name for a in active) or "none yet: an admin adds them on the users page"
        raise ValidationError(f"there is no agency {text.strip()!r} on the list; pick one of: {known}")

    def _write_agency(self, actor: Actor, action: str, new: Agency, old_json: str | None,
                      before: dict[str, object] | None, after: dict[str, object], reason: str) -> None:
        def step(txn: Txn) -> None:
            head = audit.head(self.store)
            self.store.agencies.put(txn, new.id, new.to_json(), old_json)
            audit.add(txn, self.store, head, actor=actor, action=action, target=f"agency:{new.id}",
                      before=before, after=after, reason=reason, ts=self.clock())

        def agency_moved() -> None:
            if self.store.agencies.all_raw().get(new.id) != old_json:
                raise ConflictError(f"the agency {new.name!r} changed meanwhile; reload and try again") from None

        self.store.transact(step, on_conflict=agency_moved)

    def _agency_name(self, text: str) -> str:
        name = clean_text(text, "the agency name", 100, required=True)
        if len(name) < 2 or "\n" in name or "\t" in name:
            raise ValidationError("an agency name is one line of 2 to 100 characters")
        return name

    def add_agency(self, actor: Actor, name: str, reason: str = "") -> Agency:
        actor.require("user.manage")
        name = self._agency_name(name)
        for a in self.agencies():
            if name.casefold() in (a.id.casefold(), a.name.casefold()):
                state = " (retired)" if a.retired else ""
                raise ConflictError(f"the agency {a.name!r}{state} is already on the list")
        agency = Agency(id=name, name=name, retired=False, created_at=int(self.clock()))
        self._write_agency(actor, "agency.add", agency, None, None, {"name": name}, reason)
        return agency

    def _agency(self, agency_id: str) -> tuple[Agency, str]:
        raw = self.store.agencies.all_raw()
        if agency_id not in raw:
            raise NotFoundError(f"there is no agency {agency_id!r}")
        return Agency.from_json(agency_id, raw[agency_id]), raw[agency_id]

    def rename_agency(self, actor: Actor, agency_id: str, new_name: str, reason: str = "") -> Agency:
        actor.require("user.manage")
        agency, old = self._agency(agency_id)
        name = self._agency_name(new_name)
        if name == agency.name:
            return agency
        for a in self.agencies():
            if a.id != agency.id and name.casefold() in (a.id.casefold(), a.name.casefold()):
                raise ConflictError(f"the agency {a.name!r} is already on the list")
        new = Agency(id=agency.id, name=name, retired=agency.retired, created_at=agency.created_at)
        self._write_agency(actor, "agency.rename", new, old, {"name": agency.name}, {"name": name}, reason)
        return new

    def retire_agency(self, actor: Actor, agency_id: str, reason: str = "") -> Agency:
        actor.require("user.manage")
        agency, old = self._agency(agency_id)
        if agency.retired:
            return agency
        new = Agency(id=agency.id, name=agency.name, retired=True, created_at=agency.created_at)
        self._write_agency(actor, "agency.retire", new, old, {"retired": False}, {"retired": True}, reason)
        return new


def _matching_step(secret: str, code: str, now: int) -> int | None:
    """The latest time step within the window whose code is ``code``, or None."""
    code = (code or "").strip()
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    step = None
    for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1):
        at = now + offset * TOTP_STEP
        if secrets.compare_digest(totp.at(at), code):
            step = at // TOTP_STEP
    return step


def totp_uri(name: str, secret: str) -> str:
    return str(pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name="Blocklist"))
