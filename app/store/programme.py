"""The programme's signing keys (current, announced next, retired) as one JSON record."""

from __future__ import annotations

from app.store.base import Part, text
from app.store.keys import K
from app.store.txn import Txn


class ProgrammeKeyData(Part):
    """``store.programme_keys``"""

    def raw(self) -> str | None:
        return text(self.r.get(K.programme_keys))

    def put(self, txn: Txn, expect: str | None, value: str) -> None:
        """Compare-and-set of the key record (``expect`` None: none recorded yet)."""
        txn.expect_get(K.programme_keys, expect)
        txn.op("SET", K.programme_keys, value)
