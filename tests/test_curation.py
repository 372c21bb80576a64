"""Curation rules against a real Redis: lifecycle, four eyes, roles, expiry, allowlist, import."""

from __future__ import annotations

import io
import threading

import pytest

from app import audit
from app.core import Core
from app.curation import parse_import
from app.domain import PERMISSIONS, SYSTEM, Status
from app.errors import (
    BlocklistError,
    ConflictError,
    PermissionDeniedError,
    RefusedError,
    ValidationError,
)
from tests.conftest import Personas

DAY = 86400


def submit(core: Core, p: Personas, value: str = "bad.example.test", **kw: object):
    return core.curation.submit(p.alice.actor, value, **kw)


def test_a_submission_is_stored_in_normal_form_and_pending(core: Core, personas: Personas) -> None:
    e = submit(core, personas, "Example.TEST.")
    assert (e.value, e.status, e.subdomains, e.agency) == ("example.test", Status.PENDING, True, "Agency A (UK)")
    assert core.curation.get(e.id).value == "example.test"
    assert core.curation.find("domain", "EXAMPLE.test").id == e.id


def test_the_submitter_cannot_approve_their_own_entry(core: Core, personas: Personas) -> None:
    e = core.curation.submit(personas.vera.actor, "own.example.test")
    with pytest.raises(PermissionDeniedError, match="second person"):
        core.curation.act(personas.vera.actor, e.id, "approve")
    assert core.curation.get(e.id).status is Status.PENDING


def test_a_vetter_of_the_same_agency_cannot_approve(core: Core, personas: Personas) -> None:
    e = submit(core, personas)
    with pytest.raises(PermissionDeniedError, match="another agency"):
        core.curation.act(personas.vera.actor, e.id, "approve")
    assert core.curation.get(e.id).status is Status.PENDING


def test_a_vetter_of_another_agency_approves(core: Core, personas: Personas, clock) -> None:
    e = submit(core, personas)
    a = core.curation.act(personas.bruno.actor, e.id, "approve")
    assert a.status is Status.ACTIVE
    assert (a.approved_by, a.approved_agency, a.verified_at) == ("bruno", "Agency B (ES)", int(clock()))


def test_the_other_agency_rule_can_be_turned_off_by_an_admin(core: Core, personas: Personas) -> None:
    core.curation.set_policy(personas.ada.actor, {"require_other_agency": False}, "bilateral pilot")
    e = submit(core, personas)
    assert core.curation.act(personas.vera.actor, e.id, "approve").status is Status.ACTIVE
    with pytest.raises(PermissionDeniedError):
        core.curation.set_policy(personas.bruno.actor, {"require_other_agency": True})


@pytest.mark.parametrize("permission", sorted(PERMISSIONS))
def test_every_role_is_refused_what_it_may_not_do(core: Core, personas: Personas, permission: str) -> None:
    for persona in (personas.alice, personas.bruno, personas.ada, personas.audrey):
        allowed = persona.actor.role in PERMISSIONS[permission]
        if allowed:
            persona.actor.require(permission)
        else:
            with pytest.raises(PermissionDeniedError):
                persona.actor.require(permission)


@pytest.mark.parametrize(("who", "action"), [
    ("alice", "approve"), ("carlos", "reject"), ("audrey", "approve"), ("ada", "approve"),
    ("audrey", "reverify"), ("alice", "suspend"), ("alice", "delist"),
])
def test_the_service_refuses_actions_outside_a_role(core: Core, personas: Personas, who: str, action: str) -> None:
    e = core.curation.submit(personas.carlos.actor, "role.example.test")
    if action in ("reverify", "suspend", "delist"):
        core.curation.act(personas.vera.actor, e.id, "approve")
    before = core.curation.get(e.id)
    with pytest.raises(PermissionDeniedError):
        core.curation.act(getattr(personas, who).actor, e.id, action, "reason")
    assert core.curation.get(e.id) == before


def test_an_auditor_cannot_submit(core: Core, personas: Personas) -> None:
    with pytest.raises(PermissionDeniedError):
        core.curation.submit(personas.audrey.actor, "x.example.test")


@pytest.mark.parametrize("value", ["com", "co.uk", "192.0.2.1", "http://[2001:db8::1]/", "blogspot.com"])
def test_unsafe_values_are_refused_and_nothing_is_stored(core: Core, personas: Personas, value: str) -> None:
    etype = "url" if "://" in value else "domain"
    records = core.store.audit.length()
    with pytest.raises(RefusedError):
        core.curation.submit(personas.alice.actor, value, etype)
    assert sum(core.curation.counts().values()) == 0
    assert core.store.audit.length() == records


def test_allowlisted_names_and_their_parents_are_refused(core: Core, personas: Personas) -> None:
    core.curation.allowlist_add(personas.ada.actor, "mail.provider.test", False, "big mail provider")
    with pytest.raises(RefusedError, match="allowlist"):
        submit(core, personas, "mail.provider.test")
    with pytest.raises(RefusedError, match=r"parent of mail\.provider\.test"):
        submit(core, personas, "provider.test")
    assert submit(core, personas, "evil.mail.provider.test").status is Status.PENDING


