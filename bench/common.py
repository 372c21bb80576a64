"""What the benchmarks share: loading a big list the way the product stores it."""

from __future__ import annotations

import time

from app.core import Core
from app.domain import SYSTEM, Entry, EntryType, Status
from app.keys import Keyring
from app.signing import ensure_key
from app.store import Txn


def load_active(core: Core, values: list[str]) -> float:
    """Write active entries (approved by a second agency) as the product stores
    them, in atomic chunks; returns the seconds it took. Big lists are loaded
    this way because the curation path (import, then approval) would take
    minutes per million and is measured by bench/import.py."""
    t0 = time.perf_counter()
    now = int(time.time()) - 86400
    # In the list's order: each step then extends the store's published form
    # at its end (in random order every step rewrites most of its chunks;
    # the real bulk path, an import, writes pending entries, which it does not hold).
    values = sorted(values)
    first = core.store.entries.allocate_ids(len(values))
    for start in range(0, len(values), 5000):
        txn = Txn()
        items = []
        for offset, value in enumerate(values[start : start + 5000]):
            i = first + start + offset
            e = Entry(id=i, type=EntryType.DOMAIN, value=value, subdomains=True, category="csam",
                      status=Status.ACTIVE, reason="bench", evidence_ref="", submitted_by="alice",
                      agency="Agency A", submitted_at=now, updated_at=now, approved_by="bruno",
                      approved_agency="Agency B", approved_at=now, listed_since=now, verified_at=now,
                      verified_by="bruno")
            items.append((i, e.key, e.to_json(), None))
        core.store.entries.put_new(txn, items, "active", now)
        core.store.commit(txn)
    return time.perf_counter() - t0


def programme_key(core: Core) -> None:
    """Make and record the programme's signing key, as `blocklist keys init` does,
    and hand it to this process's publisher."""
    key_file = core.settings.signing_key_file
    Keyring(core.store, key_file).init(SYSTEM, "benchmark")
    core.publisher._key = ensure_key(key_file)
