"""Redis, the system of record: the only package that knows key names.

What must stay true:

* Every key name is in :mod:`app.store.keys` (the :class:`K` table and the
  functions that fill it in); the data classes take their keys from there.
* Every change that touches more than one key is one atomic step: callers
  collect checks and writes in a :class:`Txn` and :meth:`Store.transact`
  runs them in a single Lua script, which first verifies the checks
  (compare and set) and only then writes. A failed check writes nothing;
  the step is read and built again, :data:`RETRIES` times at most, and then
  fails with :class:`ConflictError`.
* The audit record of a change is written in the same step as the change.
* Entries live in hash buckets holding compact JSON, with a value index and
  one sorted set per status (see :mod:`app.store.entries`). Small hashes are
  stored as listpacks (see ``hash-max-ziplist-*`` in the shipped Redis
  configuration), which keeps an active entry under 500 bytes of memory.
* ``dirty`` is the change feed of the publisher: a list to which every
  change that can alter the published list appends the entry id, in the same
  step as the change. The publisher consumes it from the head.

:class:`Store` owns the connection and the atomic step; each kind of data
has its own small class, reached as an attribute:

=====================  ===========================================================
``store.entries``      entry records, value/status/URL-host indexes, search
``store.changes``      the publisher's change feed (``dirty``)
``store.allowlist``    the never-block allowlist
``store.users``        accounts, API token index, sign-in failures
``store.agencies``     agencies
``store.rates``        rate-limit counters
``store.sessions``     web sessions
``store.audit``        the audit stream and its head
``store.settings``     policy settings, once-only markers
``store.isps``         ISPs, feed token index, pulls, the XoT certificate
``store.pubs``         versions, manifest, held publication, requests, lock, zone digests
``store.programme_keys``  the programme's signing keys
``store.health``       signer and worker reports
``store.artifacts``    artifact blobs and their index
``store.appeals``      appeals, their indexes and filing claims
``store.published``    the list's published form, kept sorted by Redis
=====================  ===========================================================

Single-node Redis (or a Sentinel-managed primary) only: the scripts touch
many keys at once, which Redis Cluster would refuse.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import redis.exceptions

from app.errors import ConflictError, RetryableConflictError, StoreError
from app.store.allowlist import AllowlistData
from app.store.appeals import AppealData
from app.store.artifacts import ArtifactData
from app.store.audit import AuditData
from app.store.base import Scripts
from app.store.connect import connect
from app.store.entries import ChangeFeed, EntryData
from app.store.health import HealthData
from app.store.isps import IspData
from app.store.keys import (
    BUCKET_SIZE,
    INDEX_BUCKETS,
    PREFIX,
    K,
    entry_key,
    key_part,
    record_key,
    status_key,
    url_host_key,
    url_host_of,
    value_field,
    value_key,
)
from app.store.programme import ProgrammeKeyData
from app.store.publications import PublicationData
from app.store.published import PublishedForm
from app.store.rates import RateData
from app.store.sessions import SessionData
from app.store.settings import SettingsData
from app.store.txn import TXN_LUA, Txn
from app.store.users import AgencyData, UserData

#: How many times :meth:`Store.transact` reads and builds a step again after
#: a concurrent writer changed what it read, before it gives up.
RETRIES = 20
#: The one failure of a step that never got through.
CONFLICT_MESSAGE = "too many concurrent changes: nothing was changed; try again"

T = TypeVar("T")


class Store:
    """The connection, the atomic step, and every kind of data as an attribute."""

    def __init__(self, client: redis.Redis) -> None:
        self.r: Any = client
        self._txn_script = client.register_script(TXN_LUA)
        scripts = self._scripts = Scripts(client)
        self.entries = EntryData(client, scripts)
        self.changes = ChangeFeed(client, scripts)
        self.allowlist = AllowlistData(client, scripts)
        self.users = UserData(client, scripts)
        self.agencies = AgencyData(client, scripts)
        self.rates = RateData(client, scripts)
        self.sessions = SessionData(client, scripts)
        self.audit = AuditData(client, scripts)
        self.settings = SettingsData(client, scripts)
        self.isps = IspData(client, scripts)
        # A request queued on its own is one step too (through commit, so
        # whatever wraps commit sees it).
        self.pubs = PublicationData(client, scripts, lambda txn: self.commit(txn))  # noqa: PLW0108
        self.programme_keys = ProgrammeKeyData(client, scripts)
        self.health = HealthData(client, scripts)
        self.artifacts = ArtifactData(client, scripts)
        self.appeals = AppealData(client, scripts)
        self.published = PublishedForm(client, scripts)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(connect(url))

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.exceptions.RedisError as e:
            raise StoreError(f"Redis is not reachable: {e}") from e

    def commit(self, txn: Txn) -> None:
        """Run ``txn`` as one atomic step; :class:`RetryableConflictError` if a
        check failed (nothing was written). Callers use :meth:`transact`."""
        if txn.feed:
            self.published.stage(txn)
        if not txn.ops:
            return
        spec = json.dumps([txn.checks, txn.ops], separators=(",", ":"))
        try:
            self._scripts.confirmed(self._txn_script, txn.keys, [spec])
        except redis.exceptions.ResponseError as e:
            if str(e).startswith("CONFLICT"):
                raise RetryableConflictError("the data changed while the action ran; try again") from e
            raise StoreError(f"Redis refused a write: {e}") from e
        except redis.exceptions.RedisError as e:
            raise StoreError(f"Redis is not reachable: {e}") from e

    @property
    def wait_replicas(self) -> int:
        """Replicas that must confirm each committed step (``BLOCKLIST_REDIS_WAIT_REPLICAS``)."""
        return self._scripts.wait_replicas

    @wait_replicas.setter
    def wait_replicas(self, n: int) -> None:
        self._scripts.wait_replicas = n

    @property
    def wait_timeout(self) -> float:
        return self._scripts.wait_timeout

    @wait_timeout.setter
    def wait_timeout(self, seconds: float) -> None:
        self._scripts.wait_timeout = seconds

    def transact(self, build: Callable[[Txn], T], *, retries: int = RETRIES,
                 on_conflict: Callable[[], None] | None = None) -> T:
        """The one compare-and-set loop: ``build`` reads what it needs and fills
        a fresh :class:`Txn` (checks and writes); when a check fails because
        the data changed meanwhile, ``on_conflict`` may give up by raising,
        else the whole step is read and built again, ``retries`` times at
        most. Then :class:`ConflictError`: nothing was written. Returns what
        the ``build`` that got through returned."""
        for _ in range(retries + 1):
            txn = Txn()
            result = build(txn)
            try:
                self.commit(txn)
            except RetryableConflictError:
                if on_conflict is not None:
                    on_conflict()
                continue
            return result
        raise ConflictError(CONFLICT_MESSAGE)

    def memory_used(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    def upgrade_key_names(self) -> None:
        """Move keys whose family an older release shared with chosen names.

        Idempotent and cheap (one EXISTS when there is nothing to do); runs
        when a process opens the store.
        """
        try:
            self.isps.move_legacy_token_index()
        except redis.exceptions.ResponseError:
            pass  # another process moved it first
        except redis.exceptions.RedisError:
            pass  # unreachable: the first real read says so, in the caller's words
        try:
            self.published.drop_legacy()
        except redis.exceptions.RedisError:
            pass


__all__ = [
    "BUCKET_SIZE",
    "CONFLICT_MESSAGE",
    "INDEX_BUCKETS",
    "PREFIX",
    "RETRIES",
    "K",
    "Store",
    "Txn",
    "connect",
    "entry_key",
    "key_part",
    "record_key",
    "status_key",
    "url_host_key",
    "url_host_of",
    "value_field",
    "value_key",
]
