"""Sign-in for the curators' pages: passwords, second factor, throttling,
lock-out, and the permission every page declares.

What must stay true:

* Deny by default: every view of the admin declares, with :func:`page`, the
  permission of :data:`app.domain.PERMISSIONS` it needs (or that any
  signed-in person may see it); :func:`check_declared` refuses to start an
  app with a view that declares nothing. The check runs on the server for
  every request.
* The account is re-read on every request: a disabled or locked account is
  out at once, whatever its session says; a role change takes effect at once
  (and ``Users`` ends the sessions anyway).
* An unknown user and a wrong password get the same answer. Wrong passwords
  and wrong second-factor codes count towards the lock-out: the
  ``login_max_failures``-th (10th) failure without a successful sign-in in
  between locks the account until an admin unlocks it. Each address also
  has a sign-in rate limit.
* Signing in gets a new session id; the second factor, when the account has
  one (required for admins when ``BLOCKLIST_REQUIRE_MFA`` is on), is checked
  before the session belongs to the user. A TOTP code is good once (see
  ``Users.check_totp``); a recovery code may stand in for it, once.
* Someone signed in with a temporary password (the first admin's, or one an
  admin set) can do nothing but choose a new one.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from app.core import Core
from app.domain import PERMISSIONS, Actor, Role
from app.errors import AuthenticationError, PermissionDeniedError, StoreError
from app.users import User
from app.web import core_of
from app.web.forms import LoginForm, SignInCodeForm
from app.web.sessions import ServerSession

log = logging.getLogger("blocklist.web.auth")

bp = Blueprint("auth", __name__)

#: What :func:`page` declares for pages any signed-in person may see.
SIGNED_IN = "signed-in"
#: Blueprints whose every view must declare a permission.
GUARDED_BLUEPRINTS = ("admin", "entries", "manage", "records")
#: Sign-in attempts (password or code) per client address per minute.
LOGIN_RATE = (20, 60)
#: Failures are counted until a successful sign-in, with no gap longer than this.
FAILURE_WINDOW = 86400
#: Seconds to enter the second-factor code after the password, and tries allowed.
MFA_STEP_SECONDS = 300
MFA_TRIES = 5
#: Where someone who must first set up a second factor may go.
_ENROL_ENDPOINTS = frozenset({"manage.account", "manage.account_mfa_start", "manage.account_mfa_confirm",
                              "manage.account_password", "auth.logout", "static"})
#: Where someone who must first replace a temporary password may go.
_CHANGE_ENDPOINTS = frozenset({"manage.account", "manage.account_password", "auth.logout", "static"})
#: A password change within this many seconds of a sign-in with the second
#: factor does not ask for another code (the one just used is spent).
FRESH_MFA_SECONDS = 300

F = TypeVar("F", bound=Callable[..., Any])


def core() -> Core:
    return core_of(current_app)


def current_user() -> User | None:
    user: User | None = g.get("user")
    return user


def actor() -> Actor:
    """The signed-in person as an :class:`Actor` (only inside :func:`page` views)."""
    a: Actor = g.actor
    return a


def client_address() -> str:
    """The client's address (``ProxyFix`` makes it the real one behind trusted proxies)."""
    return request.remote_addr or "unknown"


def address_key(address: str) -> str:
    """Rate-limit keys hold a digest, not the address: nothing that names a
    person is kept for longer than the window."""
    return hashlib.sha256(address.encode()).hexdigest()[:24]


