"""Appeals: a domain owner or user contests a block; vetters decide.

An appeal is filed on the public stop page (no account), names a domain,
gives a contact and a statement, and lands in the curators' appeals queue.
A vetter may suspend the entry that covers the domain while the appeal is
reviewed, then upholds the block (the entry goes back to active) or grants
the appeal (the entry is delisted). An appeal that concerns no entry, or is
abuse, is dismissed.

What must stay true:

* Every step is written to the audit log: the filing (as the system, since
  the appellant has no account), each review and decision, and, through
  :class:`~app.curation.Curation`, every change to the entry it causes.
  Audit records never hold the appellant's contact or statement: those are
  visible to curators in the appeal itself, not to everyone who reads the
  audit log.
* Entry changes go through :meth:`Curation.act`, so the same permissions,
  lifecycle and safety rules apply as for any other change of an entry.
* Filing is idempotent: the same appeal sent twice (double click, resend)
  is one appeal; the caller may add its own key (one per form) as well.
* Filing never tells the appellant whether the name is on the list: the
  answer is the same whether an entry matches or not.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app import audit
from app.clock import Clock, system_clock
from app.curation import Curation
from app.domain import (
    SYSTEM,
    TRANSITIONS,
    Actor,
    Entry,
    EntryType,
    Status,
    clean_text,
    normalize_domain,
    normalize_url,
    parents,
)
from app.errors import ConflictError, NotFoundError, ValidationError
from app.store import Store, Txn

MAX_CONTACT = 200
MAX_STATEMENT = 5000
MIN_STATEMENT = 10
#: How long the same appeal (same domain, contact and statement) counts as a repeat.
REPEAT_WINDOW = 7 * 86400


class AppealStatus(enum.StrEnum):
    OPEN = "open"  # filed, not yet looked at
    REVIEWING = "reviewing"  # the entry is suspended while a vetter reviews the appeal
    UPHELD = "upheld"  # the block stands; the entry is active again
    GRANTED = "granted"  # the appeal succeeded; the entry is delisted
    DISMISSED = "dismissed"  # no entry concerned, or not a genuine appeal


DECIDED = frozenset({AppealStatus.UPHELD, AppealStatus.GRANTED, AppealStatus.DISMISSED})

# decision -> (states it may start from, state it leads to)
APPEAL_STEPS: dict[str, tuple[frozenset[AppealStatus], AppealStatus]] = {
    "review": (frozenset({AppealStatus.OPEN}), AppealStatus.REVIEWING),
    "uphold": (frozenset({AppealStatus.OPEN, AppealStatus.REVIEWING}), AppealStatus.UPHELD),
    "grant": (frozenset({AppealStatus.OPEN, AppealStatus.REVIEWING}), AppealStatus.GRANTED),
    "dismiss": (frozenset({AppealStatus.OPEN}), AppealStatus.DISMISSED),
}


@dataclass
class Appeal:
    id: int
    domain: str
    entry_id: int | None
    contact: str
    statement: str
    status: AppealStatus
    filed_at: int
    updated_at: int
    decided_by: str | None = None
    decision_reason: str | None = None
    history: list[int] = field(default_factory=list)

    @property
    def reference(self) -> str:
        """What the appellant is given to quote."""
        return f"A-{self.id:06d}"

    def to_json(self) -> str:
        d = asdict(self)
        d["status"] = self.status.value
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Appeal:
        d = json.loads(text)
        d["status"] = AppealStatus(d["status"])
        return cls(**d)


def parse_appeal_domain(raw: Any) -> str:
    """The domain an appeal is about: a host name, or the host of a URL."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError("give the address (domain) that was blocked")
    text = raw.strip()
    if "://" in text:
        return normalize_url(text).host
    return normalize_domain(text.rstrip("/"))


def fingerprint(domain: str, contact: str, statement: str) -> str:
    """Identity of an appeal's content: case and white space do not make a new appeal."""
    norm = "\n".join([domain, contact.casefold(), " ".join(statement.split()).casefold()])
    return "content:" + hashlib.sha256(norm.encode()).hexdigest()


