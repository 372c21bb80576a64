"""Accounts: users, their API token index and sign-in failures; agencies."""

from __future__ import annotations

from app.store.base import Part, text
from app.store.keys import K, login_failures_key, user_key
from app.store.txn import Txn


class UserData(Part):
    """``store.users``: one hash per account, the set of names, the token index."""

    def names(self) -> list[str]:
        return sorted(str(n) for n in self.r.smembers(K.users))

    def raw(self, name: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(user_key(name)).items()}

    def put(self, txn: Txn, name: str, fields: dict[str, str], *, create: bool = False,
            expect_version: str | None = None) -> None:
        key = user_key(name)
        if create:
            txn.expect_hget(key, "name", None)
            txn.op("SADD", K.users, name)
        elif expect_version is not None:
            txn.expect_hget(key, "version", expect_version)
        args: list[str] = []
        for k, v in fields.items():
            args += [k, v]
        if args:
            txn.op("HSET", key, *args)

    def touch(self, name: str, fields: dict[str, str]) -> None:
        """Bookkeeping that is not a change of the account (last login, failures)."""
        self.r.hset(user_key(name), mapping=fields)

    def expect_field(self, txn: Txn, name: str, fld: str, value: str | None) -> None:
        """Make ``txn`` apply only while the account's ``fld`` is still ``value``."""
        txn.expect_hget(user_key(name), fld, value)

    def set_token(self, txn: Txn, name: str, token_hash: str, old_hash: str | None) -> None:
        if old_hash:
            txn.op("HDEL", K.tokens, old_hash)
        txn.op("HSET", K.tokens, token_hash, name)

    def token_owner(self, token_hash: str) -> str | None:
        return text(self.r.hget(K.tokens, token_hash))

    def login_failures(self, name: str) -> int:
        return int(self.r.get(login_failures_key(name)) or 0)

    def add_login_failure(self, name: str, window: int) -> int:
        key = login_failures_key(name)
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, window)
        n, _ = pipe.execute()
        return int(n)

    def clear_login_failures(self, name: str) -> None:
        self.r.delete(login_failures_key(name))


class AgencyData(Part):
    """``store.agencies``: agency id -> JSON."""

    def all_raw(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(K.agencies).items()}

    def put(self, txn: Txn, agency_id: str, new_json: str, expect_json: str | None) -> None:
        txn.expect_hget(K.agencies, agency_id, expect_json)
        txn.op("HSET", K.agencies, agency_id, new_json)
