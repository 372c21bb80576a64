"""Appeals: filing, duplicate suppression, review with suspension, decisions, audit."""

from __future__ import annotations

import json

import pytest

from app import audit
from app.appeals import Appeals, AppealStatus
from app.core import Core
from app.domain import Status
from app.errors import ConflictError, PermissionDeniedError, ValidationError
from tests.conftest import Personas

STATEMENT = "This is my bakery's website; it has never hosted anything illegal."


@pytest.fixture
def appeals(core: Core) -> Appeals:
    return Appeals(core.store, core.curation, core.clock)


def listed(core: Core, p: Personas, value: str = "bad.example", subdomains: bool = True) -> int:
    entry = core.curation.submit(p.alice.actor, value, "domain", subdomains, None, "seen", "case-1")
    core.curation.act(p.bruno.actor, entry.id, "approve")
    return entry.id


def actions(core: Core) -> list[str]:
    return [json.loads(raw)["action"] for _, raw in core.store.audit.range()]


def test_an_appeal_is_filed_matched_to_its_entry_and_audited_without_the_contact(
    core: Core, appeals: Appeals, personas: Personas
) -> None:
    entry_id = listed(core, personas)
    appeal, new = appeals.file("BAD.example.", "owner@bakery.test", STATEMENT)
    assert new
    assert appeal.domain == "bad.example"
    assert appeal.entry_id == entry_id
    assert appeal.status is AppealStatus.OPEN
    assert appeal.reference == f"A-{appeal.id:06d}"
    record = audit.get(core.store, appeal.history[-1])
    assert record is not None
    assert (record.action, record.target, record.actor) == ("appeal.file", f"appeal:{appeal.id}", "system")
    assert "owner@bakery.test" not in json.dumps(record.to_dict())
    assert STATEMENT not in json.dumps(record.to_dict())


def test_a_name_under_an_entry_with_subdomains_is_matched_to_that_entry(
    core: Core, appeals: Appeals, personas: Personas
) -> None:
    entry_id = listed(core, personas, "bad.example", subdomains=True)
    exact_only = listed(core, personas, "other.example", subdomains=False)
    assert appeals.file("shop.bad.example", "me@shop.test", STATEMENT)[0].entry_id == entry_id
    assert appeals.file("https://shop.bad.example/cart?x=1", "me2@shop.test", STATEMENT)[0].entry_id == entry_id
    assert appeals.file("www.other.example", "me@other.test", STATEMENT)[0].entry_id is None
    assert exact_only


def test_an_appeal_for_a_name_that_is_not_listed_is_still_filed(appeals: Appeals) -> None:
    appeal, new = appeals.file("innocent.example", "me@innocent.test", STATEMENT)
    assert new
    assert appeal.entry_id is None


def test_the_same_appeal_twice_is_one_appeal(core: Core, appeals: Appeals) -> None:
    first, new1 = appeals.file("bad.example", "owner@bakery.test", STATEMENT)
    again, new2 = appeals.file("bad.example", "OWNER@bakery.test", "  " + STATEMENT.replace(" ", "  ") + "\n")
    assert new1
    assert not new2
    assert again.id == first.id
    assert appeals.counts()["open"] == 1
    assert actions(core).count("appeal.file") == 1


def test_a_form_key_files_at_most_one_appeal(appeals: Appeals) -> None:
    appeals.file("bad.example", "a@x.test", STATEMENT, once="form-1")
    with pytest.raises(ConflictError, match="already sent"):
        appeals.file("bad.example", "b@x.test", STATEMENT + " More.", once="form-1")
    assert appeals.counts()["open"] == 1


@pytest.mark.parametrize(
    ("domain", "contact", "statement", "message"),
    [
        ("", "a@x.test", STATEMENT, "address"),
        ("not_a_domain!", "a@x.test", STATEMENT, "not a valid"),
        ("127.0.0.1", "a@x.test", STATEMENT, "IP address"),
        ("bad.example", "", STATEMENT, "contact is required"),
        ("bad.example", "a" * 201, STATEMENT, "longer than 200"),
        ("bad.example", "a@x.test\nBcc: b@y.test", STATEMENT, "one line"),
        ("bad.example", "a@x.test", "", "statement is required"),
        ("bad.example", "a@x.test", "too short", "at least"),
        ("bad.example", "a@x.test", "x" * 5001, "longer than 5000"),
        ("bad.example", "a@x.test", "bad\x00byte" * 3, "control characters"),
    ],
)
def test_bad_appeals_are_refused_with_a_reason_and_store_nothing(
    core: Core, appeals: Appeals, domain: str, contact: str, statement: str, message: str
) -> None:
    with pytest.raises(Exception, match=message) as info:
        appeals.file(domain, contact, statement)
    assert getattr(info.value, "status", 0) in (400, 422)
    assert appeals.counts() == {s.value: 0 for s in AppealStatus}
    assert core.store.audit.length() == 0


