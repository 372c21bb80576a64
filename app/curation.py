"""Curation: every change to the list, with its rules, checks and audit record.

This is the one place where the web UI, the JSON API, the CLI and the
scheduled jobs change entries, the allowlist and the policy settings, so the
safety and four-eyes rules hold whichever door a change comes through.

What must stay true:

* A change and its audit record are written together or not at all
  (one :class:`~app.store.Txn`); :meth:`~app.store.Store.transact` reads and
  builds a change again when a concurrent writer got in first, and fails
  with :class:`ConflictError` (nothing written) when that keeps happening.
* Safety checks run at submission *and* again at approval, reinstatement and
  re-verification, because the allowlist may have grown in between.
* Refused import lines change nothing; accepted lines are committed in
  chunks of :data:`IMPORT_CHUNK`, each chunk one atomic step with one audit
  record naming every entry it created.
"""

from __future__ import annotations

import builtins
import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from app import audit
from app.clock import Clock, system_clock
from app.config import Settings
from app.domain import (
    ENTRY_ACTIONS,
    REASON_REQUIRED,
    TRANSITIONS,
    WITHDRAWN,
    Actor,
    AllowItem,
    Entry,
    EntryType,
    SafetyRules,
    Status,
    check_four_eyes,
    check_transition,
    check_withdraw,
    clean_text,
    display_domain,
    display_url,
    index_key,
    normalize,
    normalize_domain,
    parents,
    parse_bool,
    url_host,
)
from app.errors import (
    BlocklistError,
    ConflictError,
    NotFoundError,
    RefusedError,
    ValidationError,
)
from app.store import Store, Txn

