"""The append-only, hash-chained audit log.

Each record carries the hash of the record before it; its own hash is
``sha256(prev_hash + "\\n" + canonical JSON of the record without "hash")``.
The first record's ``prev`` is 64 zeros. Records are numbered from 1 without
gaps and stored under the stream id ``<seq>-0``; the head (last seq and hash)
is kept beside the stream, so a removed last record is detected too.

:func:`verify` recomputes the chain and names every altered, removed,
inserted or reordered record. Records never hold secrets (passwords, tokens,
TSIG keys): only that they changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.domain import Actor, iso
from app.store import Store, Txn

GENESIS = "0" * 64


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + b"\n" + canonical(body)).hexdigest()


@dataclass
class Head:
    seq: int
    hash: str | None


def head(store: Store) -> Head:
    seq, h = store.audit.head()
    return Head(seq, h)


def add(
    txn: Txn,
    store: Store,
    current: Head,
    *,
    actor: Actor,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    reason: str = "",
    ts: float,
) -> int:
    """Add the audit record of a change to ``txn``; returns its sequence number.

    The record is only written if the head is still ``current`` when the
    transaction commits, which keeps the chain linear under concurrency.
    """
    seq = current.seq + 1
    prev = current.hash or GENESIS
    body = {
        "seq": seq,
        "ts": iso(ts),
        "actor": actor.name,
        "role": str(actor.role),
        "agency": actor.agency,
        "action": action,
        "target": target,
        "before": before,
        "after": after,
        "reason": reason,
        "prev": prev,
    }
    h = chain_hash(prev, body)
    record = dict(body, hash=h)
    store.audit.append(txn, seq, json.dumps(record, separators=(",", ":"), ensure_ascii=False), h,
                       current.hash)
    return seq


@dataclass
class Record:
    seq: int
    ts: str
    actor: str
    role: str
    agency: str
    action: str
    target: str
    before: Any
    after: Any
    reason: str
    prev: str
    hash: str
    stream_id: str = ""

    @classmethod
    def parse(cls, stream_id: str, text: str) -> Record:
        d = json.loads(text)
        return cls(
            seq=int(d["seq"]), ts=d["ts"], actor=d["actor"], role=d.get("role", ""),
            agency=d.get("agency", ""), action=d["action"], target=d["target"],
            before=d.get("before"), after=d.get("after"), reason=d.get("reason", ""),
            prev=d["prev"], hash=d["hash"], stream_id=stream_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "ts": self.ts, "actor": self.actor, "role": self.role,
            "agency": self.agency, "action": self.action, "target": self.target,
            "before": self.before, "after": self.after, "reason": self.reason,
            "prev": self.prev, "hash": self.hash,
        }


def get(store: Store, seq: int) -> Record | None:
    rows = store.audit.range(f"{seq}-0", f"{seq}-0", count=1)
    if not rows:
        return None
    try:
        return Record.parse(*rows[0])
    except (ValueError, KeyError):
        return None


def records(store: Store, seqs: list[int]) -> list[Record]:
    out = []
    for s in seqs:
        rec = get(store, s)
        if rec is not None:
            out.append(rec)
    return out


def iterate(store: Store, batch: int = 2000) -> Iterator[tuple[str, str]]:
    start = "-"
    while True:
        rows = store.audit.range(start, "+", count=batch)
        if not rows:
            return
        yield from rows
        last = rows[-1][0]
        ms, _, sq = last.partition("-")
        start = f"{ms}-{int(sq) + 1}"


def search(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: str | None = None,
    until: str | None = None,
    before_seq: int | None = None,
    limit: int = 50,
    scan_limit: int = 20000,
) -> tuple[list[Record], int | None]:
    """Newest first, filtered; returns the page and the seq to continue from.
    ``since`` and ``until`` are days (``YYYY-MM-DD``, UTC), both included."""
    end = f"{before_seq - 1}-0" if before_seq else "+"
    out: list[Record] = []
    scanned = 0
    while len(out) < limit and scanned < scan_limit:
        rows = store.audit.range("-", end, count=500, reverse=True)
        if not rows:
            return out, None
        for sid, text in rows:
            scanned += 1
            try:
                rec = Record.parse(sid, text)
            except (ValueError, KeyError):
                continue
            if actor and rec.actor != actor:
                continue
            if action and not rec.action.startswith(action):
                continue
            if target and not _target_matches(rec.target, target):
                continue
            if (since and rec.ts[:10] < since) or (until and rec.ts[:10] > until):
                continue
            out.append(rec)
            if len(out) >= limit:
                return out, rec.seq
        last = rows[-1][0]
        ms = int(last.partition("-")[0])
        if ms <= 1:
            return out, None
        end = f"{ms - 1}-0"
    return out, (out[-1].seq if out else None)


def append(store: Store, *, actor: Actor, action: str, target: str, after: Any = None, reason: str = "",
           ts: float) -> int:
    """Write one audit record that goes with no other change (e.g. that
    someone exported part of the log); returns its sequence number."""

    def step(txn: Txn) -> int:
        return add(txn, store, head(store), actor=actor, action=action, target=target, after=after,
                   reason=reason, ts=ts)

    return store.transact(step)


def _target_matches(rec_target: str, wanted: str) -> bool:
    return rec_target == wanted or rec_target.startswith(wanted + ":") or wanted in rec_target.split(",")


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    head_seq: int
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} records, head {self.head_seq}"
        return f"audit chain BROKEN: {len(self.problems)} problem(s) in {self.checked} records"


def verify(store: Store, max_problems: int = 100) -> VerifyResult:
    """Recompute the whole chain; report every record that does not fit."""
    problems: list[str] = []
    expected_seq = 1
    prev = GENESIS
    checked = 0
    last_seq = 0
    last_hash: str | None = None

    def problem(text: str) -> None:
        if len(problems) < max_problems:
            problems.append(text)

    for stream_id, text in iterate(store):
        checked += 1
        try:
            d = json.loads(text)
            stored_hash = d.pop("hash")
            seq = int(d["seq"])
            rec_prev = d["prev"]
        except (ValueError, KeyError, TypeError):
            problem(f"record at stream id {stream_id} is unreadable (altered)")
            expected_seq += 1
            continue
        if stream_id != f"{seq}-0":
            problem(f"record {seq} is stored at stream id {stream_id} (moved or reordered)")
        if seq < expected_seq:
            problem(f"record {seq} comes after record {expected_seq - 1} (reordered or duplicated)")
        elif seq > expected_seq:
            missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}-{seq - 1}"
            problem(f"record(s) {missing} missing before record {seq} (removed)")
        if chain_hash(rec_prev, d) != stored_hash:
            problem(f"record {seq} does not match its hash (altered)")
        if rec_prev != prev:
            problem(f"record {seq} does not follow the record before it (chain broken: removed, "
                    "inserted or reordered records)")
        prev = stored_hash
        last_seq, last_hash = seq, stored_hash
        expected_seq = seq + 1
    head_seq, head_hash = store.audit.head()
    if head_seq != last_seq or (head_hash or None) != (last_hash or None):
        if head_seq > last_seq:
            problem(f"record(s) {last_seq + 1}-{head_seq} missing at the end (removed)")
        else:
            problem(f"the head says record {head_seq} is the last, but the log ends at {last_seq}")
    return VerifyResult(ok=not problems, checked=checked, head_seq=head_seq, problems=problems)
