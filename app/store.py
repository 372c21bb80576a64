"""Redis, the system of record: the only module that knows key names.

What must stay true:

* Every change that touches more than one key is one atomic step: callers
  collect checks and writes in a :class:`Txn` and :meth:`Store.commit` runs
  them in a single Lua script, which first verifies the checks (compare and
  set) and only then writes. A failed check writes nothing and raises
  :class:`RetryableConflictError`, so the caller re-reads and tries again.
* The audit record of a change is written in the same step as the change.
* Entries live in hash buckets (``entries:<id // 1024>``) holding compact
  JSON; the value -> id index maps a 72-bit BLAKE2b digest of the value to
  the id (a comma list in the unlikely case of a collision, resolved by
  reading the entries), spread over :data:`INDEX_BUCKETS` hashes; there is
  one sorted set per status. Small hashes are
  stored as listpacks (see ``hash-max-ziplist-*`` in the shipped Redis
  configuration), which keeps an active entry under 500 bytes of memory.
* ``dirty`` is the change feed of the publisher: a list to which every
  change that can alter the published list appends the entry id, in the same
  step as the change. The publisher consumes it from the head.

Single-node Redis (or a Sentinel-managed primary) only: the scripts touch
many keys at once, which Redis Cluster would refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.exceptions
from redis.client import NEVER_DECODE

from app.errors import ConfigError, ConflictError, RetryableConflictError, StoreError, ValidationError

PREFIX = "bl:"
BUCKET_SIZE = 1024
#: Fixed forever: changing it would orphan the index.
INDEX_BUCKETS = 8192


class K:
    """Key templates. Keep every key name here.

    A template filled with a name that people choose (a user, an ISP) has a
    family prefix that no other key shares, and the name itself is checked by
    :func:`key_part` (no ``:``), so no chosen name can ever spell a key of
    another kind (``user:{name}`` once met ``user:sessions:{name}``, and
    ``isp:{name}`` met ``isp:tokens``).
    """

    entry_seq = PREFIX + "seq:entry"
    entries = PREFIX + "entries:{bucket}"
    value_index = PREFIX + "ix:value:{bucket}"
    status_index = PREFIX + "ix:status:{status}"
    # URL entries by host (a set of ids per host), so a search for a host
    # finds the URLs on it without reading every record; "ready" once the
    # entries made before this index existed were added to it.
    url_host = PREFIX + "ix:urlhost:{host}"
    url_host_ready = PREFIX + "ix:urlhost-ready"
    dirty = PREFIX + "dirty"
    allowlist = PREFIX + "allowlist"
    users = PREFIX + "users"
    user = PREFIX + "user:{name}"
    tokens = PREFIX + "tokens"
    audit = PREFIX + "audit"
    audit_head = PREFIX + "audit:head"
    settings = PREFIX + "settings"
    once = PREFIX + "once"
    isps = PREFIX + "isps"
    isp = PREFIX + "isp:{name}"
    isp_tokens = PREFIX + "isp-tokens"
    #: Where the ISP token index lived before it had its own family.
    legacy_isp_tokens = PREFIX + "isp:tokens"
    pulls = PREFIX + "pulls"
    xot_cert = PREFIX + "xot:cert"
    pub_latest = PREFIX + "pub:latest"
    pub_versions = PREFIX + "pub:versions"
    pub_version = PREFIX + "pub:v:{version}"
    # ZONEMD digest of a served zone version (a cache: any transfer server
    # can recompute it, so the first to compute it shares it with the rest).
    zone_digest = PREFIX + "zone:zonemd:{zone}:{serial}"
    pub_manifest = PREFIX + "pub:manifest"
    pub_held = PREFIX + "pub:held"
    pub_lock = PREFIX + "pub:lock"
    # "Publish now" requests: a queue of request ids, each request's payload,
    # and its answer (pending, taken, then the outcome).
    pub_queue = PREFIX + "pub:queue"
    pub_request = PREFIX + "pub:request:{id}"
    pub_result = PREFIX + "pub:result:{id}"
    # The programme's signing keys (current, announced next, retired): JSON.
    programme_keys = PREFIX + "keys"
    signer = PREFIX + "health:signer"
    pub_channel = PREFIX + "pub:events"
    pub_highwater = PREFIX + "pub:highwater"
    # Versions that have a full snapshot and zone file (compacted).
    pub_full = PREFIX + "pub:full"
    # Artifacts: path -> ArtifactRef JSON; blobs are lists of compressed chunks.
    art_index = PREFIX + "art:index"
    art_blob = PREFIX + "art:blob:{sha256}"
    art_upload = PREFIX + "art:upload:{sha256}:{token}"
    # Change signal: curation publishes here when the change feed grows.
    dirty_channel = PREFIX + "dirty:events"
    # Workers report here (host, key held or not) for /readyz.
    workers = PREFIX + "health:workers"
    appeal_seq = PREFIX + "seq:appeal"
    appeals = PREFIX + "appeals"
    appeal = PREFIX + "appeal:{id}"
    appeal_status = PREFIX + "ix:appeal:{status}"
    # Appeals: idempotency claims (same content, same form) -> appeal id.
    appeal_claim = PREFIX + "appeal-claim:{digest}"
    rate = PREFIX + "rate:{scope}:{who}"
    rate_set = PREFIX + "rate-set:{scope}:{who}"
    login_failures = PREFIX + "login:failures:{name}"
    session = PREFIX + "session:{sid}"
    user_sessions = PREFIX + "sessions-of:{name}"
    agencies = PREFIX + "agencies"


_KEY_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Sessions are stored under the SHA-256 (hex) of the id the browser holds.
_SESSION_ID = re.compile(r"[0-9a-f]{64}")


def key_part(value: object, what: str) -> str:
    """``value`` as the variable part of a key, or a :class:`ValidationError`.

    The last line of defence: callers validate names with their own rules
    first; this makes sure nothing else (a ``:``, upper case, a space) ever
    reaches a key name.
    """
    if not isinstance(value, str) or not _KEY_PART.fullmatch(value):
        raise ValidationError(f"{what} {str(value)[:80]!r} is not a valid name")
    return value


def _user_key(name: str) -> str:
    return K.user.format(name=key_part(name, "user name"))


def _isp_key(name: str) -> str:
    return K.isp.format(name=key_part(name, "ISP name"))


def entry_key(entry_id: int) -> str:
    return K.entries.format(bucket=entry_id // BUCKET_SIZE)


def _digest(index_key: str) -> bytes:
    return hashlib.blake2b(index_key.encode(), digest_size=9).digest()


def value_key(index_key: str) -> str:
    return K.value_index.format(bucket=int.from_bytes(_digest(index_key)[:4], "big") % INDEX_BUCKETS)


def url_host_of(index_key: str) -> str | None:
    """The host of a URL entry's index key (``u:scheme://host[:port]/...``)."""
    if not index_key.startswith("u:"):
        return None
    rest = index_key[2:].partition("://")[2]
    return rest.partition("/")[0].partition(":")[0] or None


