"""Publications: the version records, the latest pointer, the manifest, a
held publication, "publish now" requests and their answers, the publisher
lock, the highest version ever published, and zone digests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.client

from app.store.base import Part, Scripts, text
from app.store.keys import K, pub_request_key, pub_result_key, pub_version_key, zone_digest_key
from app.store.txn import Txn


class PublicationData(Part):
    """``store.pubs``"""

    def __init__(self, r: Any, scripts: Scripts, commit: Callable[[Txn], None]) -> None:
        super().__init__(r, scripts)
        self._commit = commit

    # ------------------------------------------------------------------ versions

    def latest_raw(self) -> str | None:
        return text(self.r.get(K.pub_latest))

    def version_raw(self, version: int) -> str | None:
        return text(self.r.get(pub_version_key(version)))

    def version_numbers(self, limit: int, before: int | None = None) -> list[int]:
        hi = f"({before}" if before else "+inf"
        return [int(n) for n in self.r.zrevrangebyscore(K.pub_versions, hi, "-inf", start=0, num=limit)]

    def first_version_after(self, version: int) -> int | None:
        """The oldest published version above ``version`` (numbers can have gaps)."""
        found = self.r.zrangebyscore(K.pub_versions, f"({version}", "+inf", start=0, num=1)
        return int(found[0]) if found else None

    def manifest(self) -> tuple[str, str, int] | None:
        body, sig, signed_at = self.r.hmget(K.pub_manifest, ["body", "sig", "signed_at"])
        if not body or not sig:
            return None
        return str(body), str(sig), int(signed_at or 0)

    def held_raw(self) -> str | None:
        return text(self.r.get(K.pub_held))

    def expect(self, txn: Txn, *, latest: str | object | None = ..., lock: str | None = None,
               held: str | object | None = ...) -> None:
        """Compare-and-set conditions of a publication step."""
        if latest is not ...:
            txn.expect_get(K.pub_latest, latest)  # type: ignore[arg-type]
        if lock is not None:
            txn.expect_get(K.pub_lock, lock)
        if held is not ...:
            txn.expect_get(K.pub_held, held)  # type: ignore[arg-type]

    def add_version(self, txn: Txn, version: int, meta_json: str, latest_json: str, consumed: int) -> None:
        txn.op("SET", pub_version_key(version), meta_json)
        txn.op("ZADD", K.pub_versions, version, version)
        txn.op("SET", K.pub_latest, latest_json)
        txn.op("LTRIM", K.dirty, consumed, -1)
        txn.op("DEL", K.pub_held)
        txn.op("PUBLISH", K.pub_channel, version)

    def update_version(self, txn: Txn, version: int, meta_json: str, latest_json: str) -> None:
        """Record a version's full files once compacted (its list never changes)."""
        txn.op("SET", pub_version_key(version), meta_json)
        txn.op("SET", K.pub_latest, latest_json)

    def add_full(self, txn: Txn, version: int) -> None:
        txn.op("ZADD", K.pub_full, version, version)

    def full_versions_older(self, keep: int) -> list[int]:
        """Versions with full files, except the newest ``keep``."""
        return [int(v) for v in self.r.zrange(K.pub_full, 0, -(keep + 1))]

    def drop_full(self, version: int) -> None:
        self.r.zrem(K.pub_full, version)

    def set_manifest(self, txn: Txn, body: str, sig: str, version: int, signed_at: int) -> None:
        txn.op("HSET", K.pub_manifest, "body", body, "sig", sig, "version", version, "signed_at", signed_at)

    def set_held(self, txn: Txn, held_json: str | None) -> None:
        if held_json is None:
            txn.op("DEL", K.pub_held)
        else:
            txn.op("SET", K.pub_held, held_json)

    def subscribe(self) -> redis.client.PubSub:
        """Signals that a version was published."""
        ps: redis.client.PubSub = self.r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(K.pub_channel)
        return ps

    # ------------------------------------------------------------------ "publish now" requests

    def set_request(self, request_id: str, payload: str, pending: str, txn: Txn | None = None,
                    ttl: int = 3600, request_ttl: int = 3600) -> None:
        """Queue a "publish now" request; its answer starts as ``pending``. A
        request not taken within ``request_ttl`` seconds is dropped unserved."""
        own = txn is None
        t = Txn() if txn is None else txn
        t.op("SET", pub_request_key(request_id), payload, "EX", request_ttl)
        t.op("SET", pub_result_key(request_id), pending, "EX", ttl)
        t.op("RPUSH", K.pub_queue, request_id)
        if own:
            self._commit(t)

    def set_result(self, request_id: str, payload: str, ttl: int = 3600) -> None:
        self.r.set(pub_result_key(request_id), payload, ex=ttl)

    def result(self, request_id: str) -> str | None:
        return text(self.r.get(pub_result_key(request_id)))

    def take_request(self) -> tuple[str, str] | None:
        """The oldest queued request (id, payload), removed from the queue."""
        while True:
            request_id = self.r.lpop(K.pub_queue)
            if request_id is None:
                return None
            payload = self.r.getdel(pub_request_key(request_id))
            if payload is not None:
                return str(request_id), str(payload)

    def withdraw_request(self, request_id: str) -> bool:
        """Take a request back if no publisher has taken it yet (True if it was still queued)."""
        removed = int(self.r.lrem(K.pub_queue, 1, request_id))
        self.r.delete(pub_request_key(request_id))
        return removed > 0

    # ------------------------------------------------------------------ the publisher lock

    def lock_acquire(self, token: str, ttl_ms: int) -> bool:
        return bool(self.r.set(K.pub_lock, token, nx=True, px=ttl_ms))

    def lock_extend(self, token: str, ttl_ms: int) -> bool:
        """Extend the lock only if ``token`` still holds it."""
        return bool(self.scripts.extend(keys=[K.pub_lock], args=[token, ttl_ms]))

    def lock_release(self, token: str) -> bool:
        """Release the lock only if ``token`` still holds it."""
        return bool(self.scripts.unlock(keys=[K.pub_lock], args=[token]))

    def lock_holder(self) -> str | None:
        return text(self.r.get(K.pub_lock))

    # ------------------------------------------------------------------ highwater

    def highwater(self) -> int:
        return int(self.r.get(K.pub_highwater) or 0)

    def raise_highwater(self, version: int) -> int:
        """Raise the highest version ever published, never lower it; returns it."""
        return int(self.scripts.confirmed(self.scripts.raise_, [K.pub_highwater], [version]))

    # ------------------------------------------------------------------ zone digests

    def zone_digest(self, zone: str, serial: int) -> bytes | None:
        v = self.r.get(zone_digest_key(zone, serial))
        try:
            return bytes.fromhex(str(v)) if v is not None else None
        except ValueError:
            return None

    def set_zone_digest(self, zone: str, serial: int, digest: bytes, ttl: int) -> None:
        self.r.set(zone_digest_key(zone, serial), digest.hex(), ex=ttl)
