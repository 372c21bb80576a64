"""ISPs: one hash per ISP, the feed token index, the log of pulls and
transfers, and the transfer server's TLS certificate."""

from __future__ import annotations

from collections.abc import Sequence

from app.store.base import Part, text
from app.store.keys import K, isp_key
from app.store.txn import Txn


class IspData(Part):
    """``store.isps``"""

    def names(self) -> list[str]:
        return sorted(str(n) for n in self.r.smembers(K.isps))

    def raw(self, name: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(isp_key(name)).items()}

    def raw_many(self, names: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(isp_key(n))
        return [{str(k): str(v) for k, v in d.items()} for d in pipe.execute()]

    def put(self, txn: Txn, name: str, fields: dict[str, str], *, create: bool = False,
            expect_version: str | None = None) -> None:
        key = isp_key(name)
        if create:
            txn.expect_hget(key, "name", None)
            txn.op("SADD", K.isps, name)
        else:
            txn.expect_hget(key, "version", expect_version)
        args: list[str] = []
        for k, v in fields.items():
            args += [k, v]
        txn.op("HSET", key, *args)

    def put_report(self, txn: Txn, name: str, fields: dict[str, str]) -> None:
        """What an ISP's resolvers were seen enforcing; only while the ISP is active."""
        key = isp_key(name)
        txn.expect_hget(key, "status", "active")
        txn.op("HSET", key, *[x for kv in fields.items() for x in kv])

    def set_token(self, txn: Txn, name: str, token_hash: str, old_hash: str | None) -> None:
        if old_hash:
            txn.op("HDEL", K.isp_tokens, old_hash)
        txn.op("HSET", K.isp_tokens, token_hash, name)

    def token_owner(self, token_hash: str) -> str | None:
        return text(self.r.hget(K.isp_tokens, token_hash))

    def record_pull(self, name: str, fields: dict[str, str], keep: int = 100_000) -> None:
        """Bookkeeping of a feed pull or zone transfer (not an audited change)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(isp_key(name), mapping=fields)
        pipe.xadd(K.pulls, {"isp": name, **fields}, maxlen=keep, approximate=True)
        pipe.execute()

    def recent_pulls(self, count: int = 100) -> list[dict[str, str]]:
        return [{"id": str(i), **{str(k): str(v) for k, v in f.items()}}
                for i, f in self.r.xrevrange(K.pulls, count=count)]

    def set_xot_cert(self, pem: str) -> None:
        """The certificate the transfer server serves over TLS (public; ISPs pin it)."""
        self.r.set(K.xot_cert, pem)

    def xot_cert(self) -> str | None:
        return text(self.r.get(K.xot_cert))

    def move_legacy_token_index(self) -> None:
        """Move the token index out of the ``isp:`` family, where an older
        release kept it. Idempotent and cheap (one EXISTS when there is
        nothing to do)."""
        if self.r.exists(K.legacy_isp_tokens) and not self.r.exists(K.isp_tokens):
            self.r.renamenx(K.legacy_isp_tokens, K.isp_tokens)