def safe_next(target: str | None) -> str:
    """A local path to go to after signing in; anything else goes to the dashboard."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("admin.dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return url_for("admin.dashboard")
    return target


def server_session() -> ServerSession:
    s = session._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(s, ServerSession):
        raise RuntimeError("the Redis session interface is not installed")
    return s


# --------------------------------------------------------------------------- per request


def must_enrol_mfa(user: User) -> bool:
    return core().settings.require_mfa and user.role is Role.ADMIN and not user.totp_enabled


def load_user() -> Response | None:
    g.user = None
    s = session._get_current_object()  # type: ignore[attr-defined]
    if isinstance(s, ServerSession) and s.unavailable:
        if request.blueprint == "public" or request.endpoint == "static":
            return None  # the stop page needs no session
        raise StoreError("the session store is not reachable; try again shortly")
    name = session.get("user")
    if not name:
        return None
    user = core().users.find(str(name))
    if user is None or user.disabled or user.locked:
        server_session().end()
        flash("You were signed out: the account is disabled or locked.", "error")
        return None
    g.user = user
    g.actor = user.actor
    if user.must_change and request.endpoint not in _CHANGE_ENDPOINTS:
        flash("Your password was set by someone else: choose your own before anything else.", "error")
        return redirect(url_for("manage.account", _anchor="password"))
    if must_enrol_mfa(user) and request.endpoint not in _ENROL_ENDPOINTS:
        flash("Admins must set up a second factor before anything else.", "error")
        return redirect(url_for("manage.account"))
    return None


def page(permission: str) -> Callable[[F], F]:
    """Declare what a view needs: a permission of ``PERMISSIONS`` (it may name
    view arguments, as in ``"entry.{action}"``), or :data:`SIGNED_IN`."""
    if permission != SIGNED_IN and "{" not in permission and permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                if request.method == "GET":
                    ended = 1 if server_session().expired else None
                    return redirect(url_for("auth.login", next=request.full_path.rstrip("?"), ended=ended))
                raise AuthenticationError("sign in first")
            if permission != SIGNED_IN:
                needed = permission.format(**kwargs)
                if needed not in PERMISSIONS:
                    abort(404)
                actor().require(needed)
            return view(*args, **kwargs)

        wrapper._permission = permission  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def open_view(view: F) -> F:
    """Declare a view that needs no sign-in (the sign-in pages themselves)."""
    view._permission = None  # type: ignore[attr-defined]
    return view


def check_declared(app: Flask) -> None:
    """Refuse to run with an admin view that does not declare what it needs."""
    missing = []
    for endpoint, view in app.view_functions.items():
        if endpoint.split(".", 1)[0] in (*GUARDED_BLUEPRINTS, "auth") and not hasattr(view, "_permission"):
            missing.append(endpoint)
    if missing:
        raise RuntimeError("views without a declared permission: " + ", ".join(sorted(missing)))


# --------------------------------------------------------------------------- throttling and lock-out


def _rate_limited() -> bool:
    limit, window = current_app.config.get("LOGIN_RATE", LOGIN_RATE)
    return core().store.rates.hit("login", address_key(client_address()), int(window)) > int(limit)


def record_failure(name: str) -> None:
    """Count a failed sign-in of an existing account; lock it at the limit."""
    c = core()
    user = c.users.find(name) if name else None
    if user is None:
        return
    n = c.store.users.add_login_failure(name, FAILURE_WINDOW)
    log.warning("failed sign-in for %s (%d in a row) from %s", name, n, client_address())
    if n >= c.settings.login_max_failures and not user.locked:
        c.users.lock(name)
        log.warning("account %s locked after %d failed sign-ins", name, n)


def complete_login(user: User, *, second_factor: bool = False, record: bool = True) -> Response:
    s = server_session()
    target = session.get("next")
    s.clear()
    s.regenerate()
    session["user"] = user.name
    session["since"] = int(core().clock())
    if second_factor:
        session["mfa_ok_at"] = int(core().clock())
    if record:
        core().users.record_login(user.name)
        log.info("%s signed in from %s", user.name, client_address())
    return redirect(safe_next(target))


def second_factor_fresh() -> bool:
    """The current session began with a second-factor code a moment ago."""
    at = session.get("mfa_ok_at")
    return at is not None and core().clock() - float(at) <= FRESH_MFA_SECONDS


# --------------------------------------------------------------------------- views


def _too_many() -> tuple[str, int]:
    return render_template("login.html", form=LoginForm(), error=(
        "Too many sign-in attempts from your address. Wait a minute and try again.")), 429


@bp.route("/login", methods=["GET", "POST"])
@open_view
def login() -> Any:
    if current_user() is not None:
        return redirect(url_for("admin.dashboard"))
    form = LoginForm()
    error = None
    if request.method == "GET":
        if request.args.get("next"):
            session["next"] = safe_next(request.args.get("next"))
        expired = server_session().expired or request.args.get("ended") == "1"
        return render_template("login.html", form=form, expired=expired)
    if form.validate_on_submit():
        if _rate_limited():
            return _too_many()
        name = form.username.data.strip().lower()
        try:
            user = core().users.authenticate_password(name, form.password.data)
        except AuthenticationError as e:
            record_failure(name)
            error = e.message
        except PermissionDeniedError as e:
            error = e.message
        else:
            if user.totp_enabled:
                s = server_session()
                target = session.get("next")
                s.clear()
                s.regenerate()
                session.update(mfa_user=user.name, mfa_at=int(core().clock()), mfa_tries=0)
                if target:
                    session["next"] = target
                return redirect(url_for("auth.mfa"))
            return complete_login(user)
    return render_template("login.html", form=form, error=error), 401 if error else 400


@bp.route("/login/code", methods=["GET", "POST"])
@open_view
def mfa() -> Any:
    c = core()
    name = session.get("mfa_user")
    started = session.get("mfa_at", 0)
    if not name or c.clock() - float(started) > MFA_STEP_SECONDS:
        for k in ("mfa_user", "mfa_at", "mfa_tries"):
            session.pop(k, None)
        flash("Sign in again: the time to enter the code ran out.", "error")
        return redirect(url_for("auth.login"))
    form = SignInCodeForm()
    error = None
    if form.validate_on_submit():
        if _rate_limited():
            return _too_many()
        user = c.users.find(str(name))
        if user is None or user.disabled or user.locked:
            server_session().end()
            flash("The account is disabled or locked.", "error")
            return redirect(url_for("auth.login"))
        # A code (TOTP or recovery) is good once: see Users.check_totp.
        if c.users.check_second_factor(user, form.code.data):
            return complete_login(user, second_factor=True)
        record_failure(user.name)
        tries = int(session.get("mfa_tries", 0)) + 1
        if tries >= MFA_TRIES:
            server_session().end()
            flash("Too many wrong codes: sign in again.", "error")
            return redirect(url_for("auth.login"))
        session["mfa_tries"] = tries
        error = "That code is not right (or was already used); wait for the next one."
    elif request.method == "POST":
        error = "Enter the six-digit code, or one of your recovery codes."
    return render_template("login_code.html", form=form, error=error), 401 if error else 200


@bp.post("/logout")
@open_view
def logout() -> Any:
    user = current_user()
    server_session().end()
    if user is not None:
        log.info("%s signed out", user.name)
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(load_user)