def test_allowlisting_a_listed_name_suspends_it_at_once(core: Core, personas: Personas) -> None:
    e = submit(core, personas, "victim.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    suspended = core.curation.allowlist_add(personas.ada.actor, "www.victim.test", False, "false positive")
    assert suspended == [e.id]
    got = core.curation.get(e.id)
    assert got.status is Status.SUSPENDED
    assert "allowlist" in (got.status_reason or "")


def test_only_admins_change_the_allowlist(core: Core, personas: Personas) -> None:
    for p in (personas.alice, personas.bruno, personas.audrey):
        with pytest.raises(PermissionDeniedError):
            core.curation.allowlist_add(p.actor, "x.test")
    core.curation.allowlist_add(personas.ada.actor, "x.test")
    with pytest.raises(PermissionDeniedError):
        core.curation.allowlist_remove(personas.bruno.actor, "x.test")
    core.curation.allowlist_remove(personas.ada.actor, "x.test")
    assert core.curation.allowlist() == []


def test_a_duplicate_submission_is_refused_and_a_delisted_one_can_come_back(core: Core, personas: Personas) -> None:
    e = submit(core, personas)
    with pytest.raises(ConflictError, match="already listed"):
        core.curation.submit(personas.carlos.actor, "BAD.example.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    core.curation.act(personas.bruno.actor, e.id, "delist", "site is gone")
    again = core.curation.submit(personas.carlos.actor, "bad.example.test", reason="back online")
    assert (again.id, again.status, again.submitted_by) == (e.id, Status.PENDING, "carlos")
    # carlos resubmitted it, so carlos's agency may not approve it now; vera (agency A) may.
    assert core.curation.act(personas.vera.actor, e.id, "approve").status is Status.ACTIVE


def test_reasons_are_required_where_the_design_says(core: Core, personas: Personas) -> None:
    e = submit(core, personas)
    core.curation.act(personas.bruno.actor, e.id, "approve")
    for action in ("suspend", "delist"):
        with pytest.raises(ValidationError, match="reason"):
            core.curation.act(personas.bruno.actor, e.id, action, "  ")
    s = core.curation.act(personas.bruno.actor, e.id, "suspend", "appeal under review")
    assert (s.status, s.status_reason) == (Status.SUSPENDED, "appeal under review")
    r = core.curation.act(personas.bruno.actor, e.id, "reinstate", "appeal rejected")
    assert r.status is Status.ACTIVE


def test_transitions_outside_the_lifecycle_are_refused(core: Core, personas: Personas) -> None:
    e = submit(core, personas)
    with pytest.raises(ConflictError, match="pending"):
        core.curation.act(personas.bruno.actor, e.id, "reverify")
    core.curation.act(personas.bruno.actor, e.id, "reject", "not CSAM")
    with pytest.raises(ConflictError):
        core.curation.act(personas.bruno.actor, e.id, "approve")


def test_an_entry_expires_when_not_reverified_in_time(core: Core, personas: Personas, clock) -> None:
    a = submit(core, personas, "a.example.test")
    b = submit(core, personas, "b.example.test")
    for e in (a, b):
        core.curation.act(personas.bruno.actor, e.id, "approve")
    clock.advance(60 * DAY)
    core.curation.act(personas.alice.actor, b.id, "reverify")  # the clock restarts for b
    clock.advance(30 * DAY + 1)
    assert core.curation.expire_due() == 1
    assert core.curation.get(a.id).status is Status.EXPIRED
    assert core.curation.get(b.id).status is Status.ACTIVE
    assert core.curation.expire_due() == 0  # idempotent
    clock.advance(60 * DAY)
    assert core.curation.expire_due() == 1
    assert core.curation.get(b.id).status is Status.EXPIRED
    records, _ = audit.search(core.store, action="entry.expire")
    assert records and records[0].actor == "system"


def test_the_reverification_period_is_a_policy_setting(core: Core, personas: Personas, clock) -> None:
    core.curation.set_policy(personas.ada.actor, {"reverify_days": 10}, "shorter cycle")
    e = submit(core, personas)
    core.curation.act(personas.bruno.actor, e.id, "approve")
    assert [x.id for x in core.curation.expiring(within_days=14)] == [e.id]
    clock.advance(10 * DAY + 1)
    assert core.curation.expire_due() == 1
    with pytest.raises(ValidationError):
        core.curation.set_policy(personas.ada.actor, {"reverify_days": 0})
    with pytest.raises(ValidationError):
        core.curation.set_policy(personas.ada.actor, {"no_such_setting": 1})


def test_bulk_approval_is_all_or_nothing(core: Core, personas: Personas) -> None:
    ids = [submit(core, personas, f"n{i}.example.test").id for i in range(3)]
    own = core.curation.submit(personas.bruno.actor, "bruno.example.test").id
    with pytest.raises(BlocklistError, match="nothing was approved"):
        core.curation.approve_many(personas.bruno.actor, [*ids, own])
    assert all(core.curation.get(i).status is Status.PENDING for i in ids)
    done = core.curation.approve_many(personas.bruno.actor, ids)
    assert {e.id for e in done} == set(ids)
    assert all(core.curation.get(i).status is Status.ACTIVE for i in ids)


def test_concurrent_submissions_of_one_value_create_one_entry(core: Core, personas: Personas) -> None:
    results: list[object] = []

    def go() -> None:
        try:
            results.append(core.curation.submit(personas.alice.actor, "race.example.test").id)
        except ConflictError as e:
            results.append(e)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r for r in results if isinstance(r, int)]
    assert len(ids) == 1
    assert core.curation.counts()["pending"] == 1
    assert audit.verify(core.store).ok


def test_import_accepts_good_lines_and_reports_every_refused_one(core: Core, personas: Personas) -> None:
    core.curation.allowlist_add(personas.ada.actor, "safe.test")
    text = "\n".join([
        "# national list export",
        "good1.example.test",
        "GOOD2.example.test.",
        "com",
        "192.0.2.7",
        "safe.test",
        "good1.example.test",
        "bad_name.test",
        "https://files.example.test/a/b?id=7",
        "",
    ])
    report = core.curation.import_rows(personas.alice.actor, parse_import(io.StringIO(text)), source="list.txt")
    assert report.accepted == 3
    refused = {line: why for line, _, why in report.refused}
    assert set(refused) == {4, 5, 6, 7, 8}
    assert "top-level" in refused[4]
    assert "IP address" in refused[5]
    assert "allowlist" in refused[6]
    assert "repeats line 2" in refused[7]
    assert "not a valid" in refused[8]
    assert core.curation.counts()["pending"] == 3
    url = core.curation.find("url", "https://files.example.test/a/b?id=7")
    assert url is not None and url.type == "url" and not url.subdomains


def test_import_of_a_value_already_listed_changes_nothing(core: Core, personas: Personas) -> None:
    e = submit(core, personas, "listed.example.test")
    before = core.curation.get(e.id)
    report = core.curation.import_rows(personas.carlos.actor, parse_import(["listed.example.test\n"]),
                                       source="again.txt")
    assert report.accepted == 0 and "already listed" in report.refused[0][2]
    assert core.curation.get(e.id) == before


def test_csv_import_reads_columns(core: Core, personas: Personas) -> None:
    text = ("value,type,subdomains,reason,evidence_ref\n"
            "exact.example.test,domain,false,seen on forum,case-9\n"
            "\"https://x.example.test/p,q\",url,,file host,case-10\n"
            "too,many,fields,a,b,c\n")
    report = core.curation.import_rows(personas.alice.actor, parse_import(io.StringIO(text)), source="x.csv")
    assert report.accepted == 2
    assert report.refused[0][0] == 4
    exact = core.curation.find("domain", "exact.example.test")
    assert exact is not None and exact.subdomains is False and exact.evidence_ref == "case-9"


def test_a_dry_run_import_changes_nothing(core: Core, personas: Personas) -> None:
    records = core.store.audit.length()
    report = core.curation.import_rows(personas.alice.actor, parse_import(["a.example.test\n", "com\n"]),
                                       source="dry.txt", dry_run=True)
    assert report.accepted == 1 and len(report.refused) == 1
    assert sum(core.curation.counts().values()) == 0
    assert core.store.audit.length() == records


def test_entry_history_comes_from_the_audit_log(core: Core, personas: Personas) -> None:
    e = submit(core, personas)
    core.curation.act(personas.bruno.actor, e.id, "approve")
    core.curation.act(personas.alice.actor, e.id, "reverify")
    history = core.curation.history(core.curation.get(e.id))
    assert [r.action for r in history] == ["entry.submit", "entry.approve", "entry.reverify"]
    assert [r.actor for r in history] == ["alice", "bruno", "alice"]


def test_listing_pages_through_a_status(core: Core, personas: Personas) -> None:
    ids = [submit(core, personas, f"p{i}.example.test").id for i in range(7)]
    page = core.curation.list(status="pending", limit=3)
    assert page.total == 7 and len(page.entries) == 3 and page.next_offset == 3
    page2 = core.curation.list(status="pending", limit=3, offset=3)
    assert {e.id for e in page.entries}.isdisjoint({e.id for e in page2.entries})
    found = core.curation.list(q="p3.example")
    assert [e.id for e in found.entries] == [ids[3]]
    assert core.curation.list(status="active").entries == []
    by_agency = core.curation.list(status="pending", agency="agency b (es)")
    assert by_agency.entries == []
    with pytest.raises(ValidationError):
        core.curation.list(status="bogus")


def test_system_actor_is_recorded_for_jobs(core: Core) -> None:
    core.curation.allowlist_add(SYSTEM, "seed.test", True, "seed")
    rec = audit.search(core.store, action="allowlist.add")[0][0]
    assert rec.actor == "system" and rec.after == {"domain": "seed.test", "subdomains": True}