class Appeals:
    def __init__(self, store: Store, curation: Curation, clock: Clock = system_clock) -> None:
        self.store = store
        self.curation = curation
        self.clock = clock

    # ------------------------------------------------------------------ reads

    def get(self, appeal_id: Any) -> Appeal:
        try:
            n = int(appeal_id)
        except (TypeError, ValueError):
            raise ValidationError("the appeal number must be a number") from None
        raw = self.store.appeals.raw(n)
        if raw is None:
            raise NotFoundError(f"there is no appeal {n}")
        return Appeal.from_json(raw)

    def list(self, status: str | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Appeal], int]:
        """A page of appeals, newest first, and how many there are in that state."""
        if status is not None and status not in {s.value for s in AppealStatus}:
            raise ValidationError(f"unknown appeal status {status!r}")
        limit = max(1, min(int(limit), 200))
        ids = self.store.appeals.ids(status, max(0, int(offset)), limit)
        appeals = [Appeal.from_json(r) for r in self.store.appeals.raw_many(ids) if r]
        counts = self.counts()
        total = counts[status] if status else sum(counts.values())
        return appeals, total

    def counts(self) -> dict[str, int]:
        return self.store.appeals.counts([s.value for s in AppealStatus])

    def covering_entry(self, domain: str) -> Entry | None:
        """The entry that blocks ``domain``: the name itself, or the nearest parent
        listed with its subdomains. Entries that are not (or no longer) in
        force are returned only when nothing in force covers the name."""
        candidates: list[Entry] = []
        exact = self.curation.find(EntryType.DOMAIN, domain)
        if exact is not None:
            candidates.append(exact)
        for p in parents(domain):
            e = self.curation.find(EntryType.DOMAIN, p)
            if e is not None and e.subdomains:
                candidates.append(e)
        for e in candidates:
            if e.status in (Status.ACTIVE, Status.SUSPENDED):
                return e
        return candidates[0] if candidates else None

    def entry_of(self, appeal: Appeal) -> Entry | None:
        """The entry an appeal concerns: the one matched at filing, or a match now."""
        if appeal.entry_id is not None:
            try:
                return self.curation.get(appeal.entry_id)
            except NotFoundError:
                return None
        return self.covering_entry(appeal.domain)

    # ------------------------------------------------------------------ filing

    def file(self, domain: Any, contact: Any, statement: Any, *, once: str | None = None) -> tuple[Appeal, bool]:
        """File an appeal; returns it and whether it is new (False: a repeat of
        an appeal already filed, which is returned instead).

        ``once`` is the caller's idempotency key (for example one per form):
        a key that was already used for another appeal is refused.
        """
        name = parse_appeal_domain(domain)
        contact_text = clean_text(contact, "the contact", MAX_CONTACT, required=True)
        if "\n" in contact_text:
            raise ValidationError("the contact is one line (an e-mail address or a telephone number)")
        statement_text = clean_text(statement, "the statement", MAX_STATEMENT, required=True)
        if len(statement_text) < MIN_STATEMENT:
            raise ValidationError(
                f"the statement needs at least {MIN_STATEMENT} characters: say why the block is wrong"
            )
        content = fingerprint(name, contact_text, statement_text)
        earlier = self.store.appeals.claimed(content)
        if earlier is not None:
            return self.get(earlier), False
        form_key = None if once is None else "form:" + hashlib.sha256(once.encode()).hexdigest()
        if form_key is not None and self.store.appeals.claimed(form_key) is not None:
            raise ConflictError("this form was already sent; reload the page to file another appeal")
        entry = self.covering_entry(name)
        appeal_id = self.store.appeals.allocate_id()
        value = str(appeal_id)
        earlier = self.store.appeals.claim(content, value, REPEAT_WINDOW)
        if earlier is not None:
            return self.get(earlier), False
        if form_key is not None and self.store.appeals.claim(form_key, value, 2 * 86400) is not None:
            self.store.appeals.release(content, value)
            raise ConflictError("this form was already sent; reload the page to file another appeal")
        now = int(self.clock())
        new = Appeal(id=appeal_id, domain=name, entry_id=entry.id if entry else None,
                     contact=contact_text, statement=statement_text, status=AppealStatus.OPEN,
                     filed_at=now, updated_at=now)

        def step(txn: Txn) -> Appeal:
            return self._stage(txn, SYSTEM, "appeal.file", new, None, None,
                               after={"domain": name, "entry": new.entry_id},
                               reason="filed on the public stop page")

        def taken() -> None:
            # Only the audit head moved (a change elsewhere): the id is this filing's own.
            if self.store.appeals.raw(new.id) is not None:
                raise ConflictError(f"appeal number {new.id} was taken meanwhile; file the appeal again")

        try:
            appeal = self.store.transact(step, on_conflict=taken)
        except BaseException:
            self.store.appeals.release(content, value)
            if form_key is not None:
                self.store.appeals.release(form_key, value)
            raise
        return appeal, True

    # ------------------------------------------------------------------ decisions

    def review(self, actor: Actor, appeal_id: Any, reason: Any) -> Appeal:
        """Suspend the entry while the appeal is reviewed (out of the list until decided)."""
        return self._decide(actor, appeal_id, "review", reason)

    def uphold(self, actor: Actor, appeal_id: Any, reason: Any) -> Appeal:
        """The block stands: a suspended entry is reinstated."""
        return self._decide(actor, appeal_id, "uphold", reason)

    def grant(self, actor: Actor, appeal_id: Any, reason: Any) -> Appeal:
        """The appeal succeeds: the entry is delisted."""
        return self._decide(actor, appeal_id, "grant", reason)

    def dismiss(self, actor: Actor, appeal_id: Any, reason: Any) -> Appeal:
        """Close an appeal that concerns no entry or is not genuine; the entry is untouched."""
        return self._decide(actor, appeal_id, "dismiss", reason)

    def decide(self, actor: Actor, appeal_id: Any, decision: str, reason: Any) -> Appeal:
        if decision not in APPEAL_STEPS:
            raise ValidationError(f"unknown decision {decision!r}; use one of {', '.join(APPEAL_STEPS)}")
        return self._decide(actor, appeal_id, decision, reason)

    def _decide(self, actor: Actor, appeal_id: Any, decision: str, reason: Any) -> Appeal:
        actor.require("appeal.decide")
        reason_text = clean_text(reason, "reason", required=True)
        appeal = self.get(appeal_id)
        allowed, target = APPEAL_STEPS[decision]
        if appeal.status not in allowed:
            states = " or ".join(sorted(allowed))
            raise ConflictError(f"appeal {appeal.reference} is {appeal.status}; to {decision} it must be {states}")
        entry = None if decision == "dismiss" else self.entry_of(appeal)
        if decision != "dismiss" and entry is None:
            raise ConflictError(
                f"no entry on the list covers {appeal.domain}; dismiss the appeal instead"
            )
        # The entry changes first: it is the step that rules can refuse, and a
        # refusal must leave the appeal as it was.
        entry_after = entry
        if entry is not None:
            entry_after = self._change_entry(actor, appeal, entry, decision, reason_text)

        def step(txn: Txn) -> Appeal:
            current_raw = self.store.appeals.raw(appeal.id)
            if current_raw is None:
                raise NotFoundError(f"there is no appeal {appeal.id}")
            current = Appeal.from_json(current_raw)
            if current.status not in allowed:
                raise ConflictError(
                    f"appeal {appeal.reference} was changed meanwhile (now {current.status}); reload and check"
                )
            now = int(self.clock())
            new = replace(current, status=target, updated_at=now,
                          entry_id=entry.id if entry is not None else current.entry_id)
            if target in DECIDED:
                new.decided_by, new.decision_reason = actor.name, reason_text
            after: dict[str, Any] = {"status": str(target)}
            if entry_after is not None:
                after["entry"] = entry_after.id
                after["entry_status"] = str(entry_after.status)
            return self._stage(txn, actor, f"appeal.{decision}", new, current, current_raw,
                               after=after, reason=reason_text, before={"status": str(current.status)})

        # Every try reads the appeal again: a change meanwhile to a status
        # this decision does not apply to is refused above.
        return self.store.transact(step)

    def _change_entry(self, actor: Actor, appeal: Appeal, entry: Entry, decision: str, reason: str) -> Entry:
        why = f"appeal {appeal.reference}: {reason}"
        if decision == "review":
            if entry.status is Status.SUSPENDED:
                return entry
            if entry.status is not Status.ACTIVE:
                raise ConflictError(
                    f"entry {entry.id} is {entry.status}; only an active entry can be suspended for review"
                )
            return self.curation.act(actor, entry.id, "suspend", why)
        if decision == "uphold":
            if entry.status is Status.SUSPENDED:
                return self.curation.act(actor, entry.id, "reinstate", why)
            if entry.status is Status.ACTIVE:
                return entry
            raise ConflictError(f"entry {entry.id} is {entry.status}; there is no block left to uphold")
        # grant
        if entry.status is Status.DELISTED:
            return entry
        if entry.status not in TRANSITIONS["delist"][0]:
            raise ConflictError(f"entry {entry.id} is {entry.status}; it cannot be delisted")
        return self.curation.act(actor, entry.id, "delist", why)

    # ------------------------------------------------------------------ writing

    def _stage(self, txn: Txn, actor: Actor, action: str, new: Appeal, old: Appeal | None, old_raw: str | None,
               *, after: Any, reason: str, before: Any = None) -> Appeal:
        """Add the change of one appeal, with its audit record, to ``txn``; returns the record."""
        head = audit.head(self.store)
        seq = audit.add(txn, self.store, head, actor=actor, action=action, target=f"appeal:{new.id}",
                        before=before, after=after, reason=reason, ts=self.clock())
        record = replace(new, history=[*new.history, seq])
        self.store.appeals.put(txn, new.id, record.to_json(), expect_json=old_raw,
                               old_status=None if old is None else old.status.value,
                               new_status=record.status.value, score=float(record.filed_at))
        return record


__all__ = ["APPEAL_STEPS", "Appeal", "AppealStatus", "Appeals", "parse_appeal_domain"]
