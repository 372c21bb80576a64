"""Rate limits: fixed-window counters per scope and subject."""

from __future__ import annotations

import hashlib
import time

from app.store.base import Part
from app.store.keys import rate_key, rate_set_key


class RateData(Part):
    """``store.rates``"""

    def hit(self, scope: str, who: str, window: int) -> int:
        """Fixed-window counter: hits of ``who`` in the current window."""
        key = rate_key(scope, who, int(time.time() // window))
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, window * 2)
        n, _ = pipe.execute()
        return int(n)

    def peek(self, scope: str, who: str, window: int) -> int:
        """Hits of ``who`` in the current window of :meth:`hit`, without counting one."""
        return int(self.r.get(rate_key(scope, who, int(time.time() // window))) or 0)

    def distinct_hit(self, scope: str, who: str, item: str, window: int) -> int:
        """Fixed-window count of the different ``item`` values ``who`` used (``item`` is stored as a digest)."""
        key = rate_set_key(scope, who, int(time.time() // window))
        pipe = self.r.pipeline()
        pipe.sadd(key, hashlib.sha256(item.encode()).hexdigest()[:16])
        pipe.expire(key, window * 2)
        pipe.scard(key)
        _, _, n = pipe.execute()
        return int(n)