IMPORT_CHUNK = 1000
DAY = 86400


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    """Rules admins may tune at run time; defaults come from the environment."""

    reverify_days: int
    require_other_agency: bool
    guard_remove_pct: float
    guard_add_pct: float
    guard_add_max: int
    guard_min_changes: int

    @classmethod
    def defaults(cls, settings: Settings) -> Policy:
        return cls(
            reverify_days=settings.reverify_days,
            require_other_agency=settings.require_other_agency,
            guard_remove_pct=settings.guard_remove_pct,
            guard_add_pct=settings.guard_add_pct,
            guard_add_max=settings.guard_add_max,
            guard_min_changes=settings.guard_min_changes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _parse_policy_value(name: str, value: Any) -> Any:
    types = {f.name: f.type for f in fields(Policy)}
    if name not in types:
        raise ValidationError(f"unknown setting {name!r}; known: {', '.join(sorted(types))}")
    kind = types[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            n = int(value)
            if n < (1 if name == "reverify_days" else 0):
                raise ValueError
            return n
        f = float(value)
        if not 0 <= f <= 1_000_000:
            raise ValueError
        return f
    except (TypeError, ValueError):
        raise ValidationError(f"{value!r} is not a valid value for {name} ({kind})") from None


# --------------------------------------------------------------------------- import parsing


@dataclass
class ImportRow:
    line: int
    raw: str
    value: str
    type: str | None = None
    subdomains: str | None = None
    category: str | None = None
    reason: str | None = None
    evidence_ref: str | None = None


_CSV_COLUMNS = {"value", "type", "subdomains", "category", "reason", "evidence_ref"}


def parse_import(lines: Iterable[str]) -> Iterator[ImportRow]:
    """CSV with a header naming ``value`` (and optionally type, subdomains,
    category, reason, evidence_ref), or one value a line. Blank lines and
    lines starting with ``#`` are skipped."""
    header: list[str] | None = None
    first = True
    for lineno, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if first:
            first = False
            cols = [c.strip().lower() for c in next(csv.reader([stripped]))]
            if "value" in cols:
                unknown = [c for c in cols if c not in _CSV_COLUMNS]
                if unknown:
                    raise ValidationError(
                        f"line {lineno}: unknown CSV column(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(_CSV_COLUMNS))}"
                    )
                header = cols
                continue
        if header is None:
            yield ImportRow(line=lineno, raw=stripped, value=stripped)
            continue
        try:
            cells = next(csv.reader([text]))
        except csv.Error as e:
            yield ImportRow(line=lineno, raw=stripped, value="", reason=f"!unparsable CSV: {e}")
            continue
        if len(cells) > len(header):
            yield ImportRow(line=lineno, raw=stripped, value="",
                            reason=f"!has {len(cells)} fields, the header names {len(header)}")
            continue
        row = dict(zip(header, (c.strip() for c in cells), strict=False))
        yield ImportRow(
            line=lineno, raw=stripped, value=row.get("value", ""), type=row.get("type") or None,
            subdomains=row.get("subdomains") or None, category=row.get("category") or None,
            reason=row.get("reason") or None, evidence_ref=row.get("evidence_ref") or None,
        )


@dataclass
class ImportReport:
    source: str
    accepted: int = 0
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "accepted": self.accepted,
            "refused": [{"line": n, "value": v, "reason": r} for n, v, r in self.refused],
            "dry_run": self.dry_run,
        }


# --------------------------------------------------------------------------- pages


@dataclass
class Page:
    entries: list[Entry]
    next_offset: int | None
    total: int | None
    partial: bool = False


# --------------------------------------------------------------------------- the service


class Curation:
    def __init__(self, store: Store, settings: Settings, clock: Clock = system_clock) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock

    # ------------------------------------------------------------------ policy

    def policy(self) -> Policy:
        p = Policy.defaults(self.settings)
        overrides = self.store.settings.all_raw()
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            try:
                changes[name] = _parse_policy_value(name, json.loads(value))
            except (ValidationError, ValueError):
                continue
        return replace(p, **changes) if changes else p

    def set_policy(self, actor: Actor, changes: dict[str, Any], reason: str = "") -> Policy:
        actor.require("settings.write")
        if not isinstance(changes, dict) or not changes:
            raise ValidationError("give at least one setting to change")
        parsed = {k: _parse_policy_value(k, v) for k, v in changes.items()}
        reason = clean_text(reason, "reason")

        def step(txn: Txn) -> None:
            current = self.policy()
            raw = self.store.settings.all_raw()
            head = audit.head(self.store)
            before = {k: getattr(current, k) for k in parsed}
            for k, v in parsed.items():
                self.store.settings.put(txn, k, json.dumps(v), raw.get(k))
            audit.add(txn, self.store, head, actor=actor, action="settings.update", target="settings",
                      before=before, after=parsed, reason=reason, ts=self.clock())

        self.store.transact(step)
        return self.policy()

    # ------------------------------------------------------------------ reads

    def get(self, entry_id: int) -> Entry:
        raw = self.store.entries.raw(int(entry_id))
        if raw is None:
            raise NotFoundError(f"there is no entry {entry_id}")
        return Entry.from_json(raw)

    def find(self, etype: str, value: str) -> Entry | None:
        try:
            norm = normalize(etype, value)
        except BlocklistError:
            return None
        entry_id = self.store.entries.id_for_key(index_key(etype, norm))
        if entry_id is None:
            return None
        raw = self.store.entries.raw(entry_id)
        return Entry.from_json(raw) if raw else None

    def get_many(self, ids: builtins.list[int]) -> builtins.list[Entry]:
        return [Entry.from_json(r) for r in self.store.entries.raw_many(ids) if r]

    def counts(self) -> dict[str, int]:
        return self.store.entries.count_by_status([s.value for s in Status])

    def list(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        category: str | None = None,
        agency: str | None = None,
        submitted_by: str | None = None,
        approvable_by: Actor | None = None,
        oldest_first: bool = False,
        offset: int = 0,
        limit: int = 50,
        scan_budget: int = 5000,
    ) -> Page:
        """A page of entries, newest first (oldest first on request). Filters
        other than status are applied while walking the status index, up to
        ``scan_budget`` records a page. ``approvable_by`` keeps only the entries
        the four-eyes rule lets that vetter approve."""
        require_other = self.policy().require_other_agency if approvable_by is not None else False
        if status is not None and status not in {s.value for s in Status}:
            raise ValidationError(f"unknown status {status!r}")
        limit = max(1, min(int(limit), 500))
        offset = max(0, int(offset))

        def keep(e: Entry) -> bool:
            return (
                (status is None or e.status == status)
                and (category is None or e.category == category)
                and (agency is None or e.agency.casefold() == agency.casefold())
                and (submitted_by is None or e.submitted_by == submitted_by)
                and (approvable_by is None or self.four_eyes_problem(e, approvable_by, require_other) is None)
            )

        if q:
            return self._search(q.strip(), keep, offset, limit)
        filtered = (category is not None or agency is not None or submitted_by is not None
                    or approvable_by is not None)
        window = limit if not filtered else 200
        if status is not None:
            end = self.store.entries.count_by_status([status])[status]

            def ids_at(pos: int) -> builtins.list[int]:
                return self.store.entries.ids_by_status(str(status), pos, window, newest_first=not oldest_first)
        elif oldest_first:
            end = self.store.entries.last_id()

            def ids_at(pos: int) -> builtins.list[int]:
                return list(range(pos + 1, min(end, pos + window) + 1))
        else:
            # Without a status, newest first is simply descending ids.
            end = last = self.store.entries.last_id()

            def ids_at(pos: int) -> builtins.list[int]:
                return list(range(last - pos, max(0, last - pos - window), -1))

        out: builtins.list[Entry] = []
        pos = offset
        scanned = 0
        while len(out) < limit and scanned < scan_budget and pos < end:
            ids = ids_at(pos)
            if not ids:
                break
            for raw in self.store.entries.raw_many(ids):
                pos += 1
                scanned += 1
                if raw is None:
                    continue
                e = Entry.from_json(raw)
                if keep(e):
                    out.append(e)
                    if len(out) >= limit:
                        break
        if oldest_first:
            # Redis orders equal scores (an import shares one second) by the
            # id's text, which puts 10 before 9; people expect numbers.
            out.sort(key=lambda e: (self._score(e), e.id))
        more = pos < end
        total = None
        if not filtered:
            total = end if status is not None else sum(self.counts().values())
        return Page(out, pos if more else None, total, partial=filtered and more and scanned >= scan_budget)

    @staticmethod
    def four_eyes_problem(entry: Entry, vetter: Actor, require_other_agency: bool) -> str | None:
        """Why ``vetter`` may not approve ``entry``, in the rule's own words (None: may)."""
        try:
            check_four_eyes(entry, vetter, require_other_agency)
        except BlocklistError as e:
            return e.message
        return None

    def _search(self, q: str, keep: Callable[[Entry], bool], offset: int, limit: int) -> Page:
        found: builtins.list[int] = []
        seen: set[int] = set()
        for etype in (EntryType.DOMAIN, EntryType.URL):
            try:
                norm = normalize(etype, q)
            except BlocklistError:
                continue
            e_id = self.store.entries.id_for_key(index_key(etype, norm))
            if e_id is not None and e_id not in seen:
                found.append(e_id)
                seen.add(e_id)
        # Values are stored as A-labels; a needle typed in Unicode ("bücher")
        # is looked for in the Unicode form of the names that have A-labels.
        needle = q.lower()
        unicode_needle = not needle.isascii()
        partial = False
        for raw in self.store.entries.search_values("xn--" if unicode_needle else needle):
            e = Entry.from_json(raw)
            if e.id in seen:
                continue
            shown = display_domain(e.value) if e.type is EntryType.DOMAIN else display_url(e.value)
            if needle not in e.value and needle not in shown.lower():
                continue
            found.append(e.id)
            seen.add(e.id)
            if len(found) >= offset + limit + 1:
                partial = True
                break
        out = [e for e in self.get_many(found) if keep(e)]
        page = out[offset : offset + limit]
        more = len(out) > offset + limit
        return Page(page, offset + limit if more else None, None, partial=partial)

    def urls_on_host(self, host: str, limit: int = 200) -> builtins.list[Entry]:
        """URL entries whose host is ``host`` (a normal domain), from the host
        index. The first call on a store made before the index existed fills
        it from one scan of the URL records."""
        if not self.store.entries.url_host_index_ready():
            pairs = []
            for raw in self.store.entries.search_values("://"):
                e = Entry.from_json(raw)
                if e.type is EntryType.URL:
                    pairs.append((url_host(e.value), e.id))
            self.store.entries.add_url_hosts(pairs, done=True)
        found = self.get_many(self.store.entries.url_host_ids(host)[:limit])
        return [e for e in found if e.type is EntryType.URL and url_host(e.value) == host]

    def expiring(self, within_days: int = 14, limit: int = 200) -> builtins.list[Entry]:
        p = self.policy()
        now = self.clock()
        lo = now - p.reverify_days * DAY
        hi = lo + within_days * DAY
        return self.get_many(self.store.entries.ids_by_status_score(Status.ACTIVE, lo, hi, limit))

    def count_expiring(self, within_days: int = 14) -> int:
        p = self.policy()
        lo = self.clock() - p.reverify_days * DAY
        return self.store.entries.status_count_between(Status.ACTIVE, lo, lo + within_days * DAY)

    def history(self, entry: Entry) -> builtins.list[audit.Record]:
        return audit.records(self.store, entry.history)

    # ------------------------------------------------------------------ safety

    def allowlist(self) -> builtins.list[AllowItem]:
        items = []
        for domain, raw in sorted(self.store.allowlist.all_raw().items()):
            d = json.loads(raw)
            items.append(AllowItem(domain=domain, subdomains=bool(d.get("subdomains")),
                                   reason=d.get("reason", ""), added_by=d.get("added_by", ""),
                                   added_at=int(d.get("added_at", 0))))
        return items

    def rules(self) -> SafetyRules:
        return SafetyRules(self.allowlist())

    # ------------------------------------------------------------------ writing one entry

    def _score(self, e: Entry) -> float:
        if e.status is Status.PENDING:
            return float(e.submitted_at)
        if e.status is Status.ACTIVE:
            return float(e.verified_at or e.updated_at)
        return float(e.updated_at)

    def _stage(
        self,
        txn: Txn,
        actor: Actor,
        action: str,
        new: Entry,
        old: Entry | None,
        old_raw: str | None,
        before: Any,
        after: Any,
        reason: str,
        index_expect: str | None = None,
    ) -> Entry:
        """Add the change of one entry, with its audit record, to ``txn``."""
        head = audit.head(self.store)
        seq = audit.add(txn, self.store, head, actor=actor, action=f"entry.{action}",
                        target=f"entry:{new.id}", before=before, after=after, reason=reason,
                        ts=self.clock())
        new.history = [*new.history, seq]
        dirty = new.status is Status.ACTIVE or (old is not None and old.status is Status.ACTIVE)
        self.store.entries.put(
            txn, new.id, new.to_json(), expect_json=old_raw, index_key=new.key, index_expect=index_expect,
            old_status=None if old is None else old.status, new_status=new.status,
            score=self._score(new), dirty=dirty,
        )
        return new

    def _category(self, category: Any) -> str:
        if category in (None, ""):
            return self.settings.categories[0]
        if category not in self.settings.categories:
            raise ValidationError(
                f"unknown category {category!r}; known: {', '.join(self.settings.categories)}"
            )
        return str(category)

    def _prepare(self, value: Any, etype: Any, subdomains: Any) -> tuple[EntryType, str, bool]:
        if etype in (None, ""):
            etype = EntryType.URL if isinstance(value, str) and "://" in value else EntryType.DOMAIN
        try:
            kind = EntryType(etype)
        except ValueError:
            raise ValidationError("type must be 'domain' or 'url'") from None
        if not isinstance(value, str):
            raise ValidationError("value must be a string")
        norm = normalize(kind, value)
        if kind is EntryType.URL:
            if subdomains not in (None, "", False) and parse_bool(subdomains, "subdomains"):
                raise ValidationError("subdomains applies to domain entries only, not to URLs")
            sub = False
        else:
            sub = True if subdomains in (None, "") else parse_bool(subdomains, "subdomains")
        return kind, norm, sub

    def submit(
        self,
        actor: Actor,
        value: Any,
        etype: Any = None,
        subdomains: Any = None,
        category: Any = None,
        reason: Any = "",
        evidence_ref: Any = "",
    ) -> Entry:
        actor.require("entry.submit")
        kind, norm, sub = self._prepare(value, etype, subdomains)
        cat = self._category(category)
        reason_text = clean_text(reason, "reason")
        ref = clean_text(evidence_ref, "evidence_ref", 200)
        self.rules().check(kind, norm)
        key = index_key(kind, norm)

        def step(txn: Txn) -> Entry:
            now = int(self.clock())
            existing_id, index_raw = self.store.entries.lookups([key])[0]
            if existing_id is not None:
                raw = self.store.entries.raw(existing_id)
                if raw is None:
                    raise ConflictError(f"{norm} is indexed but its entry is missing; run an audit check")
                old = Entry.from_json(raw)
                if old.status not in TRANSITIONS["resubmit"][0]:
                    raise ConflictError(f"{norm} is already listed as entry {old.id} ({old.status})")
                new = replace(
                    old, status=Status.PENDING, subdomains=sub, category=cat, reason=reason_text,
                    evidence_ref=ref, submitted_by=actor.name, agency=actor.agency, submitted_at=now,
                    updated_at=now, approved_by=None, approved_agency=None, approved_at=None,
                    status_reason=None,
                )
                return self._stage(txn, actor, "resubmit", new, old, raw, {"status": str(old.status)},
                                   {"status": "pending", "subdomains": sub, "category": cat}, reason_text)
            entry_id = self.store.entries.allocate_ids(1)
            new = Entry(
                id=entry_id, type=kind, value=norm, subdomains=sub, category=cat,
                status=Status.PENDING, reason=reason_text, evidence_ref=ref,
                submitted_by=actor.name, agency=actor.agency, submitted_at=now, updated_at=now,
            )
            return self._stage(txn, actor, "submit", new, None, None, None,
                               {"type": str(kind), "value": norm, "subdomains": sub,
                                "category": cat, "status": "pending"}, reason_text,
                               index_expect=index_raw)

        return self.store.transact(step)

    def act(self, actor: Actor, entry_id: Any, action: str, reason: Any = "") -> Entry:
        """One of :data:`app.domain.ENTRY_ACTIONS` on one entry."""
        if action not in ENTRY_ACTIONS:
            raise ValidationError(f"unknown action {action!r}")
        actor.require(f"entry.{action}")
        try:
            e_id = int(entry_id)
        except (TypeError, ValueError):
            raise ValidationError("the entry id must be a number") from None
        reason_text = clean_text(reason, "reason", required=action in REASON_REQUIRED)

        def step(txn: Txn) -> Entry:
            raw = self.store.entries.raw(e_id)
            if raw is None:
                raise NotFoundError(f"there is no entry {e_id}")
            old = Entry.from_json(raw)
            new, before, after = self._apply(actor, old, action, reason_text)
            return self._stage(txn, actor, action, new, old, raw, before, after, reason_text)

        return self.store.transact(step)

    def _apply(self, actor: Actor, old: Entry, action: str, reason: str) -> tuple[Entry, Any, Any]:
        target = check_transition(old, action)
        now = int(self.clock())
        before: dict[str, Any] = {"status": str(old.status)}
        after: dict[str, Any] = {"status": str(target)}
        changes: dict[str, Any] = {"status": target, "updated_at": now}
        if action == "approve":
            check_four_eyes(old, actor, self.policy().require_other_agency)
            self.rules().check(old.type, old.value)
            changes.update(approved_by=actor.name, approved_agency=actor.agency, approved_at=now,
                           listed_since=now, verified_at=now, verified_by=actor.name,
                           status_reason=None)
            after.update(approved_by=actor.name, approved_agency=actor.agency)
        elif action == "reverify":
            self.rules().check(old.type, old.value)
            changes.update(verified_at=now, verified_by=actor.name)
            before["verified_at"] = old.verified_at
            after["verified_at"] = now
        elif action == "reinstate":
            self.rules().check(old.type, old.value)
            changes.update(status_reason=None)
        elif action in ("reject", "suspend", "delist"):
            changes.update(status_reason=reason)
        elif action == "withdraw":
            check_withdraw(old, actor)
            changes.update(status_reason=f"{WITHDRAWN}: {reason}" if reason else WITHDRAWN)
            after["status_reason"] = changes["status_reason"]
        return replace(old, **changes), before, after

    def approve_many(self, actor: Actor, ids: builtins.list[Any], reason: Any = "") -> builtins.list[Entry]:
        """Approve several pending entries as one step: all of them, or none."""
        actor.require("entry.approve")
        if not isinstance(ids, list) or not ids or len(ids) > 5000:
            raise ValidationError("give a list of 1 to 5000 entry ids")
        try:
            e_ids = sorted({int(i) for i in ids})
        except (TypeError, ValueError):
            raise ValidationError("entry ids must be numbers") from None
        reason_text = clean_text(reason, "reason")
        rules = self.rules()
        policy = self.policy()

        def step(txn: Txn) -> builtins.list[Entry]:
            raws = self.store.entries.raw_many(e_ids)
            news: builtins.list[tuple[Entry, Entry, str]] = []
            problems: builtins.list[str] = []
            now = int(self.clock())
            for e_id, raw in zip(e_ids, raws, strict=True):
                if raw is None:
                    problems.append(f"there is no entry {e_id}")
                    continue
                old = Entry.from_json(raw)
                try:
                    check_transition(old, "approve")
                    check_four_eyes(old, actor, policy.require_other_agency)
                    rules.check(old.type, old.value)
                except BlocklistError as e:
                    problems.append(e.message)
                    continue
                new = replace(old, status=Status.ACTIVE, updated_at=now, approved_by=actor.name,
                              approved_agency=actor.agency, approved_at=now, listed_since=now,
                              verified_at=now, verified_by=actor.name, status_reason=None)
                news.append((old, new, raw))
            if problems:
                shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
                raise ConflictError(f"nothing was approved: {shown}")
            head = audit.head(self.store)
            seq = audit.add(txn, self.store, head, actor=actor, action="entry.approve",
                            target=",".join(f"entry:{o.id}" for o, _, _ in news[:50])
                            + ("" if len(news) <= 50 else f",+{len(news) - 50}"),
                            before={"status": "pending"},
                            after={"status": "active", "ids": [o.id for o, _, _ in news]},
                            reason=reason_text, ts=now)
            for old, new, raw in news:
                new.history = [*new.history, seq]
                self.store.entries.put(txn, new.id, new.to_json(), expect_json=raw, index_key=new.key,
                                       old_status=old.status, new_status=new.status,
                                       score=self._score(new), dirty=True)
            return [n for _, n, _ in news]

        return self.store.transact(step)

    # ------------------------------------------------------------------ expiry

    def expire_due(self, batch: int = 500) -> int:
        """Expire active entries not re-verified within the period. Idempotent."""
        from app.domain import SYSTEM

        policy = self.policy()

        def step(txn: Txn) -> int:
            """Expire one batch; returns how many (0: none left)."""
            now = int(self.clock())
            cutoff = now - policy.reverify_days * DAY
            ids = self.store.entries.ids_by_status_score(Status.ACTIVE, float("-inf"), cutoff, batch)
            if not ids:
                return 0
            raws = self.store.entries.raw_many(ids)
            items = []
            for raw in raws:
                if raw is None:
                    continue
                old = Entry.from_json(raw)
                if old.status is not Status.ACTIVE or (old.verified_at or 0) > cutoff:
                    continue
                new = replace(old, status=Status.EXPIRED, updated_at=now,
                              status_reason=f"not re-verified within {policy.reverify_days} days")
                items.append((old, new, raw))
            if not items:
                return 0
            head = audit.head(self.store)
            seq = audit.add(txn, self.store, head, actor=SYSTEM, action="entry.expire",
                            target=",".join(f"entry:{o.id}" for o, _, _ in items),
                            before={"status": "active"},
                            after={"status": "expired", "ids": [o.id for o, _, _ in items]},
                            reason=f"not re-verified within {policy.reverify_days} days", ts=now)
            for old, new, raw in items:
                new.history = [*new.history, seq]
                self.store.entries.put(txn, new.id, new.to_json(), expect_json=raw, index_key=new.key,
                                       old_status=old.status, new_status=new.status,
                                       score=self._score(new), dirty=True)
            return len(items)

        total = 0
        while n := self.store.transact(step):
            total += n
        return total

    # ------------------------------------------------------------------ import

    def import_rows(
        self,
        actor: Actor,
        rows: Iterable[ImportRow],
        *,
        source: str,
        default_subdomains: bool | None = None,
        default_category: str | None = None,
        default_reason: str = "",
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Validate every row; commit the good ones; report every refused one."""
        actor.require("entry.import")
        report = ImportReport(source=source, dry_run=dry_run)
        rules = self.rules()
        seen: dict[str, int] = {}
        chunk: builtins.list[tuple[ImportRow, Entry]] = []
        base_reason = clean_text(default_reason, "reason")

        def flush() -> None:
            if chunk:
                self._import_chunk(actor, chunk, source, report, dry_run)
                if progress:
                    progress(len(chunk))
                chunk.clear()

        for row in rows:
            try:
                if row.reason and row.reason.startswith("!"):
                    raise ValidationError(row.reason[1:])
                kind, norm, sub = self._prepare(
                    row.value, row.type,
                    row.subdomains if row.subdomains is not None else default_subdomains,
                )
                cat = self._category(row.category or default_category)
                rules.check(kind, norm)
                key = index_key(kind, norm)
                if key in seen:
                    raise ConflictError(f"{norm} repeats line {seen[key]}")
                seen[key] = row.line
                entry = Entry(
                    id=0, type=kind, value=norm, subdomains=sub, category=cat, status=Status.PENDING,
                    reason=clean_text(row.reason or base_reason, "reason"),
                    evidence_ref=clean_text(row.evidence_ref, "evidence_ref", 200),
                    submitted_by=actor.name, agency=actor.agency, submitted_at=0, updated_at=0,
                )
            except BlocklistError as e:
                report.refused.append((row.line, row.raw[:300], e.message))
                if progress:
                    progress(1)
                continue
            chunk.append((row, entry))
            if len(chunk) >= IMPORT_CHUNK:
                flush()
        flush()
        return report

    def _import_chunk(self, actor: Actor, chunk: builtins.list[tuple[ImportRow, Entry]], source: str,
                      report: ImportReport, dry_run: bool) -> None:
        ids: builtins.list[int] = []

        def step(txn: Txn) -> bool:
            """Fill ``txn`` with the chunk's new entries; False: nothing to write."""
            nonlocal ids
            keys = [e.key for _, e in chunk]
            looked = self.store.entries.lookups(keys)
            existing = [i for i, _ in looked]
            index_raw = {k: raw for k, (_, raw) in zip(keys, looked, strict=True)}
            taken = [i for i in existing if i is not None]
            statuses: dict[int, str] = {}
            if taken:
                for raw in self.store.entries.raw_many(taken):
                    if raw:
                        e = Entry.from_json(raw)
                        statuses[e.id] = str(e.status)
            fresh: builtins.list[tuple[ImportRow, Entry]] = []
            for (row, e), ex in zip(chunk, existing, strict=True):
                if ex is not None:
                    report.refused.append(
                        (row.line, row.raw[:300],
                         f"{e.value} is already listed as entry {ex} ({statuses.get(ex, 'unknown')})")
                    )
                else:
                    fresh.append((row, e))
            chunk[:] = fresh
            if not chunk:
                return False
            if dry_run:
                report.accepted += len(chunk)
                return False
            if len(ids) != len(chunk):
                first = self.store.entries.allocate_ids(len(chunk))
                ids = list(range(first, first + len(chunk)))
            now = int(self.clock())
            head = audit.head(self.store)
            lines = f"{chunk[0][0].line}-{chunk[-1][0].line}"
            seq = audit.add(
                txn, self.store, head, actor=actor, action="entry.import", target=f"import:{source}",
                after={"status": "pending", "lines": lines, "count": len(chunk),
                       "entries": [[i, e.value] for i, (_, e) in zip(ids, chunk, strict=True)]},
                reason=chunk[0][1].reason, ts=now,
            )
            items = []
            for i, (_, e) in zip(ids, chunk, strict=True):
                e.id, e.submitted_at, e.updated_at, e.history = i, now, now, [seq]
                items.append((i, e.key, e.to_json(), index_raw[e.key]))
            self.store.entries.put_new(txn, items, Status.PENDING, float(now))
            return True

        if self.store.transact(step):
            report.accepted += len(chunk)
            report.ids.extend(ids)

    # ------------------------------------------------------------------ allowlist

    def allowlist_effect(self, domain: Any, subdomains: Any = False) -> tuple[str, bool, builtins.list[Entry]]:
        """What adding ``domain`` to the allowlist would do, changing nothing:
        its normal form, whether it covers subdomains, and the active entries
        it would suspend."""
        if not isinstance(domain, str):
            raise ValidationError("domain must be a string")
        name = normalize_domain(domain)
        sub = parse_bool(subdomains, "subdomains") if subdomains not in (None, "") else False
        return name, sub, [e for e in self._conflicting(name, sub) if e.status is Status.ACTIVE]

    def allowlist_add(self, actor: Actor, domain: Any, subdomains: Any = False, reason: Any = "",
                      expect_suspended: builtins.list[int] | None = None) -> builtins.list[int]:
        """Add a never-block name. Active entries it conflicts with are suspended
        at once (their ids are returned), so a mistake can be stopped by one action.

        ``expect_suspended`` is the set of entries the person confirmed would be
        suspended; when it is given and the set has changed since, nothing is
        done and the person is asked again."""
        actor.require("allowlist.write")
        name, sub, conflicting = self.allowlist_effect(domain, subdomains)
        if expect_suspended is not None and sorted(expect_suspended) != sorted(e.id for e in conflicting):
            raise ConflictError(
                f"the entries that adding {name} would suspend changed since you confirmed; check them again"
            )
        reason_text = clean_text(reason, "reason")

        def step(txn: Txn) -> None:
            old_raw = self.store.allowlist.raw(name)
            item = {"subdomains": sub, "reason": reason_text, "added_by": actor.name,
                    "added_at": int(self.clock())}
            head = audit.head(self.store)
            self.store.allowlist.put(txn, name, json.dumps(item, separators=(",", ":")), old_raw)
            audit.add(txn, self.store, head, actor=actor,
                      action="allowlist.update" if old_raw else "allowlist.add",
                      target=f"allowlist:{name}", before=json.loads(old_raw) if old_raw else None,
                      after={"domain": name, "subdomains": sub}, reason=reason_text, ts=self.clock())

        self.store.transact(step)
        suspended = []
        for entry in self._conflicting(name, sub):
            if entry.status is Status.ACTIVE:
                try:
                    self.act(actor, entry.id, "suspend",
                             f"conflicts with never-block allowlist entry {name}")
                    suspended.append(entry.id)
                except BlocklistError:
                    continue
        return suspended

    def _conflicting(self, name: str, subdomains: bool) -> builtins.list[Entry]:
        keys = [index_key(EntryType.DOMAIN, name)] + [index_key(EntryType.DOMAIN, p) for p in parents(name)]
        keys += [index_key(EntryType.URL, f"{s}://{name}/") for s in ("http", "https")]
        ids = {i for i in self.store.entries.ids_for_keys(keys) if i is not None}
        if subdomains:
            for raw in self.store.entries.search_values("." + name):
                e = Entry.from_json(raw)
                if e.type is EntryType.DOMAIN and e.value.endswith("." + name):
                    ids.add(e.id)
        return self.get_many(sorted(ids))

    def allowlist_remove(self, actor: Actor, domain: Any, reason: Any = "") -> None:
        actor.require("allowlist.write")
        if not isinstance(domain, str):
            raise ValidationError("domain must be a string")
        name = normalize_domain(domain)
        reason_text = clean_text(reason, "reason")

        def step(txn: Txn) -> None:
            old_raw = self.store.allowlist.raw(name)
            if old_raw is None:
                raise NotFoundError(f"{name} is not on the allowlist")
            head = audit.head(self.store)
            self.store.allowlist.put(txn, name, None, old_raw)
            audit.add(txn, self.store, head, actor=actor, action="allowlist.remove",
                      target=f"allowlist:{name}", before=json.loads(old_raw), after=None,
                      reason=reason_text, ts=self.clock())

        self.store.transact(step)

    def check_value(self, value: Any, etype: Any = None, subdomains: Any = None) -> dict[str, Any]:
        """What submitting ``value`` would do, without changing anything (UI
        preview). ``subdomains`` is the choice the submission will carry (None:
        the default, which covers subdomains)."""
        try:
            kind, norm, sub = self._prepare(value, etype, subdomains)
            self.rules().check(kind, norm)
        except BlocklistError as e:
            return {"ok": False, "error": e.message}
        existing = self.find(str(kind), norm)
        probe = Entry(id=0, type=kind, value=norm, subdomains=sub, category="", status=Status.PENDING,
                      reason="", evidence_ref="", submitted_by="", agency="", submitted_at=0,
                      updated_at=0)
        return {"ok": True, "type": str(kind), "value": norm, "subdomains": sub, "covers": probe.covers(),
                "existing": None if existing is None else {"id": existing.id,
                                                            "status": str(existing.status)}}


__all__ = ["Curation", "ImportReport", "ImportRow", "Page", "Policy", "RefusedError", "parse_import"]
