"""Store.transact, the one compare-and-set loop, against the real Redis of the
test session: a step that keeps losing to a concurrent writer is read and
built again a fixed number of times, then fails with ConflictError and
writes nothing; one that loses a few times gets through once.

The concurrent writer is real: a second client appends an audit record just
before each of the step's tries, which moves the audit head every audited
step checks.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest

from app import audit
from app.core import Core
from app.curation import parse_import
from app.domain import SYSTEM, Status
from app.errors import ConflictError, RetryableConflictError
from app.store import CONFLICT_MESSAGE, RETRIES, K, Store, Txn, connect
from tests.conftest import AGENCY_A, PASSWORD, Personas

DAY = 86400


class Rival:
    """Another process's writes, made just before each of the first ``wins``
    commits of ``core.store`` (all of them when ``wins`` is None)."""

    def __init__(self, core: Core, monkeypatch: pytest.MonkeyPatch, wins: int | None = None) -> None:
        self.other = Store(connect(core.settings.redis_url))
        self.tries = 0
        self.wins = wins
        real_commit = core.store.commit

        def commit(txn: Txn) -> None:
            self.tries += 1
            if self.wins is None or self.tries <= self.wins:
                audit.append(self.other, actor=SYSTEM, action="test.rival", target="test", ts=0.0)
            real_commit(txn)

        monkeypatch.setattr(core.store, "commit", commit)


def snapshot(core: Core) -> dict[str, Any]:
    """Every key's value, except the audit log (the rival writes there) and
    the id counters (a try reserves ids; numbering may have gaps; the first
    ids a store hands out also mark its published form whole)."""
    r = core.store.r
    out: dict[str, Any] = {}
    for key in sorted(r.scan_iter("*")):
        if key in (K.audit, K.audit_head, K.entry_seq, K.appeal_seq, K.feed_ready):
            continue
        out[key] = r.dump(key)
    return out


def audit_actions(core: Core) -> list[str]:
    return [audit.Record.parse(sid, text).action for sid, text in core.store.audit.range()]


# Each case: (name, setup returning the operation to run under contention).
Setup = Callable[[Core, Personas], Callable[[], object]]


def _submit(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.curation.submit(p.alice.actor, "new.example.test")


def _approve(core: Core, p: Personas) -> Callable[[], object]:
    e = core.curation.submit(p.alice.actor, "pending.example.test")
    return lambda: core.curation.act(p.bruno.actor, e.id, "approve")


def _approve_many(core: Core, p: Personas) -> Callable[[], object]:
    ids = [core.curation.submit(p.alice.actor, f"many{i}.example.test").id for i in range(3)]
    return lambda: core.curation.approve_many(p.bruno.actor, ids)


def _expire(core: Core, p: Personas) -> Callable[[], object]:
    e = core.curation.submit(p.alice.actor, "old.example.test")
    core.curation.act(p.bruno.actor, e.id, "approve")
    core.clock.advance(365 * DAY)  # type: ignore[attr-defined]
    return core.curation.expire_due


def _import(core: Core, p: Personas) -> Callable[[], object]:
    rows = "a.import.example.test\nb.import.example.test\n"
    return lambda: core.curation.import_rows(p.alice.actor, parse_import(io.StringIO(rows)), source="list.txt")


def _policy(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.curation.set_policy(p.ada.actor, {"guard_add_max": 30})


def _allowlist(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.curation.allowlist_add(p.ada.actor, "safe.example.test")


def _add_user(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.users.add(p.ada.actor, "newcomer", "curator", AGENCY_A, PASSWORD)


def _disable_user(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.users.set_disabled(p.ada.actor, "alice", True, "left the unit")


def _issue_token(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.users.issue_token(p.ada.actor, "alice")


def _add_agency(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.users.add_agency(p.ada.actor, "Agency C (FR)")


def _add_isp(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.isps.add(p.ada.actor, "isp-one", ["192.0.2.53:53"], ["192.0.2.0/24"])


def _file_appeal(core: Core, p: Personas) -> Callable[[], object]:
    return lambda: core.appeals.file("blocked.example.test", "owner@example.test",
                                     "This is my bakery's site and it sells bread, nothing else.")


CASES: dict[str, Setup] = {
    "curation.submit": _submit, "curation.approve": _approve, "curation.approve_many": _approve_many,
    "curation.expire": _expire, "curation.import": _import, "curation.policy": _policy,
    "curation.allowlist": _allowlist, "users.add": _add_user, "users.disable": _disable_user,
    "users.token": _issue_token, "users.agency": _add_agency, "isps.add": _add_isp,
    "appeals.file": _file_appeal,
}


@pytest.mark.parametrize("case", CASES)
def test_a_change_that_always_loses_fails_with_conflict_and_writes_nothing(
        core: Core, personas: Personas, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    run = CASES[case](core, personas)
    before = snapshot(core)
    actions = audit_actions(core)
    rival = Rival(core, monkeypatch)
    with pytest.raises(ConflictError) as caught:
        run()
    assert not isinstance(caught.value, RetryableConflictError)
    assert caught.value.message == CONFLICT_MESSAGE
    assert rival.tries == RETRIES + 1
    monkeypatch.undo()
    assert snapshot(core) == before
    # Only the rival's records were added, and the chain holds.
    assert audit_actions(core) == actions + ["test.rival"] * rival.tries
    assert audit.verify(core.store).ok


def test_a_change_that_loses_a_few_times_gets_through_once(core: Core, personas: Personas,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    rival = Rival(core, monkeypatch, wins=3)
    entry = core.curation.submit(personas.alice.actor, "late.example.test")
    assert rival.tries == 4
    monkeypatch.undo()
    assert core.curation.get(entry.id).status is Status.PENDING
    assert audit_actions(core).count("entry.submit") == 1
    assert audit.verify(core.store).ok


def test_the_budget_is_the_one_constant_and_a_caller_may_give_up_sooner(core: Core) -> None:
    calls: list[int] = []

    def build(txn: Txn) -> int:
        calls.append(1)
        txn.expect_get(K.pub_held, "not what is stored")
        txn.op("SET", K.pub_held, "x")
        return len(calls)

    with pytest.raises(ConflictError, match="nothing was changed"):
        core.store.transact(build)
    assert len(calls) == RETRIES + 1
    calls.clear()

    def give_up() -> None:
        raise ConflictError("the held publication changed meanwhile")

    with pytest.raises(ConflictError, match="changed meanwhile"):
        core.store.transact(build, on_conflict=give_up)
    assert len(calls) == 1
    assert core.store.pubs.held_raw() is None