def value_field(index_key: str) -> str:
    return base64.urlsafe_b64encode(_digest(index_key)).decode()


def record_key(raw: str) -> str:
    """The index key of a stored entry record, without parsing all of it."""
    d = json.loads(raw)
    return ("d:" if d["t"] == "d" else "u:") + str(d["v"])


def status_key(status: str) -> str:
    return K.status_index.format(status=status)


# The compare-and-set script behind Txn. Checks: [kind, key#, (field,) expected]
# where expected null means "must not exist". Ops: [command, key#, args...];

_TXN_LUA = r"""
local spec = cjson.decode(ARGV[1])
for i, c in ipairs(spec[1]) do
  local kind = c[1]
  local key = KEYS[c[2]]
  local actual, expected
  if kind == 'hget' then
    actual = redis.call('HGET', key, c[3]); expected = c[4]
  elseif kind == 'get' then
    actual = redis.call('GET', key); expected = c[3]
  elseif kind == 'zscore' then
    actual = redis.call('ZSCORE', key, c[3]); expected = c[4]
  else
    return redis.error_reply('BADCHECK ' .. tostring(kind))
  end
  if expected == cjson.null then
    if actual then return redis.error_reply('CONFLICT ' .. i) end
  elseif actual ~= expected then
    return redis.error_reply('CONFLICT ' .. i)
  end
end
for _, o in ipairs(spec[2]) do
  local args = {}
  for j = 3, #o do args[#args + 1] = o[j] end
  redis.call(o[1], KEYS[o[2]], unpack(args))
end
return 'OK'
"""

# Entry records of one bucket whose value contains ARGV[1] (plain substring).
_SEARCH_LUA = r"""
local out = {}
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local value = string.match(v, '"v":"([^"]*)"')
  if value and string.find(value, ARGV[1], 1, true) then out[#out + 1] = v end
end
return out
"""

# Raise a number, never lower it.
_RAISE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) return tonumber(ARGV[1]) end
return cur
"""

# Release a lock only if we still hold it.
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extend a lock only if we still hold it.
_EXTEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# Variadic commands that may be split into several calls, and their argument group size.
_SPLITTABLE = {"HSET": 2, "ZADD": 2, "SADD": 1, "RPUSH": 1, "ZREM": 1, "HDEL": 1, "SREM": 1}
_MAX_ARGS = 4000


@dataclass
class Txn:
    """Checks and writes to apply as one atomic step."""

    keys: list[str] = field(default_factory=list)
    checks: list[list[Any]] = field(default_factory=list)
    ops: list[list[Any]] = field(default_factory=list)
    dirty: bool = False
    _index: dict[str, int] = field(default_factory=dict)

    def k(self, key: str) -> int:
        i = self._index.get(key)
        if i is None:
            self.keys.append(key)
            i = self._index[key] = len(self.keys)
        return i

    def expect_hget(self, key: str, fld: str, value: str | None) -> None:
        self.checks.append(["hget", self.k(key), fld, value])

    def expect_get(self, key: str, value: str | None) -> None:
        self.checks.append(["get", self.k(key), value])

    def expect_zscore(self, key: str, member: str, value: str | None) -> None:
        self.checks.append(["zscore", self.k(key), member, value])

    def op(self, command: str, key: str, *args: object) -> None:
        values = [str(a) for a in args]
        step = _SPLITTABLE.get(command.upper())
        if step and len(values) > _MAX_ARGS:
            # Lua's unpack() takes at most ~8000 values: split variadic writes.
            size = _MAX_ARGS - _MAX_ARGS % step
            for i in range(0, len(values), size):
                self.ops.append([command, self.k(key), *values[i : i + size]])
            return
        self.ops.append([command, self.k(key), *values])

    def op_first(self, command: str, key: str, *args: object) -> None:
        """An op that must run before the others (one that can fail, such as XADD)."""
        self.ops.insert(0, [command, self.k(key), *(str(a) for a in args)])

    def mark_dirty(self, entry_id: int) -> None:
        if not self.dirty:
            # One signal per step, however many entries it changes: the
            # worker wakes on it and publishes after a quiet period.
            self.dirty = True
            self.ops.append(["PUBLISH", self.k(K.dirty_channel), "1"])
        self.op("RPUSH", K.dirty, entry_id)


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URLs.

    Sentinel form: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``
    with optional ``?sentinel_password=...&sentinel_username=...`` for the Sentinels themselves.
    """
    options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30}
    options.update(kwargs)
    if url.startswith(("redis+sentinel://", "sentinel://")):
        return _connect_sentinel(url, options)
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as e:
        raise ConfigError(f"BLOCKLIST_REDIS_URL is not a Redis URL: {e}") from e


