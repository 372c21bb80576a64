"""Policy settings changed at run time (name -> JSON) and once-only markers."""

from __future__ import annotations

import time

from app.store.base import Part
from app.store.keys import K
from app.store.txn import Txn


class SettingsData(Part):
    """``store.settings``"""

    def all_raw(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(K.settings).items()}

    def put(self, txn: Txn, name: str, value: str | None, expect: str | None) -> None:
        txn.expect_hget(K.settings, name, expect)
        if value is None:
            txn.op("HDEL", K.settings, name)
        else:
            txn.op("HSET", K.settings, name, value)

    def once(self, name: str) -> bool:
        """True the first time it is called with ``name`` for this store, ever."""
        return bool(self.r.hsetnx(K.once, name, str(int(time.time()))))
