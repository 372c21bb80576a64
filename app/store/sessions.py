"""Web sessions, stored under the SHA-256 of the id the browser holds, and
the set of each user's sessions (so they can all be ended at once)."""

from __future__ import annotations

from app.errors import ValidationError
from app.store.base import Part, text
from app.store.keys import is_session_id, session_key, user_sessions_key


class SessionData(Part):
    """``store.sessions``"""

    def get(self, sid: str) -> str | None:
        if not is_session_id(sid):
            return None  # nothing is ever stored under anything but a digest
        return text(self.r.get(session_key(sid)))

    def put(self, sid: str, data: str, ttl: int, user: str | None) -> None:
        pipe = self.r.pipeline()
        if not is_session_id(sid):
            raise ValidationError("a session is stored under the SHA-256 digest of its id")
        pipe.set(session_key(sid), data, ex=ttl)
        if user:
            key = user_sessions_key(user)
            pipe.sadd(key, sid)
            pipe.expire(key, 86400 * 2)
        pipe.execute()

    # The web tier rewrites a live session on later requests; it must never
    # bring back one that was ended meanwhile (sign-out elsewhere, disabled
    # account, role change).
    def update(self, sid: str, data: str, ttl: int) -> bool:
        """Rewrite a session that still exists; False if it has ended."""
        return bool(self.r.set(session_key(sid), data, ex=ttl, xx=True))

    def delete(self, sid: str) -> None:
        if is_session_id(sid):
            self.r.delete(session_key(sid))

    def end_for_user(self, name: str) -> None:
        key = user_sessions_key(name)
        sids = self.r.smembers(key)
        pipe = self.r.pipeline()
        for sid in sids:
            pipe.delete(session_key(sid))
        pipe.delete(key)
        pipe.execute()