def _connect_sentinel(url: str, options: dict[str, Any]) -> redis.Redis:
    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        # user:password (a Redis ACL user, as deploy/redis-users.acl sets up) or :password.
        user, sep, secret = cred.partition(":")
        if sep:
            username, password = unquote(user) or None, unquote(secret) or None
        else:
            password = unquote(user) or None
    hosts: list[tuple[str, int]] = []
    for hp in netloc.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"BLOCKLIST_REDIS_URL: sentinel address {hp!r} is not HOST:PORT")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError("BLOCKLIST_REDIS_URL: a sentinel URL needs the service name as its path")
    service = path[0]
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError("BLOCKLIST_REDIS_URL: a sentinel URL's path is /service or /service/db-number")
    db = int(path[1]) if len(path) > 1 else 0
    query = parse_qs(parts.query)
    sentinel_kwargs: dict[str, Any] = {}
    # Sentinels have their own credentials (requirepass or an ACL user on them).
    for key in ("sentinel_username", "sentinel_password"):
        if query.get(key):
            sentinel_kwargs[key.removeprefix("sentinel_")] = query[key][0]
    timeout = options.pop("socket_timeout", 5.0)
    sentinel = Sentinel(hosts, sentinel_kwargs={**sentinel_kwargs, "socket_timeout": timeout},  # type: ignore[no-untyped-call]
                        socket_timeout=timeout)
    options.pop("health_check_interval", None)
    # The client asks the Sentinels for the primary on every new connection,
    # so it follows a failover without being rebuilt.
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service, username=username, password=password, db=db, **options)
    return client


