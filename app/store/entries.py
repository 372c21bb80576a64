"""Entries: the records, their value and status indexes, and the change feed.

Entries live in hash buckets (``entries:<id // 1024>``) holding compact
JSON; the value -> id index maps a 72-bit BLAKE2b digest of the value to the
id (a comma list in the unlikely case of a collision, resolved by reading
the entries), spread over :data:`~app.store.keys.INDEX_BUCKETS` hashes;
there is one sorted set per status.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import redis.client

from app.store.base import Part, text
from app.store.keys import (
    BUCKET_SIZE,
    K,
    bucket_key,
    entry_key,
    record_key,
    status_key,
    url_host_key,
    url_host_of,
    value_field,
    value_key,
)
from app.store.published import feed_add, feed_ops
from app.store.txn import Txn


class EntryData(Part):
    """Entry records and their indexes (``store.entries``)."""

    def allocate_ids(self, n: int = 1) -> int:
        """Reserve ``n`` consecutive ids; returns the first."""
        last = int(self.r.incrby(K.entry_seq, n))
        if last == n:
            # The store's first entries: its published form is whole from the start.
            self.r.setnx(K.feed_ready, str(int(time.time())))
        return last - n + 1

    def last_id(self) -> int:
        return int(self.r.get(K.entry_seq) or 0)

    def raw(self, entry_id: int) -> str | None:
        return text(self.r.hget(entry_key(entry_id), str(entry_id)))

    def raw_many(self, ids: Sequence[int]) -> list[str | None]:
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(entry_key(i), str(i))
        return [text(v) for v in pipe.execute()]

    def iter_raw(self) -> Iterator[str]:
        """Every entry record, bucket by bucket (for full rebuilds and exports)."""
        last = self.last_id()
        pipe_size = 16
        buckets = list(range(0, last // BUCKET_SIZE + 1))
        for start in range(0, len(buckets), pipe_size):
            pipe = self.r.pipeline(transaction=False)
            for b in buckets[start : start + pipe_size]:
                pipe.hvals(bucket_key(b))
            for values in pipe.execute():
                yield from values

    def bucket_items(self, bucket: int) -> list[tuple[int, str]]:
        """(id, record) of every entry in one storage bucket."""
        return [(int(k), str(v)) for k, v in self.r.hgetall(bucket_key(bucket)).items()]

    def lookups(self, keys: Sequence[str]) -> list[tuple[int | None, str | None]]:
        """For each index key: the id of the entry with that value (or None),
        and the raw index field, which a creating write must expect."""
        if not keys:
            return []
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hget(value_key(k), value_field(k))
        raws = [text(v) for v in pipe.execute()]
        candidates = sorted({int(i) for raw in raws if raw for i in raw.split(",")})
        records = dict(zip(candidates, self.raw_many(candidates), strict=True))
        out: list[tuple[int | None, str | None]] = []
        for k, raw in zip(keys, raws, strict=True):
            found = None
            if raw:
                for i in raw.split(","):
                    rec = records.get(int(i))
                    if rec is not None and record_key(rec) == k:
                        found = int(i)
                        break
            out.append((found, raw))
        return out

    def ids_for_keys(self, keys: Sequence[str]) -> list[int | None]:
        return [i for i, _ in self.lookups(keys)]

    def id_for_key(self, key: str) -> int | None:
        return self.lookups([key])[0][0]

    def put(
        self,
        txn: Txn,
        entry_id: int,
        new_json: str,
        *,
        expect_json: str | None,
        index_key: str,
        index_expect: str | None = None,
        old_status: str | None,
        new_status: str,
        score: float,
        dirty: bool,
    ) -> None:
        """Write one entry record with its indexes, if it still is ``expect_json``."""
        ek = entry_key(entry_id)
        member = str(entry_id)
        txn.expect_hget(ek, member, expect_json)
        if expect_json is None:
            vkey, vfield = value_key(index_key), value_field(index_key)
            txn.expect_hget(vkey, vfield, index_expect)
            txn.op("HSET", vkey, vfield, f"{index_expect},{member}" if index_expect else member)
            host = url_host_of(index_key)
            if host:
                txn.op("SADD", url_host_key(host), member)
        txn.op("HSET", ek, member, new_json)
        feed_ops(txn, expect_json if old_status == "active" else None,
                 new_json if new_status == "active" else None)
        if old_status is not None and old_status != new_status:
            txn.op("ZREM", status_key(old_status), member)
        txn.op("ZADD", status_key(new_status), repr(float(score)), member)
        if dirty:
            txn.mark_dirty(entry_id)

    def put_new(self, txn: Txn, items: Sequence[tuple[int, str, str, str | None]], status: str,
                score: float) -> None:
        """Create many entries (id, index key, JSON, index field as read) with
        fresh ids from :meth:`allocate_ids`, in few large writes."""
        buckets: dict[str, list[str]] = {}
        index: dict[str, list[str]] = {}
        hosts: dict[str, list[str]] = {}
        zadd_args: list[str] = []
        sc = repr(float(score))
        for entry_id, ikey, js, index_expect in items:
            member = str(entry_id)
            vkey, vfield = value_key(ikey), value_field(ikey)
            txn.expect_hget(vkey, vfield, index_expect)
            buckets.setdefault(entry_key(entry_id), []).extend((member, js))
            index.setdefault(vkey, []).extend(
                (vfield, f"{index_expect},{member}" if index_expect else member)
            )
            host = url_host_of(ikey)
            if host:
                hosts.setdefault(url_host_key(host), []).append(member)
            zadd_args += (sc, member)
        for key, args in buckets.items():
            txn.op("HSET", key, *args)
        for key, args in index.items():
            txn.op("HSET", key, *args)
        for key, args in hosts.items():
            txn.op("SADD", key, *args)
        if zadd_args:
            txn.op("ZADD", status_key(status), *zadd_args)
        if status == "active":
            feed_add(txn, [js for _, _, js, _ in items])

    def url_host_ids(self, host: str) -> list[int]:
        """Ids of the URL entries on ``host``."""
        return sorted(int(i) for i in self.r.smembers(url_host_key(host)))

    def url_host_index_ready(self) -> bool:
        return bool(self.r.exists(K.url_host_ready))

    def add_url_hosts(self, pairs: Iterable[tuple[str, int]], done: bool = False) -> None:
        """Add (host, id) pairs to the URL host index; ``done`` marks it complete."""
        pipe = self.r.pipeline(transaction=False)
        for host, entry_id in pairs:
            pipe.sadd(url_host_key(host), str(entry_id))
        if done:
            pipe.set(K.url_host_ready, "1")
        pipe.execute()

    def count_by_status(self, statuses: Iterable[str]) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        names = list(statuses)
        for s in names:
            pipe.zcard(status_key(s))
        return dict(zip(names, (int(c) for c in pipe.execute()), strict=True))

    def ids_by_status(
        self, status: str, offset: int, limit: int, newest_first: bool = True
    ) -> list[int]:
        key = status_key(status)
        if newest_first:
            ids = self.r.zrevrange(key, offset, offset + limit - 1)
        else:
            ids = self.r.zrange(key, offset, offset + limit - 1)
        return [int(i) for i in ids]

    def ids_by_status_score(self, status: str, lo: float, hi: float, limit: int) -> list[int]:
        return [int(i) for i in self.r.zrangebyscore(status_key(status), lo, hi, start=0, num=limit)]

    def status_count_between(self, status: str, lo: float, hi: float) -> int:
        return int(self.r.zcount(status_key(status), lo, hi))

    def search_values(self, needle: str, batch: int = 64) -> Iterator[str]:
        """Entry records whose value contains ``needle``: a full scan, filtered
        inside Redis bucket by bucket so only matches cross the network."""
        last_bucket = self.last_id() // BUCKET_SIZE
        for start in range(0, last_bucket + 1, batch):
            pipe = self.r.pipeline(transaction=False)
            for b in range(start, min(start + batch, last_bucket + 1)):
                self.scripts.search(keys=[bucket_key(b)], args=[needle], client=pipe)
            for found in pipe.execute():
                yield from (str(v) for v in found)


class ChangeFeed(Part):
    """The publisher's change feed (``store.changes``): a list to which every
    change that can alter the published list appends the entry id, in the
    same step as the change (:meth:`Txn.mark_dirty`). The publisher consumes
    it from the head."""

    def peek(self, limit: int = 1_000_000) -> list[int]:
        """Ids of entries changed since the publisher last consumed the feed."""
        return [int(i) for i in self.r.lrange(K.dirty, 0, limit - 1)]

    def consume(self, n: int) -> None:
        """Drop the first ``n`` ids, once what they changed is published."""
        if n > 0:
            self.r.ltrim(K.dirty, n, -1)

    def count(self) -> int:
        return int(self.r.llen(K.dirty))

    def subscribe(self) -> redis.client.PubSub:
        """Signals that the change feed grew (see :meth:`Txn.mark_dirty`)."""
        ps: redis.client.PubSub = self.r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(K.dirty_channel)
        return ps
