"""What processes report about themselves for ``/readyz`` and ``/metrics``:
the publisher's signing key, and the workers alive."""

from __future__ import annotations

import json
import time
from typing import Any

from app.store.base import Part
from app.store.keys import K


class HealthData(Part):
    """``store.health``"""

    def report_signer(self, key_id: str, ttl: int, problem: str | None = None) -> None:
        """The publisher says it holds the signing key, or why it cannot sign
        (read by /readyz on any host)."""
        report: dict[str, Any] = {"key_id": key_id, "at": int(time.time())}
        if problem:
            report["problem"] = problem
        self.r.set(K.signer, json.dumps(report), ex=ttl)

    def signer_status(self) -> dict[str, Any] | None:
        v = self.r.get(K.signer)
        return None if v is None else dict(json.loads(v))

    def report_worker(self, name: str, fields: dict[str, Any], ttl: int) -> None:
        """A worker says it is alive, and whether it can publish (read by /readyz)."""
        now = int(time.time())
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(K.workers, {json.dumps({"name": name, **fields}, sort_keys=True): now + ttl})
        pipe.zremrangebyscore(K.workers, "-inf", now)
        pipe.execute()

    def workers_alive(self) -> list[dict[str, Any]]:
        now = int(time.time())
        latest: dict[str, dict[str, Any]] = {}
        for raw, score in self.r.zrangebyscore(K.workers, now, "+inf", withscores=True):
            d = dict(json.loads(raw))
            d["until"] = int(score)
            if d["name"] not in latest or latest[d["name"]]["until"] < d["until"]:
                latest[str(d["name"])] = d
        return sorted(latest.values(), key=lambda d: str(d["name"]))