class Store:
    """Typed access to every key; callers never build key names."""

    def __init__(self, client: redis.Redis) -> None:
        # redis-py annotates every command for its sync and async clients at
        # once, so results are unions no caller can use; this class is the
        # typed boundary instead: each method states what it returns.
        self.r: Any = client
        self._txn_script = client.register_script(_TXN_LUA)
        self._unlock_script = client.register_script(_UNLOCK_LUA)
        self._extend_script = client.register_script(_EXTEND_LUA)
        self._search_script = client.register_script(_SEARCH_LUA)
        self._raise_script = client.register_script(_RAISE_LUA)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(connect(url))

    # ------------------------------------------------------------------ basics

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.exceptions.RedisError as e:
            raise StoreError(f"Redis is not reachable: {e}") from e

    def commit(self, txn: Txn) -> None:
        if not txn.ops:
            return
        spec = json.dumps([txn.checks, txn.ops], separators=(",", ":"))
        try:
            self._confirmed(self._txn_script, txn.keys, [spec])
        except redis.exceptions.ResponseError as e:
            if str(e).startswith("CONFLICT"):
                raise RetryableConflictError("the data changed while the action ran; try again") from e
            raise StoreError(f"Redis refused a write: {e}") from e
        except redis.exceptions.RedisError as e:
            raise StoreError(f"Redis is not reachable: {e}") from e

    #: Replicas that must confirm a committed step (WAIT) before it counts as
    #: done, and for how long to wait (seconds); Core sets them from Settings.
    wait_replicas = 0
    wait_timeout = 1.0

    def _confirmed(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script``; with ``wait_replicas``, WAIT for that many replicas on
        the same connection, else raise: with asynchronous replication a write
        no replica has is lost if the primary is replaced now."""
        if not self.wait_replicas:
            return script(keys=keys, args=args)
        pipe = self.r.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.wait_replicas, max(1, int(self.wait_timeout * 1000)))
        result, confirmed = pipe.execute(raise_on_error=False)
        for reply in (result, confirmed):
            if isinstance(reply, Exception):
                raise reply
        if int(confirmed) < self.wait_replicas:
            raise StoreError(f"Redis took the write but {confirmed} of {self.wait_replicas} replicas confirmed it "
                             f"within {self.wait_timeout:g} s (BLOCKLIST_REDIS_WAIT_REPLICAS): it may be lost in a "
                             "failover; check and try again")
        return result

    def transact(self, build: Callable[[Txn], None], *, retries: int = 20,
                 on_conflict: Callable[[], None] | None = None) -> None:
        """The one compare-and-set loop: ``build`` reads what it needs and fills
        a fresh :class:`Txn` (checks and writes); when a check fails because
        the data changed meanwhile, ``on_conflict`` may give up by raising,
        else the whole step is read and built again, ``retries`` times at
        most. Then :class:`ConflictError`: nothing was written."""
        for _ in range(retries + 1):
            txn = Txn()
            build(txn)
            try:
                self.commit(txn)
                return
            except RetryableConflictError:
                if on_conflict is not None:
                    on_conflict()
        raise ConflictError("too many concurrent changes; try again")

    def server_time(self) -> float:
        sec, usec = self.r.time()
        return float(sec) + float(usec) / 1e6

    def memory_used(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    # ------------------------------------------------------------------ entries

    def allocate_entry_ids(self, n: int = 1) -> int:
        """Reserve ``n`` consecutive ids; returns the first."""
        last = int(self.r.incrby(K.entry_seq, n))
        return last - n + 1

    def last_entry_id(self) -> int:
        return int(self.r.get(K.entry_seq) or 0)

    def entry_raw(self, entry_id: int) -> str | None:
        value = self.r.hget(entry_key(entry_id), str(entry_id))
        return None if value is None else str(value)

    def entries_raw(self, ids: Sequence[int]) -> list[str | None]:
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hget(entry_key(i), str(i))
        return [None if v is None else str(v) for v in pipe.execute()]

    def iter_bucket_raw(self) -> Iterator[str]:
        """Every entry record, bucket by bucket (for full rebuilds and exports)."""
        last = self.last_entry_id()
        pipe_size = 16
        buckets = list(range(0, last // BUCKET_SIZE + 1))
        for start in range(0, len(buckets), pipe_size):
            pipe = self.r.pipeline(transaction=False)
            for b in buckets[start : start + pipe_size]:
                pipe.hvals(K.entries.format(bucket=b))
            for values in pipe.execute():
                yield from values

    def lookups(self, keys: Sequence[str]) -> list[tuple[int | None, str | None]]:
        """For each index key: the id of the entry with that value (or None),
        and the raw index field, which a creating write must expect."""
        if not keys:
            return []
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hget(value_key(k), value_field(k))
        raws = [None if v is None else str(v) for v in pipe.execute()]
        candidates = sorted({int(i) for raw in raws if raw for i in raw.split(",")})
        records = dict(zip(candidates, self.entries_raw(candidates), strict=True))
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

    def put_entry(
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
                txn.op("SADD", K.url_host.format(host=host), member)
        txn.op("HSET", ek, member, new_json)
        if old_status is not None and old_status != new_status:
            txn.op("ZREM", status_key(old_status), member)
        txn.op("ZADD", status_key(new_status), repr(float(score)), member)
        if dirty:
            txn.mark_dirty(entry_id)

    def put_new_entries(self, txn: Txn, items: Sequence[tuple[int, str, str, str | None]], status: str,
                        score: float) -> None:
        """Create many entries (id, index key, JSON, index field as read) with
        fresh ids from :meth:`allocate_entry_ids`, in few large writes."""
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
                hosts.setdefault(K.url_host.format(host=host), []).append(member)
            zadd_args += (sc, member)
        for key, args in buckets.items():
            txn.op("HSET", key, *args)
        for key, args in index.items():
            txn.op("HSET", key, *args)
        for key, args in hosts.items():
            txn.op("SADD", key, *args)
        if zadd_args:
            txn.op("ZADD", status_key(status), *zadd_args)

    def url_host_ids(self, host: str) -> list[int]:
        """Ids of the URL entries on ``host``."""
        return sorted(int(i) for i in self.r.smembers(K.url_host.format(host=host)))

    def url_host_index_ready(self) -> bool:
        return bool(self.r.exists(K.url_host_ready))

    def add_url_hosts(self, pairs: Iterable[tuple[str, int]], done: bool = False) -> None:
        """Add (host, id) pairs to the URL host index; ``done`` marks it complete."""
        pipe = self.r.pipeline(transaction=False)
        for host, entry_id in pairs:
            pipe.sadd(K.url_host.format(host=host), str(entry_id))
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
        last_bucket = self.last_entry_id() // BUCKET_SIZE
        for start in range(0, last_bucket + 1, batch):
            pipe = self.r.pipeline(transaction=False)
            for b in range(start, min(start + batch, last_bucket + 1)):
                self._search_script(keys=[K.entries.format(bucket=b)], args=[needle], client=pipe)
            for found in pipe.execute():
                yield from (str(v) for v in found)

    def dirty_peek(self, limit: int = 1_000_000) -> list[int]:
        """The publisher's change feed: ids of entries changed since it last consumed it."""
        return [int(i) for i in self.r.lrange(K.dirty, 0, limit - 1)]

    def dirty_consume(self, n: int) -> None:
        """Drop the first ``n`` ids, once what they changed is published."""
        if n > 0:
            self.r.ltrim(K.dirty, n, -1)

    def dirty_count(self) -> int:
        return int(self.r.llen(K.dirty))

    def dirty_subscribe(self) -> redis.client.PubSub:
        """Signals that the change feed grew (see :meth:`Txn.mark_dirty`)."""
        ps: redis.client.PubSub = self.r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(K.dirty_channel)
        return ps

    # ------------------------------------------------------------------ allowlist

    def allowlist_raw(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(K.allowlist).items()}

    def allow_raw(self, domain: str) -> str | None:
        v = self.r.hget(K.allowlist, domain)
        return None if v is None else str(v)

    def put_allow(self, txn: Txn, domain: str, new_json: str | None, expect_json: str | None) -> None:
        txn.expect_hget(K.allowlist, domain, expect_json)
        if new_json is None:
            txn.op("HDEL", K.allowlist, domain)
        else:
            txn.op("HSET", K.allowlist, domain, new_json)

    # ------------------------------------------------------------------ users

    def user_names(self) -> list[str]:
        return sorted(str(n) for n in self.r.smembers(K.users))

    def user_raw(self, name: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(_user_key(name)).items()}

    def put_user(self, txn: Txn, name: str, fields: dict[str, str], *, create: bool = False,
                 expect_version: str | None = None) -> None:
        key = _user_key(name)
        if create:
            txn.expect_hget(key, "name", None)
            txn.op("SADD", K.users, name)
        elif expect_version is not None:
            txn.expect_hget(key, "version", expect_version)
        args: list[str] = []
        for k, v in fields.items():
            args += [k, v]
        if args:
            txn.op("HSET", key, *args)

    def user_touch(self, name: str, fields: dict[str, str]) -> None:
        """Bookkeeping that is not a change of the account (last login, failures)."""
        self.r.hset(_user_key(name), mapping=fields)

    def expect_user_field(self, txn: Txn, name: str, fld: str, value: str | None) -> None:
        """Make ``txn`` apply only while the account's ``fld`` is still ``value``."""
        txn.expect_hget(_user_key(name), fld, value)

    def agencies_raw(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(K.agencies).items()}

    def put_agency(self, txn: Txn, agency_id: str, new_json: str, expect_json: str | None) -> None:
        txn.expect_hget(K.agencies, agency_id, expect_json)
        txn.op("HSET", K.agencies, agency_id, new_json)

    def set_token(self, txn: Txn, name: str, token_hash: str, old_hash: str | None) -> None:
        if old_hash:
            txn.op("HDEL", K.tokens, old_hash)
        txn.op("HSET", K.tokens, token_hash, name)

    def token_owner(self, token_hash: str) -> str | None:
        v = self.r.hget(K.tokens, token_hash)
        return None if v is None else str(v)

    def login_failures(self, name: str) -> int:
        return int(self.r.get(K.login_failures.format(name=key_part(name, "user name"))) or 0)

    def add_login_failure(self, name: str, window: int) -> int:
        key = K.login_failures.format(name=key_part(name, "user name"))
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, window)
        n, _ = pipe.execute()
        return int(n)

    def clear_login_failures(self, name: str) -> None:
        self.r.delete(K.login_failures.format(name=key_part(name, "user name")))

    def rate_hit(self, scope: str, who: str, window: int) -> int:
        """Fixed-window counter: hits of ``who`` in the current window."""
        slot = int(time.time() // window)
        key = K.rate.format(scope=key_part(scope, "rate scope"), who=f"{key_part(who, 'rate subject')}:{slot}")
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, window * 2)
        n, _ = pipe.execute()
        return int(n)

    def rate_peek(self, scope: str, who: str, window: int) -> int:
        """Hits of ``who`` in the current window of :meth:`rate_hit`, without counting one."""
        slot = int(time.time() // window)
        key = K.rate.format(scope=key_part(scope, "rate scope"), who=f"{key_part(who, 'rate subject')}:{slot}")
        return int(self.r.get(key) or 0)

    def distinct_hit(self, scope: str, who: str, item: str, window: int) -> int:
        """Fixed-window count of the different ``item`` values ``who`` used (``item`` is stored as a digest)."""
        slot = int(time.time() // window)
        key = K.rate_set.format(scope=key_part(scope, "rate scope"), who=f"{key_part(who, 'rate subject')}:{slot}")
        pipe = self.r.pipeline()
        pipe.sadd(key, hashlib.sha256(item.encode()).hexdigest()[:16])
        pipe.expire(key, window * 2)
        pipe.scard(key)
        _, _, n = pipe.execute()
        return int(n)

    # ------------------------------------------------------------------ sessions

    def session_get(self, sid: str) -> str | None:
        if not _SESSION_ID.fullmatch(sid or ""):
            return None  # nothing is ever stored under anything but a digest
        v = self.r.get(K.session.format(sid=sid))
        return None if v is None else str(v)

    def session_put(self, sid: str, data: str, ttl: int, user: str | None) -> None:
        pipe = self.r.pipeline()
        if not _SESSION_ID.fullmatch(sid):
            raise ValidationError("a session is stored under the SHA-256 digest of its id")
        pipe.set(K.session.format(sid=sid), data, ex=ttl)
        if user:
            pipe.sadd(K.user_sessions.format(name=key_part(user, "user name")), sid)
            pipe.expire(K.user_sessions.format(name=user), 86400 * 2)
        pipe.execute()

    def session_delete(self, sid: str) -> None:
        if _SESSION_ID.fullmatch(sid or ""):
            self.r.delete(K.session.format(sid=sid))

    def sessions_end_for_user(self, name: str) -> None:
        key = K.user_sessions.format(name=key_part(name, "user name"))
        sids = self.r.smembers(key)
        pipe = self.r.pipeline()
        for sid in sids:
            pipe.delete(K.session.format(sid=sid))
        pipe.delete(key)
        pipe.execute()

    # ------------------------------------------------------------------ audit

    def audit_head(self) -> tuple[int, str | None]:
        head = self.r.hgetall(K.audit_head)
        if not head:
            return 0, None
        return int(head["seq"]), str(head["hash"])

    def audit_append(self, txn: Txn, seq: int, record_json: str, record_hash: str,
                     expect_hash: str | None) -> None:
        txn.expect_hget(K.audit_head, "hash", expect_hash)
        # XADD goes first: it is the only write that can fail, and a script
        # that fails half-way would leave the writes before it in place.
        txn.op_first("XADD", K.audit, f"{seq}-0", "r", record_json)
        txn.op("HSET", K.audit_head, "seq", str(seq), "hash", record_hash)

    def audit_range(self, start: str = "-", end: str = "+", count: int | None = None,
                    reverse: bool = False) -> list[tuple[str, str]]:
        if reverse:
            rows = self.r.xrevrange(K.audit, max=end, min=start, count=count)
        else:
            rows = self.r.xrange(K.audit, min=start, max=end, count=count)
        return [(str(i), str(f.get("r", ""))) for i, f in rows]

    def audit_length(self) -> int:
        return int(self.r.xlen(K.audit))

    # ------------------------------------------------------------------ settings

    def settings_raw(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(K.settings).items()}

    def put_setting(self, txn: Txn, name: str, value: str | None, expect: str | None) -> None:
        txn.expect_hget(K.settings, name, expect)
        if value is None:
            txn.op("HDEL", K.settings, name)
        else:
            txn.op("HSET", K.settings, name, value)

    def upgrade_key_names(self) -> None:
        """Move keys whose family an older release shared with chosen names.

        Idempotent and cheap (one EXISTS when there is nothing to do); runs
        when a process opens the store.
        """
        try:
            if self.r.exists(K.legacy_isp_tokens) and not self.r.exists(K.isp_tokens):
                self.r.renamenx(K.legacy_isp_tokens, K.isp_tokens)
        except redis.exceptions.ResponseError:
            pass  # another process moved it first
        except redis.exceptions.RedisError:
            pass  # unreachable: the first real read says so, in the caller's words

    def once(self, name: str) -> bool:
        """True the first time it is called with ``name`` for this store, ever."""
        return bool(self.r.hsetnx(K.once, name, str(int(time.time()))))

    # ------------------------------------------------------------------ ISPs

    def isp_names(self) -> list[str]:
        return sorted(str(n) for n in self.r.smembers(K.isps))

    def isp_raw(self, name: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.r.hgetall(_isp_key(name)).items()}

    def isps_raw(self, names: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(_isp_key(n))
        return [{str(k): str(v) for k, v in d.items()} for d in pipe.execute()]

    def put_isp(self, txn: Txn, name: str, fields: dict[str, str], *, create: bool = False,
                expect_version: str | None = None) -> None:
        key = _isp_key(name)
        if create:
            txn.expect_hget(key, "name", None)
            txn.op("SADD", K.isps, name)
        else:
            txn.expect_hget(key, "version", expect_version)
        args: list[str] = []
        for k, v in fields.items():
            args += [k, v]
        txn.op("HSET", key, *args)

    def put_isp_report(self, txn: Txn, name: str, fields: dict[str, str]) -> None:
        """What an ISP's resolvers were seen enforcing; only while the ISP is active."""
        key = K.isp.format(name=name)
        txn.expect_hget(key, "status", "active")
        txn.op("HSET", key, *[x for kv in fields.items() for x in kv])

    def set_isp_token(self, txn: Txn, name: str, token_hash: str, old_hash: str | None) -> None:
        if old_hash:
            txn.op("HDEL", K.isp_tokens, old_hash)
        txn.op("HSET", K.isp_tokens, token_hash, name)

    def isp_token_owner(self, token_hash: str) -> str | None:
        v = self.r.hget(K.isp_tokens, token_hash)
        return None if v is None else str(v)

    def isp_record_pull(self, name: str, fields: dict[str, str], keep: int = 100_000) -> None:
        """Bookkeeping of a feed pull or zone transfer (not an audited change)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(_isp_key(name), mapping=fields)
        pipe.xadd(K.pulls, {"isp": name, **fields}, maxlen=keep, approximate=True)
        pipe.execute()

    def set_xot_cert(self, pem: str) -> None:
        """The certificate the transfer server serves over TLS (public; ISPs pin it)."""
        self.r.set(K.xot_cert, pem)

    def xot_cert(self) -> str | None:
        v = self.r.get(K.xot_cert)
        return None if v is None else str(v)

    def recent_pulls(self, count: int = 100) -> list[dict[str, str]]:
        return [{"id": str(i), **{str(k): str(v) for k, v in f.items()}}
                for i, f in self.r.xrevrange(K.pulls, count=count)]

    # ------------------------------------------------------------------ publications

    def pub_latest_raw(self) -> str | None:
        v = self.r.get(K.pub_latest)
        return None if v is None else str(v)

    def zone_digest_get(self, zone: str, serial: int) -> bytes | None:
        v = self.r.get(K.zone_digest.format(zone=zone, serial=serial))
        try:
            return bytes.fromhex(str(v)) if v is not None else None
        except ValueError:
            return None

    def zone_digest_set(self, zone: str, serial: int, digest: bytes, ttl: int) -> None:
        self.r.set(K.zone_digest.format(zone=zone, serial=serial), digest.hex(), ex=ttl)

    def pub_version_raw(self, version: int) -> str | None:
        v = self.r.get(K.pub_version.format(version=version))
        return None if v is None else str(v)

    def pub_version_numbers(self, limit: int, before: int | None = None) -> list[int]:
        hi = f"({before}" if before else "+inf"
        return [int(n) for n in self.r.zrevrangebyscore(K.pub_versions, hi, "-inf", start=0, num=limit)]

    def pub_manifest(self) -> tuple[str, str, int] | None:
        body, sig, signed_at = self.r.hmget(K.pub_manifest, ["body", "sig", "signed_at"])
        if not body or not sig:
            return None
        return str(body), str(sig), int(signed_at or 0)

    def pub_held_raw(self) -> str | None:
        v = self.r.get(K.pub_held)
        return None if v is None else str(v)

    def pub_expect(self, txn: Txn, *, latest: str | object | None = ..., lock: str | None = None,
                   held: str | object | None = ...) -> None:
        """Compare-and-set conditions of a publication step."""
        if latest is not ...:
            txn.expect_get(K.pub_latest, latest)  # type: ignore[arg-type]
        if lock is not None:
            txn.expect_get(K.pub_lock, lock)
        if held is not ...:
            txn.expect_get(K.pub_held, held)  # type: ignore[arg-type]

    def pub_add_version(self, txn: Txn, version: int, meta_json: str, latest_json: str,
                        consumed: int) -> None:
        txn.op("SET", K.pub_version.format(version=version), meta_json)
        txn.op("ZADD", K.pub_versions, version, version)
        txn.op("SET", K.pub_latest, latest_json)
        txn.op("LTRIM", K.dirty, consumed, -1)
        txn.op("DEL", K.pub_held)
        txn.op("PUBLISH", K.pub_channel, version)

    def pub_update_version(self, txn: Txn, version: int, meta_json: str, latest_json: str) -> None:
        """Record a version's full files once compacted (its list never changes)."""
        txn.op("SET", K.pub_version.format(version=version), meta_json)
        txn.op("SET", K.pub_latest, latest_json)

    def pub_add_full(self, txn: Txn, version: int) -> None:
        txn.op("ZADD", K.pub_full, version, version)

    def pub_full_versions_older(self, keep: int) -> list[int]:
        """Versions with full files, except the newest ``keep``."""
        return [int(v) for v in self.r.zrange(K.pub_full, 0, -(keep + 1))]

    def pub_drop_full(self, version: int) -> None:
        self.r.zrem(K.pub_full, version)

    def pub_set_manifest(self, txn: Txn, body: str, sig: str, version: int, signed_at: int) -> None:
        txn.op("HSET", K.pub_manifest, "body", body, "sig", sig, "version", version, "signed_at", signed_at)

    def pub_set_held(self, txn: Txn, held_json: str | None) -> None:
        if held_json is None:
            txn.op("DEL", K.pub_held)
        else:
            txn.op("SET", K.pub_held, held_json)

    def pub_set_request(self, request_id: str, payload: str, pending: str, txn: Txn | None = None,
                        ttl: int = 3600, request_ttl: int = 3600) -> None:
        """Queue a "publish now" request; its answer starts as ``pending``. A
        request not taken within ``request_ttl`` seconds is dropped unserved."""
        own = txn is None
        t = Txn() if txn is None else txn
        t.op("SET", K.pub_request.format(id=request_id), payload, "EX", request_ttl)
        t.op("SET", K.pub_result.format(id=request_id), pending, "EX", ttl)
        t.op("RPUSH", K.pub_queue, request_id)
        if own:
            self.commit(t)

    def pub_set_result(self, request_id: str, payload: str, ttl: int = 3600) -> None:
        self.r.set(K.pub_result.format(id=request_id), payload, ex=ttl)

    def pub_result(self, request_id: str) -> str | None:
        v = self.r.get(K.pub_result.format(id=request_id))
        return None if v is None else str(v)

    def pub_take_request(self) -> tuple[str, str] | None:
        """The oldest queued request (id, payload), removed from the queue."""
        while True:
            request_id = self.r.lpop(K.pub_queue)
            if request_id is None:
                return None
            payload = self.r.getdel(K.pub_request.format(id=request_id))
            if payload is not None:
                return str(request_id), str(payload)

    def pub_withdraw_request(self, request_id: str) -> bool:
        """Take a request back if no publisher has taken it yet (True if it was still queued)."""
        removed = int(self.r.lrem(K.pub_queue, 1, request_id))
        self.r.delete(K.pub_request.format(id=request_id))
        return removed > 0

    # ------------------------------------------------------------------ programme keys

    def keys_raw(self) -> str | None:
        v = self.r.get(K.programme_keys)
        return None if v is None else str(v)

    def keys_put(self, txn: Txn, expect: str | None, value: str) -> None:
        """Compare-and-set of the key record (``expect`` None: none recorded yet)."""
        txn.expect_get(K.programme_keys, expect)
        txn.op("SET", K.programme_keys, value)

    def pub_subscribe(self) -> redis.client.PubSub:
        ps: redis.client.PubSub = self.r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(K.pub_channel)
        return ps

    def signer_report(self, key_id: str, ttl: int, problem: str | None = None) -> None:
        """The publisher says it holds the signing key, or why it cannot sign
        (read by /readyz on any host)."""
        report: dict[str, Any] = {"key_id": key_id, "at": int(time.time())}
        if problem:
            report["problem"] = problem
        self.r.set(K.signer, json.dumps(report), ex=ttl)

    def worker_report(self, name: str, fields: dict[str, Any], ttl: int) -> None:
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

    def signer_status(self) -> dict[str, Any] | None:
        v = self.r.get(K.signer)
        return None if v is None else dict(json.loads(v))

    def pub_lock_acquire(self, token: str, ttl_ms: int) -> bool:
        return self.lock_acquire(K.pub_lock, token, ttl_ms)

    def pub_lock_extend(self, token: str, ttl_ms: int) -> bool:
        return self.lock_extend(K.pub_lock, token, ttl_ms)

    def pub_lock_release(self, token: str) -> bool:
        return self.lock_release(K.pub_lock, token)

    def pub_lock_holder(self) -> str | None:
        return self.lock_holder(K.pub_lock)

    def pub_highwater(self) -> int:
        return int(self.r.get(K.pub_highwater) or 0)

    def pub_raise_highwater(self, version: int) -> int:
        return int(self._confirmed(self._raise_script, [K.pub_highwater], [version]))

    # ------------------------------------------------------------------ artifacts

    def art_blob_put(self, sha256: str, chunks: Sequence[bytes], ttl: int) -> None:
        """Upload a blob under its content address, expiring unless a commit keeps it.

        Chunks go to a private upload key first and are renamed in place, so
        a writer killed half-way never leaves a partial blob under the address."""
        key = K.art_blob.format(sha256=sha256)
        if self.r.exists(key):
            # Same bytes already stored (an earlier, unfinished attempt): reuse.
            if self.r.ttl(key) >= 0:
                self.r.expire(key, ttl)
            return
        upload = K.art_upload.format(sha256=sha256, token=secrets.token_hex(8))
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(upload)
        for chunk in chunks:
            pipe.rpush(upload, chunk)
        pipe.expire(upload, ttl)
        pipe.execute()
        pipe = self.r.pipeline(transaction=True)
        pipe.rename(upload, key)
        pipe.expire(key, ttl)
        pipe.execute()

    def art_blob_get(self, sha256: str) -> list[bytes]:
        return [bytes(c) for c in self.r.execute_command("LRANGE", K.art_blob.format(sha256=sha256), 0, -1,
                                                         **{NEVER_DECODE: True})]

    def art_index_put(self, txn: Txn, items: Sequence[tuple[str, str, str]]) -> None:
        """Make artifacts visible in a publication's atomic step: (path, sha256, ref JSON)."""
        if not items:
            return
        args: list[str] = []
        for path, sha, ref in items:
            args += [path, ref]
            txn.op("PERSIST", K.art_blob.format(sha256=sha))
        txn.op("HSET", K.art_index, *args)

    def art_index_get(self, path: str) -> str | None:
        v = self.r.hget(K.art_index, path)
        return None if v is None else str(v)

    def art_index_many(self, paths: Sequence[str]) -> list[str | None]:
        if not paths:
            return []
        return [None if v is None else str(v) for v in self.r.hmget(K.art_index, list(paths))]

    def art_remove(self, paths: Sequence[str], shas: Sequence[str]) -> None:
        pipe = self.r.pipeline(transaction=True)
        if paths:
            pipe.hdel(K.art_index, *paths)
        for sha in shas:
            pipe.delete(K.art_blob.format(sha256=sha))
        pipe.execute()

    def art_stats(self) -> dict[str, Any]:
        refs = [json.loads(v) for v in self.r.hvals(K.art_index)]
        stored = 0
        pipe = self.r.pipeline(transaction=False)
        for ref in refs:
            pipe.memory_usage(K.art_blob.format(sha256=ref["sha256"]))
        for n in pipe.execute():
            stored += int(n or 0)
        return {"artifacts": len(refs), "bytes": sum(int(r["size"]) for r in refs), "stored_bytes": stored}

    # ------------------------------------------------------------------ locks

    def lock_acquire(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(self.r.set(name, token, nx=True, px=ttl_ms))

    def lock_extend(self, name: str, token: str, ttl_ms: int) -> bool:
        return bool(self._extend_script(keys=[name], args=[token, ttl_ms]))

    def lock_release(self, name: str, token: str) -> bool:
        return bool(self._unlock_script(keys=[name], args=[token]))

    def lock_holder(self, name: str) -> str | None:
        v = self.r.get(name)
        return None if v is None else str(v)

    # ------------------------------------------------------------------ appeals
    # Appeals filed on the public stop page (see app.appeals): one JSON record
    # per appeal, a sorted set of all appeals and one per status, each scored
    # by filing time; claims make filing idempotent.

    def appeal_allocate_id(self) -> int:
        return int(str(self.r.incr(K.appeal_seq)))

    def appeal_raw(self, appeal_id: int) -> str | None:
        v = self.r.get(K.appeal.format(id=int(appeal_id)))
        return None if v is None else str(v)

    def appeals_raw(self, ids: Sequence[int]) -> list[str | None]:
        if not ids:
            return []
        values = self.r.mget([K.appeal.format(id=int(i)) for i in ids])
        return [None if v is None else str(v) for v in values]

    def put_appeal(self, txn: Txn, appeal_id: int, new_json: str, *, expect_json: str | None,
                   old_status: str | None, new_status: str, score: float) -> None:
        """Write one appeal with its indexes, if it still is ``expect_json``."""
        key = K.appeal.format(id=int(appeal_id))
        member = str(appeal_id)
        txn.expect_get(key, expect_json)
        txn.op("SET", key, new_json)
        if expect_json is None:
            txn.op("ZADD", K.appeals, repr(float(score)), member)
        if old_status is not None and old_status != new_status:
            txn.op("ZREM", K.appeal_status.format(status=old_status), member)
        txn.op("ZADD", K.appeal_status.format(status=new_status), repr(float(score)), member)

    def appeal_ids(self, status: str | None, offset: int, limit: int) -> list[int]:
        """Newest first; ``status=None`` lists every appeal."""
        key = K.appeals if status is None else K.appeal_status.format(status=status)
        return [int(str(i)) for i in self.r.zrevrange(key, offset, offset + limit - 1)]

    def appeal_counts(self, statuses: Iterable[str]) -> dict[str, int]:
        names = list(statuses)
        pipe = self.r.pipeline(transaction=False)
        for s in names:
            pipe.zcard(K.appeal_status.format(status=s))
        return dict(zip(names, (int(c) for c in pipe.execute()), strict=True))

    def appeal_claimed(self, digest: str) -> str | None:
        v = self.r.get(K.appeal_claim.format(digest=digest))
        return None if v is None else str(v)

    def appeal_claim(self, digest: str, value: str, ttl: int) -> str | None:
        """Claim ``digest`` for ``value``; None when the claim is new, else the
        value of the earlier claim."""
        key = K.appeal_claim.format(digest=digest)
        if self.r.set(key, value, nx=True, ex=ttl):
            return None
        v = self.r.get(key)
        return value if v is None else str(v)

    def appeal_release(self, digest: str, value: str) -> None:
        """Drop a claim that still holds ``value`` (a filing that did not commit)."""
        self._unlock_script(keys=[K.appeal_claim.format(digest=digest)], args=[value])

    # ------------------------------------------------------------------ sessions: updates
    # The web tier rewrites a live session on later requests; it must never
    # bring back one that was ended meanwhile (sign-out elsewhere, disabled
    # account, role change).

    def session_update(self, sid: str, data: str, ttl: int) -> bool:
        """Rewrite a session that still exists; False if it has ended."""
        return bool(self.r.set(K.session.format(sid=sid), data, ex=ttl, xx=True))

    # ------------------------------------------------------------------ metrics: ISP lag

    def pub_first_version_after(self, version: int) -> int | None:
        """The oldest published version above ``version`` (numbers can have gaps)."""
        found = self.r.zrangebyscore(K.pub_versions, f"({version}", "+inf", start=0, num=1)
        return int(found[0]) if found else None
