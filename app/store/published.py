"""The published form of the list (``store.published``): every active entry's
canonical feed line and, for a domain, its zone lines, kept by Redis in the
list's order and cut into the very chunks of the list digest
(:mod:`client.digest`).

Layout (key names in :class:`app.store.keys.K`):

* ``feed_chunks``: a hash from a chunk's name to its lines, each followed by
  ``"\\n"`` -- byte for byte the chunk the list digest hashes;
* ``feed_zchunks``: the same names to the zone lines of those entries, one
  entry's lines after another, each entry's followed by ``"\\x1e"`` (an
  empty fragment for a URL), so they split into a list aligned with the lines;
* ``feed_index``: the chunk names in a sorted set (all scores 0, so ordered
  as bytes). A chunk is named by the sort key (:func:`app.listbuild.line_key`)
  of its last line, which ends the chunk in the digest's sense; the chunk
  after the last such line, if any, is named ``"~"`` (after every key);
* ``feed_count``: how many lines the chunks hold.

So a full publication reads a few tens of thousands of chunks instead of a
million members, and takes each chunk's digest as the sha256 of what it read.

What must stay true:

* The form changes in the same atomic step as the entry records it mirrors:
  :func:`feed_ops` and :func:`feed_add` note the lines a :class:`Txn` changes,
  and :meth:`PublishedForm.stage` (run by :meth:`app.store.Store.commit`)
  reads the chunks they fall in and adds the rewritten chunks to the step,
  with checks that those chunks are still what it read.
* Every chunk but ``"~"`` ends with a line that ends a digest chunk, and no
  other line in any chunk does.
* "ready" (``K.feed_ready``) only once every active record is in it: set with
  a store's first entry ids (:meth:`app.store.entries.EntryData.allocate_ids`),
  or by the publisher after filling a store written before this form existed
  (:meth:`PublishedForm.fill` adds a record only if it is still the stored one).
* A read is a series of batches of whole chunks, each batch one atomic
  script; chunks merged behind the reader's back may repeat lines it has
  read, which it drops.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis.exceptions

from app.errors import StoreError
from app.store.base import Part
from app.store.keys import K, entry_key, status_key
from app.store.txn import Txn
from client.digest import ends_chunk

#: The name of the chunk after the last line that ends one (sorts after every key).
OPEN = "~"
#: What follows each entry's zone lines in a zone chunk.
ZSEP = "\x1e"

_DOMAIN = '{"type":"domain","value":"'
_URL = '{"type":"url","value":"'

# One batch of a read: the next ARGV[2] chunk names after ARGV[1] (a ZRANGEBYLEX
# bound), their lines and their zone lines, as one atomic step.
READ_LUA = r"""
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
if #names == 0 then return {{}, {}, {}} end
return {names, redis.call('HMGET', KEYS[2], unpack(names)), redis.call('HMGET', KEYS[3], unpack(names))}
"""


def line_key(line: str) -> str:
    """The sort key of a feed line (``d:<value>`` or ``u:<value>``), as
    :func:`app.listbuild.line_key` gives it for bytes."""
    if line.startswith(_DOMAIN):
        start = len(_DOMAIN)
        return "d:" + line[start : line.index('"', start)]
    start = len(_URL)
    return "u:" + line[start : line.index('"', start)]


def feed_ops(txn: Txn, old_raw: str | None, new_raw: str | None) -> None:
    """Note the change one entry record makes to the published form:
    ``old_raw`` and ``new_raw`` are its record before and after, each only if active."""
    from app.listbuild import feed_members

    old = feed_members(old_raw) if old_raw else None
    new = feed_members(new_raw) if new_raw else None
    if old == new:
        return
    if old is not None:
        txn.feed[line_key(old[0])] = None
    if new is not None:
        txn.feed[line_key(new[0])] = new


def feed_add(txn: Txn, raws: Iterable[str]) -> None:
    """Note the published form of new active records."""
    from app.listbuild import feed_members

    for raw in raws:
        line, frag = feed_members(raw)
        txn.feed[line_key(line)] = (line, frag)


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class _Chunk:
    """One stored chunk as read: its lines (each with its key) and zone fragments."""

    __slots__ = ("frags", "keys", "lines", "name", "raw")

    def __init__(self, name: str, raw: str | None, zraw: str | None) -> None:
        self.name = name
        self.raw = raw
        self.lines = raw.split("\n")[:-1] if raw else []
        self.frags = zraw.split(ZSEP)[:-1] if zraw else []
        if len(self.frags) != len(self.lines):
            raise StoreError(f"the published form's chunk {name!r} has {len(self.lines)} lines "
                             f"but {len(self.frags)} zone fragments")
        self.keys = [line_key(x) for x in self.lines]


class PublishedForm(Part):
    """The published form (``store.published``)."""

    def ready(self) -> bool:
        return bool(self.r.exists(K.feed_ready))

    def counts(self) -> tuple[int, int]:
        """(feed lines held, active entries): equal when the published form is whole."""
        pipe = self.r.pipeline(transaction=True)
        pipe.get(K.feed_count)
        pipe.zcard(status_key("active"))
        lines, active = pipe.execute()
        return int(lines or 0), int(active)

    def fill(self, txn: Txn, raws: Sequence[tuple[int, str]]) -> None:
        """Add active records made before the published form existed, each only
        if it is still the record stored (else its writer already added it)."""
        for entry_id, raw in raws:
            txn.expect_hget(entry_key(entry_id), str(entry_id), raw)
        feed_add(txn, [raw for _, raw in raws])

    def reset(self) -> None:
        """Drop the published form (it is filled again from the records)."""
        self.r.delete(K.feed_ready)
        self.r.unlink(K.feed_index, K.feed_chunks, K.feed_zchunks, K.feed_count)

    def drop_legacy(self) -> None:
        """Drop the published form an older release kept (this one is filled
        from the records by the next full publication)."""
        if self.r.exists(*K.legacy_feed):
            self.r.unlink(*K.legacy_feed)

    def mark_ready(self) -> None:
        self.r.set(K.feed_ready, str(int(time.time())))

    # ------------------------------------------------------------ writing

    def stage(self, txn: Txn) -> None:
        """Turn the lines ``txn`` changes (``txn.feed``) into rewritten chunks.

        Reads the chunk each changed key falls in (the first chunk named at
        or after the key), applies the changes, cuts the result again where
        lines end digest chunks; a chunk whose last line went away is merged
        with the chunk after it, read too. The step then checks that every
        chunk read is unchanged (its SHA-1, or its absence) before writing."""
        changes = txn.feed
        txn.feed = {}
        if not changes:
            return
        keys = sorted(changes)
        located = self._locate(keys)
        by_chunk: dict[str, dict[str, tuple[str, str] | None]] = {}
        for k, name in zip(keys, located, strict=True):
            by_chunk.setdefault(name, {})[k] = changes[k]
        chunks: dict[str, _Chunk] = {}
        successor: dict[str, str | None] = {}
        self._read_chunks(chunks, list(by_chunk))
        while True:
            out, need = self._plan(chunks, by_chunk, successor)
            if not need:
                break
            pipe = self.r.pipeline(transaction=False)
            for name in need:
                pipe.zrangebylex(K.feed_index, "(" + name, "+", start=0, num=1)
            nexts = [found[0] if found else None for found in pipe.execute()]
            successor.update(zip(need, nexts, strict=True))
            self._read_chunks(chunks, [n for n in nexts if n is not None and n not in chunks])
        # Checks: every chunk read is still as read.
        for c in chunks.values():
            txn.expect_hsha(K.feed_chunks, c.name, _sha1(c.raw) if c.raw is not None else None)
        if OPEN not in chunks and None in successor.values():
            # A chunk found nothing after it: still so when the step runs.
            txn.expect_hsha(K.feed_chunks, OPEN, None)
        before = sum(len(c.lines) for c in chunks.values())
        after = sum(len(lines) for lines, _ in out.values())
        gone = [name for name, c in chunks.items() if c.raw is not None and name not in out]
        if gone:
            txn.op("HDEL", K.feed_chunks, *gone)
            txn.op("HDEL", K.feed_zchunks, *gone)
            txn.op("ZREM", K.feed_index, *gone)
        hset: list[str] = []
        zset: list[str] = []
        added: list[str] = []
        for name, (lines, frags) in out.items():
            text = "".join(x + "\n" for x in lines)
            old = chunks.get(name)
            if old is not None and old.raw == text:
                continue
            hset += (name, text)
            zset += (name, "".join(f + ZSEP for f in frags))
            if old is None or old.raw is None:
                added += ("0", name)
        if hset:
            txn.op("HSET", K.feed_chunks, *hset)
            txn.op("HSET", K.feed_zchunks, *zset)
        if added:
            txn.op("ZADD", K.feed_index, *added)
        if after != before:
            txn.op("INCRBY", K.feed_count, after - before)

    def _locate(self, keys: list[str]) -> list[str]:
        """The name of the chunk each of the sorted ``keys`` falls in (the first
        named at or after it; :data:`OPEN` after the last closed chunk)."""
        pipe = self.r.pipeline(transaction=False)
        if len(keys) <= 64:
            for k in keys:
                pipe.zrangebylex(K.feed_index, "[" + k, "+", start=0, num=1)
            return [found[0] if found else OPEN for found in pipe.execute()]
        # Many keys: the names from the first key to the one after the last, at once.
        pipe.zrangebylex(K.feed_index, "[" + keys[0], "[" + keys[-1])
        pipe.zrangebylex(K.feed_index, "(" + keys[-1], "+", start=0, num=1)
        inside, after = pipe.execute()
        names = [*inside, *after]
        out = []
        for k in keys:
            i = bisect.bisect_left(names, k)
            out.append(names[i] if i < len(names) else OPEN)
        return out

    def _read_chunks(self, chunks: dict[str, _Chunk], names: list[str]) -> None:
        if not names:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(K.feed_chunks, names)
        pipe.hmget(K.feed_zchunks, names)
        raws, zraws = pipe.execute()
        for name, raw, zraw in zip(names, raws, zraws, strict=True):
            chunks[name] = _Chunk(name, raw, zraw)

    @staticmethod
    def _plan(chunks: dict[str, _Chunk], by_chunk: dict[str, dict[str, tuple[str, str] | None]],
              successor: dict[str, str | None]
              ) -> tuple[dict[str, tuple[list[str], list[str]]], list[str]]:
        """The chunks after the change (name -> lines, fragments), or the names
        of chunks whose successor must be read first."""
        out: dict[str, tuple[list[str], list[str]]] = {}
        need: list[str] = []
        carry: tuple[list[str], list[str], list[str]] | None = None  # keys, lines, frags
        carry_to: str | None = None
        for name in sorted(chunks):
            c = chunks[name]
            ks, ls, fs = list(c.keys), list(c.lines), list(c.frags)
            if carry is not None and carry_to == name:
                ks, ls, fs = carry[0] + ks, carry[1] + ls, carry[2] + fs
                carry = None
            change = by_chunk.get(name)
            if change:
                merged: dict[str, tuple[str, str]] = dict(zip(ks, zip(ls, fs, strict=True), strict=True))
                for k, v in change.items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = v
                ks = sorted(merged)
                ls = [merged[k][0] for k in ks]
                fs = [merged[k][1] for k in ks]
            start = 0
            for i, line in enumerate(ls):
                if ends_chunk(line.encode()):
                    out[ks[i]] = (ls[start : i + 1], fs[start : i + 1])
                    start = i + 1
            if start < len(ls):
                tail = (ks[start:], ls[start:], fs[start:])
                if name == OPEN:
                    out[OPEN] = (tail[1], tail[2])
                elif name not in successor:
                    need.append(name)
                elif successor[name] is None:
                    out[OPEN] = (tail[1], tail[2])
                else:
                    carry, carry_to = tail, successor[name]
        if carry is not None:
            raise StoreError("the published form lost its place while merging chunks")
        return out, need

    # ------------------------------------------------------------ reading

    def read(self, batch: int = 2000) -> Iterator[tuple[list[bytes], list[bytes | None], list[bytes | None]]]:
        """The published form in batches of (chunk names, chunks, zone chunks),
        in order, as bytes; a chunk missing from a hash is None (a damaged
        form: the caller builds from the records)."""
        cursor = b"-"
        while True:
            names, chunks, zchunks = self._raw(
                ["EVAL", READ_LUA, 3, K.feed_index, K.feed_chunks, K.feed_zchunks, cursor, batch])
            if not names:
                return
            yield names, chunks, zchunks
            if len(names) < batch:
                return
            cursor = b"(" + names[-1]

    def _raw(self, command: list[Any]) -> Any:
        """A reply as bytes (the client decodes to text otherwise)."""
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_command(*command)
            return conn.read_response(disable_decoding=True)
        except redis.exceptions.ResponseError as e:
            raise StoreError(f"Redis refused a read of the published form: {e}") from e
        except redis.exceptions.RedisError as e:
            conn.disconnect()
            raise StoreError(f"Redis is not reachable: {e}") from e
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
