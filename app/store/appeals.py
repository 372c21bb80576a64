"""Appeals filed on the public stop page (see :mod:`app.appeals`): one JSON
record per appeal, a sorted set of all appeals and one per status, each
scored by filing time; claims make filing idempotent."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.store.base import Part, text
from app.store.keys import K, appeal_claim_key, appeal_key, appeal_status_key
from app.store.txn import Txn


class AppealData(Part):
    """``store.appeals``"""

    def allocate_id(self) -> int:
        return int(str(self.r.incr(K.appeal_seq)))

    def raw(self, appeal_id: int) -> str | None:
        return text(self.r.get(appeal_key(appeal_id)))

    def raw_many(self, ids: Sequence[int]) -> list[str | None]:
        if not ids:
            return []
        return [text(v) for v in self.r.mget([appeal_key(i) for i in ids])]

    def put(self, txn: Txn, appeal_id: int, new_json: str, *, expect_json: str | None,
            old_status: str | None, new_status: str, score: float) -> None:
        """Write one appeal with its indexes, if it still is ``expect_json``."""
        key = appeal_key(appeal_id)
        member = str(appeal_id)
        txn.expect_get(key, expect_json)
        txn.op("SET", key, new_json)
        if expect_json is None:
            txn.op("ZADD", K.appeals, repr(float(score)), member)
        if old_status is not None and old_status != new_status:
            txn.op("ZREM", appeal_status_key(old_status), member)
        txn.op("ZADD", appeal_status_key(new_status), repr(float(score)), member)

    def ids(self, status: str | None, offset: int, limit: int) -> list[int]:
        """Newest first; ``status=None`` lists every appeal."""
        key = K.appeals if status is None else appeal_status_key(status)
        return [int(str(i)) for i in self.r.zrevrange(key, offset, offset + limit - 1)]

    def counts(self, statuses: Iterable[str]) -> dict[str, int]:
        names = list(statuses)
        pipe = self.r.pipeline(transaction=False)
        for s in names:
            pipe.zcard(appeal_status_key(s))
        return dict(zip(names, (int(c) for c in pipe.execute()), strict=True))

    def claimed(self, digest: str) -> str | None:
        return text(self.r.get(appeal_claim_key(digest)))

    def claim(self, digest: str, value: str, ttl: int) -> str | None:
        """Claim ``digest`` for ``value``; None when the claim is new, else the
        value of the earlier claim."""
        key = appeal_claim_key(digest)
        if self.r.set(key, value, nx=True, ex=ttl):
            return None
        v = self.r.get(key)
        return value if v is None else str(v)

    def release(self, digest: str, value: str) -> None:
        """Drop a claim that still holds ``value`` (a filing that did not commit)."""
        self.scripts.unlock(keys=[appeal_claim_key(digest)], args=[value])
