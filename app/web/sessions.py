"""Server-side sessions in Redis for the curators' pages.

The browser holds only a random session id (256 bits); Redis holds the
session under the SHA-256 of that id, so a copy of Redis yields no working
cookie. The web tier stays stateless: any worker on any host reads the same
session.

What must stay true:

* A session ends ``session_idle`` seconds after its last request and
  ``session_max`` seconds after it began, whichever comes first. Both are
  checked on every request against the service clock (so tests can move
  time), and the Redis key expires with them. The last-seen time is written
  at most every :data:`TOUCH_EVERY` seconds, so the idle limit may strike up
  to that much early, never late.
* A change of who is signed in gets a new id (:meth:`ServerSession.regenerate`):
  the old id is deleted in Redis and stops working at once (no fixation).
* Ending a session (sign-out, disabled account, role change through
  ``store.sessions.end_for_user``) deletes it in Redis: a copied cookie is
  worthless afterwards.
* Visitors who are not signed in get a session only when something is stored
  in it (the sign-in form's CSRF token, a message), and it lives at most
  :data:`ANONYMOUS_MAX` seconds. Pages that store nothing (the public stop
  page) never set a cookie.
* The cookie is ``HttpOnly``, ``SameSite=Strict`` and, per
  ``BLOCKLIST_COOKIE_SECURE``, ``Secure`` with the ``__Host-`` name prefix
  (which browsers only accept from HTTPS, for the whole host, no Domain).
  Strict costs nothing here: no flow enters the admin from another site
  while signed in; a link followed from elsewhere lands on the sign-in page.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from typing import Any

import redis.exceptions
from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from app.core import Core
from app.errors import StoreError

#: Seconds between writes of the last-seen time when nothing else changed.
TOUCH_EVERY = 10
#: Longest life of a session of someone who is not signed in.
ANONYMOUS_MAX = 900
SECURE_COOKIE = "__Host-blocklist"
PLAIN_COOKIE = "blocklist_session"

_SID = re.compile(r"[A-Za-z0-9_-]{43}")


def storage_id(sid: str) -> str:
    """The Redis name of a session: never the cookie value itself."""
    return hashlib.sha256(sid.encode()).hexdigest()


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """A session whose data lives in Redis; the cookie carries only its id."""

    def __init__(self, initial: dict[str, Any] | None = None, *, sid: str | None = None,
                 created: float = 0.0, seen: float = 0.0, expired: bool = False,
                 unavailable: bool = False) -> None:
        def on_update(s: ServerSession) -> None:
            s.modified = True
            s.accessed = True

        super().__init__(initial, on_update)
        self.sid = sid
        self.created = created
        self.seen = seen
        #: The browser presented a session that has ended (timeout or sign-out elsewhere).
        self.expired = expired
        #: Redis could not be read; the request must fail rather than act anonymously.
        self.unavailable = unavailable
        self.modified = False
        self.accessed = False
        self.ended: list[str] = []

    @property
    def new(self) -> bool:  # type: ignore[override]
        return self.sid is None

    def regenerate(self) -> None:
        """Keep the data under a new id; the old id ends now."""
        if self.sid is not None:
            self.ended.append(self.sid)
        self.sid = None
        self.created = 0.0
        self.modified = True

    def end(self) -> None:
        """Sign-out: drop everything and the id."""
        self.clear()
        self.regenerate()


class RedisSessionInterface(SessionInterface):
    def __init__(self, core: Core) -> None:
        self.core = core

    def _limits(self, signed_in: bool) -> tuple[int, int]:
        s = self.core.settings
        if signed_in:
            return s.session_idle, s.session_max
        return min(s.session_idle, ANONYMOUS_MAX), min(s.session_max, ANONYMOUS_MAX)

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(self.get_cookie_name(app), "")
        if not _SID.fullmatch(sid):
            return ServerSession()
        store = self.core.store
        try:
            raw = store.sessions.get(storage_id(sid))
        except (StoreError, redis.exceptions.RedisError):
            return ServerSession(unavailable=True)
        stale = ServerSession(expired=True)
        stale.ended.append(sid)
        if raw is None:
            return stale
        try:
            d = json.loads(raw)
            data, created, seen = dict(d["d"]), float(d["c"]), float(d["s"])
        except (ValueError, KeyError, TypeError):
            return stale
        idle, longest = self._limits(bool(data.get("user")))
        now = self.core.clock()
        if now - seen >= idle or now - created >= longest:
            return stale
        return ServerSession(data, sid=sid, created=created, seen=seen)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, ServerSession) or session.unavailable:
            return
        store = self.core.store
        name = self.get_cookie_name(app)
        domain = self.get_cookie_domain(app)
        path = self.get_cookie_path(app)
        secure = self.get_cookie_secure(app)
        samesite = self.get_cookie_samesite(app)
        for old in session.ended:
            store.sessions.delete(storage_id(old))
        if not session:
            if session.sid is not None:
                store.sessions.delete(storage_id(session.sid))
            if session.sid is not None or session.ended:
                response.delete_cookie(name, domain=domain, path=path, secure=secure, httponly=True,
                                       samesite=samesite)
            return
        now = self.core.clock()
        fresh = session.sid is None
        if not (fresh or session.modified or now - session.seen >= TOUCH_EVERY):
            return
        if fresh:
            session.sid = secrets.token_urlsafe(32)
            session.created = now
        user = session.get("user")
        idle, longest = self._limits(bool(user))
        left = min(idle, session.created + longest - now)
        assert session.sid is not None
        if left <= 0:
            store.sessions.delete(storage_id(session.sid))
            response.delete_cookie(name, domain=domain, path=path, secure=secure, httponly=True,
                                   samesite=samesite)
            return
        payload = json.dumps({"c": session.created, "s": now, "d": dict(session)}, separators=(",", ":"))
        ttl = max(1, math.ceil(left))
        if fresh:
            store.sessions.put(storage_id(session.sid), payload, ttl=ttl, user=str(user) if user else None)
        elif not store.sessions.update(storage_id(session.sid), payload, ttl):
            # Ended while this request ran (signed out elsewhere, account
            # disabled): it stays ended.
            response.delete_cookie(name, domain=domain, path=path, secure=secure, httponly=True,
                                   samesite=samesite)
            return
        session.seen = now
        if fresh:
            # No Expires: the browser forgets the cookie when it closes; the
            # server enforces the idle and absolute limits itself.
            response.set_cookie(name, session.sid, domain=domain, path=path, secure=secure, httponly=True,
                                samesite=samesite)
        response.vary.add("Cookie")


def init_app(app: Flask, core: Core) -> None:
    secure = core.settings.cookie_secure
    app.config.update(
        SESSION_COOKIE_NAME=SECURE_COOKIE if secure else PLAIN_COOKIE,
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
    )
    app.session_interface = RedisSessionInterface(core)