def test_a_vetter_suspends_the_entry_while_reviewing_then_upholds_the_block(
    core: Core, appeals: Appeals, personas: Personas
) -> None:
    entry_id = listed(core, personas)
    appeal, _ = appeals.file("bad.example", "owner@bakery.test", STATEMENT)
    reviewing = appeals.review(personas.vera.actor, appeal.id, "checking the claim")
    assert reviewing.status is AppealStatus.REVIEWING
    entry = core.curation.get(entry_id)
    assert entry.status is Status.SUSPENDED
    assert entry.status_reason == f"appeal {appeal.reference}: checking the claim"
    upheld = appeals.uphold(personas.bruno.actor, appeal.id, "still distributes material")
    assert upheld.status is AppealStatus.UPHELD
    assert upheld.decided_by == "bruno"
    assert core.curation.get(entry_id).status is Status.ACTIVE
    assert actions(core)[-4:] == ["entry.suspend", "appeal.review", "entry.reinstate", "appeal.uphold"]
    assert audit.verify(core.store).ok


def test_granting_an_appeal_delists_the_entry(core: Core, appeals: Appeals, personas: Personas) -> None:
    entry_id = listed(core, personas)
    appeal, _ = appeals.file("bad.example", "owner@bakery.test", STATEMENT)
    appeals.review(personas.vera.actor, appeal.id, "plausible")
    granted = appeals.grant(personas.vera.actor, appeal.id, "domain changed hands; clean now")
    assert granted.status is AppealStatus.GRANTED
    assert core.curation.get(entry_id).status is Status.DELISTED
    with pytest.raises(ConflictError, match="granted"):
        appeals.uphold(personas.vera.actor, appeal.id, "changed my mind")


def test_an_open_appeal_can_be_upheld_without_touching_the_active_entry(
    core: Core, appeals: Appeals, personas: Personas
) -> None:
    entry_id = listed(core, personas)
    appeal, _ = appeals.file("bad.example", "owner@bakery.test", STATEMENT)
    before = core.curation.get(entry_id)
    appeals.uphold(personas.bruno.actor, appeal.id, "no merit")
    after = core.curation.get(entry_id)
    assert after.status is Status.ACTIVE
    assert after.history == before.history


def test_only_vetters_and_admins_decide_and_always_with_a_reason(
    core: Core, appeals: Appeals, personas: Personas
) -> None:
    listed(core, personas)
    appeal, _ = appeals.file("bad.example", "owner@bakery.test", STATEMENT)
    for who in (personas.alice, personas.audrey):
        with pytest.raises(PermissionDeniedError):
            appeals.review(who.actor, appeal.id, "trying")
    with pytest.raises(ValidationError, match="reason is required"):
        appeals.review(personas.vera.actor, appeal.id, "  ")
    assert appeals.get(appeal.id).status is AppealStatus.OPEN
    assert appeals.review(personas.ada.actor, appeal.id, "admin may").status is AppealStatus.REVIEWING


def test_an_appeal_about_no_entry_can_only_be_dismissed(core: Core, appeals: Appeals, personas: Personas) -> None:
    appeal, _ = appeals.file("innocent.example", "me@innocent.test", STATEMENT)
    for step in (appeals.review, appeals.uphold, appeals.grant):
        with pytest.raises(ConflictError, match="dismiss"):
            step(personas.vera.actor, appeal.id, "n/a")
    dismissed = appeals.dismiss(personas.vera.actor, appeal.id, "not on the list")
    assert dismissed.status is AppealStatus.DISMISSED
    assert actions(core)[-1] == "appeal.dismiss"


def test_a_refused_entry_change_leaves_the_appeal_as_it_was(core: Core, appeals: Appeals, personas: Personas) -> None:
    entry_id = listed(core, personas)
    appeal, _ = appeals.file("bad.example", "owner@bakery.test", STATEMENT)
    core.curation.act(personas.vera.actor, entry_id, "delist", "removed for another reason")
    with pytest.raises(ConflictError, match="only an active entry"):
        appeals.review(personas.vera.actor, appeal.id, "too late")
    assert appeals.get(appeal.id).status is AppealStatus.OPEN


def test_the_queue_lists_appeals_newest_first_by_state(core: Core, appeals: Appeals, personas: Personas) -> None:
    listed(core, personas)
    ids = [appeals.file("bad.example", f"person{i}@x.test", STATEMENT)[0].id for i in range(3)]
    appeals.review(personas.vera.actor, ids[0], "looking")
    open_items, open_total = appeals.list("open")
    assert [a.id for a in open_items] == [ids[2], ids[1]]
    assert open_total == 2
    reviewing, _ = appeals.list("reviewing")
    assert [a.id for a in reviewing] == [ids[0]]
    everything, total = appeals.list(None)
    assert total == 3
    assert len(everything) == 3
    with pytest.raises(ValidationError):
        appeals.list("bogus")
