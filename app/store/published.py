"""The published form of the list (``store.published``): every active entry's
canonical feed line and, for a domain, its zone lines, in two sorted sets
that Redis keeps in the list's order.

What must stay true:

* The form changes in the same atomic step as the entry record it mirrors
  (:func:`feed_ops` and :func:`feed_add` are called by
  :class:`app.store.entries.EntryData` when it writes a record), so its
  lines are always those of the active records.
* "ready" (``K.feed_ready``) only once every active record is in it: set
  with a store's first entry ids (:meth:`app.store.entries.EntryData.allocate_ids`),
  or by the publisher after filling a store written before the form existed (:meth:`PublishedForm.fill` adds a
  record only if it is still the stored one).
* A read is a series of batches, each one MULTI/EXEC over both sets for one
  range of values, so a batch's zone lines are those of its domain lines.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis.exceptions

from app.errors import StoreError
from app.store.base import Part
from app.store.keys import K, entry_key, status_key
from app.store.txn import Txn

_FEED_DOMAIN = b'{"type":"domain","value":"'


def _domain_value(line: bytes) -> bytes | None:
    """The value of a domain feed line (None for a URL line)."""
    if not line.startswith(_FEED_DOMAIN):
        return None
    return line[len(_FEED_DOMAIN) : line.index(b'"', len(_FEED_DOMAIN))]


def feed_ops(txn: Txn, old_raw: str | None, new_raw: str | None) -> None:
    """Keep the published form in step with one entry record: ``old_raw``
    and ``new_raw`` are its record before and after, each only if active."""
    from app.listbuild import feed_members

    old = feed_members(old_raw) if old_raw else None
    new = feed_members(new_raw) if new_raw else None
    if old == new:
        return
    if old is not None:
        txn.op("ZREM", K.feed_lines, old[0])
        if old[1]:
            txn.op("ZREM", K.feed_zone, old[1])
    if new is not None:
        txn.op("ZADD", K.feed_lines, "0", new[0])
        if new[1]:
            txn.op("ZADD", K.feed_zone, "0", new[1])


def feed_add(txn: Txn, raws: Iterable[str]) -> None:
    """Add the published form of new active records."""
    from app.listbuild import feed_members

    lines: list[str] = []
    zone: list[str] = []
    for raw in raws:
        line, frag = feed_members(raw)
        lines += ("0", line)
        if frag:
            zone += ("0", frag)
    if lines:
        txn.op("ZADD", K.feed_lines, *lines)
    if zone:
        txn.op("ZADD", K.feed_zone, *zone)


class PublishedForm(Part):
    """The published form (``store.published``)."""

    def ready(self) -> bool:
        return bool(self.r.exists(K.feed_ready))

    def counts(self) -> tuple[int, int]:
        """(feed lines held, active entries): equal when the published form is whole."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zcard(K.feed_lines)
        pipe.zcard(status_key("active"))
        lines, active = pipe.execute()
        return int(lines), int(active)

    def fill(self, txn: Txn, raws: Sequence[tuple[int, str]]) -> None:
        """Add active records made before the published form existed, each only
        if it is still the record stored (else its writer already added it)."""
        for entry_id, raw in raws:
            txn.expect_hget(entry_key(entry_id), str(entry_id), raw)
        feed_add(txn, [raw for _, raw in raws])

    def reset(self) -> None:
        """Drop the published form (it is filled again from the records)."""
        self.r.delete(K.feed_ready)
        self.r.unlink(K.feed_lines, K.feed_zone)

    def mark_ready(self) -> None:
        self.r.set(K.feed_ready, str(int(time.time())))

    def read(self, batch: int = 50_000) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """The published form in batches of (feed lines, zone lines), in order.

        Each batch is a range of values read from both sorted sets in one
        MULTI/EXEC, so a batch's zone lines are those of its domain lines: the
        range ends at the value of the batch's last line, and the next batch
        starts after every line of that value (a line changed meanwhile is
        left to the change feed). A URL line changed between two batches may
        be read in both forms; the reader keeps the newer."""
        cursor: bytes = b"-"
        zcursor: bytes | None = b"-"
        while True:
            peek = self._raw([["ZRANGEBYLEX", K.feed_lines, cursor, b"+", "LIMIT", batch - 1, 1]])[0]
            bound = peek[0] if peek else None
            value = _domain_value(bound) if bound is not None else None
            commands: list[list[Any]] = [["ZRANGEBYLEX", K.feed_lines, cursor, b"[" + bound if bound else b"+"]]
            if zcursor is not None:
                commands.append(["ZRANGEBYLEX", K.feed_zone, zcursor, b"(" + value + b"!" if value else b"+"])
            out = self._raw(commands, atomic=True)
            lines, zone = out[0], (out[1] if len(out) > 1 else [])
            yield lines, zone
            if bound is None:
                return
            if value is not None:
                cursor, zcursor = b"(" + _FEED_DOMAIN + value + b'"\xff', b"[" + value + b"!"
            else:
                cursor, zcursor = b"(" + bound, None

    def _raw(self, commands: list[list[Any]], atomic: bool = False) -> list[Any]:
        """Replies as bytes (the client decodes to text otherwise), optionally in one MULTI/EXEC."""
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            sent = [["MULTI"], *commands, ["EXEC"]] if atomic else commands
            conn.send_packed_command(conn.pack_commands([tuple(c) for c in sent]))
            replies = [conn.read_response(disable_decoding=True) for _ in sent]
        except redis.exceptions.RedisError as e:
            conn.disconnect()
            raise StoreError(f"Redis is not reachable: {e}") from e
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if atomic:
            if replies[-1] is None:
                raise StoreError("Redis aborted a read of the published form")
            return list(replies[-1])
        return replies

