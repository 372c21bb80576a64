"""The never-block allowlist: domain -> JSON of how it was added."""

from __future__ import annotations

from app.store.base import Part, text
from app.store.keys import K
from app.store.txn import Txn


class AllowlistData(Part):
    """``store.allowlist``"""

    def all_raw(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(K.allowlist).items()}

    def raw(self, domain: str) -> str | None:
        return text(self.r.hget(K.allowlist, domain))

    def put(self, txn: Txn, domain: str, new_json: str | None, expect_json: str | None) -> None:
        """Add, change (``new_json``) or remove (None) a name, if it still is ``expect_json``."""
        txn.expect_hget(K.allowlist, domain, expect_json)
        if new_json is None:
            txn.op("HDEL", K.allowlist, domain)
        else:
            txn.op("HSET", K.allowlist, domain, new_json)
