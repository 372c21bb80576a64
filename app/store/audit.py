"""The audit stream (records ``<seq>-0``) and its head (last seq and hash);
see :mod:`app.audit` for the chain."""

from __future__ import annotations

from app.store.base import Part
from app.store.keys import K
from app.store.txn import Txn


class AuditData(Part):
    """``store.audit``"""

    def head(self) -> tuple[int, str | None]:
        head = self.r.hgetall(K.audit_head)
        if not head:
            return 0, None
        return int(head["seq"]), str(head["hash"])

    def append(self, txn: Txn, seq: int, record_json: str, record_hash: str, expect_hash: str | None) -> None:
        txn.expect_hget(K.audit_head, "hash", expect_hash)
        # XADD goes first: it is the only write that can fail, and a script
        # that fails half-way would leave the writes before it in place.
        txn.op_first("XADD", K.audit, f"{seq}-0", "r", record_json)
        txn.op("HSET", K.audit_head, "seq", str(seq), "hash", record_hash)

    def range(self, start: str = "-", end: str = "+", count: int | None = None,
              reverse: bool = False) -> list[tuple[str, str]]:
        if reverse:
            rows = self.r.xrevrange(K.audit, max=end, min=start, count=count)
        else:
            rows = self.r.xrange(K.audit, min=start, max=end, count=count)
        return [(str(i), str(f.get("r", ""))) for i, f in rows]

    def length(self) -> int:
        return int(self.r.xlen(K.audit))
