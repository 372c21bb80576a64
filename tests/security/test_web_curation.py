"""The curators' web pages withstand forged and stale posts: approvals the
four-eyes rule forbids, withdrawals by someone else, confirmations given for
a different set of affected entries, audit exports by roles that may not
read the log, and markup or formulas smuggled into messages and exports."""

from __future__ import annotations

import csv
import io
import re

from app import audit
from app.core import Core
from app.curation import parse_import
from app.domain import SYSTEM
from tests.conftest import Personas
from tests.test_web_helpers import post, signed_in, text


def _pending(core: Core, who, value: str) -> int:
    return core.curation.submit(who.actor, value, "domain", True, None, "seen", "case-1").id


def _active(core: Core, p: Personas, value: str) -> int:
    entry_id = _pending(core, p.alice, value)
    core.curation.act(p.bruno.actor, entry_id, "approve")
    return entry_id


def test_a_same_agency_vetter_cannot_approve_through_the_batch_or_page_buttons(
    app, core: Core, personas: Personas
) -> None:
    report = core.curation.import_rows(personas.alice.actor,  # agency A, like vera
                                       parse_import(io.StringIO("s1.example\ns2.example\n")), source="a.csv")
    vera = signed_in(app.test_client(), personas.vera)
    batch = audit.get(core.store, core.curation.get(report.ids[0]).history[0])
    assert batch is not None and batch.action == "entry.import"
    r = post(vera, "/vetting", {"batch": str(batch.seq)}, follow_redirects=True)
    assert "Nothing in that batch is waiting for you to approve" in text(r)
    r = post(vera, "/vetting", {"scope": "page", "page_ids": report.ids}, follow_redirects=True)
    assert "approval must come from a vetter of another agency" in text(r)
    r = post(vera, "/vetting", {"only": str(report.ids[0])}, follow_redirects=True)
    assert "Not approved" in text(r)
    assert {core.curation.get(i).status for i in report.ids} == {"pending"}


def test_a_forged_batch_number_approves_nothing(app, core: Core, personas: Personas) -> None:
    entry_id = _pending(core, personas.carlos, "x.example")
    vera = signed_in(app.test_client(), personas.vera)
    submit_record = core.curation.get(entry_id).history[0]  # a submission, not an import
    before = core.store.audit.length()
    for forged in (str(submit_record), "999999", "1; DROP", "-1"):
        r = post(vera, "/vetting", {"batch": forged})
        assert r.status_code == 400, forged
        assert "is not an import batch" in text(r) or "the batch must be a number" in text(r), forged
    assert core.curation.get(entry_id).status == "pending"
    assert core.store.audit.length() == before


def test_only_the_submitter_can_withdraw_a_pending_entry(app, core: Core, personas: Personas) -> None:
    entry_id = _pending(core, personas.alice, "theirs.example")
    before = core.store.audit.length()
    for who in (personas.carlos, personas.bruno, personas.ada):
        client = signed_in(app.test_client(), who)
        r = post(client, f"/entries/{entry_id}/withdraw", {"reason": "not mine"}, follow_redirects=True)
        assert "only the submitter may withdraw it" in text(r), who.name
    auditor = signed_in(app.test_client(), personas.audrey)
    assert post(auditor, f"/entries/{entry_id}/withdraw", {"reason": "x"}).status_code == 403
    assert core.curation.get(entry_id).status == "pending"
    assert core.store.audit.length() == before


def test_an_allowlist_addition_posted_without_confirmation_suspends_nothing(
    app, core: Core, personas: Personas
) -> None:
    entry_id = _active(core, personas, "www.hosting.example")
    ada = signed_in(app.test_client(), personas.ada)
    before = core.store.audit.length()
    r = post(ada, "/allowlist", {"domain": "hosting.example", "subdomains": "y", "reason": "base",
                                 "expect": str(entry_id)})  # no "confirmed": only the question comes back
    assert "This suspends 1 active entry" in text(r)
    assert core.curation.get(entry_id).status == "active"
    assert core.curation.allowlist() == []
    assert core.store.audit.length() == before


def test_a_stale_allowlist_confirmation_is_refused_and_changes_nothing(
    app, core: Core, personas: Personas
) -> None:
    first = _active(core, personas, "a.hosting.example")
    ada = signed_in(app.test_client(), personas.ada)
    page = text(post(ada, "/allowlist", {"domain": "hosting.example", "subdomains": "y", "reason": "base"}))
    expect = re.search(r'name="expect" value="([^"]*)"', page).group(1)
    assert expect == str(first)
    second = _active(core, personas, "b.hosting.example")  # approved while the admin read the question
    before = core.store.audit.length()
    r = post(ada, "/allowlist", {"domain": "hosting.example", "subdomains": "y", "reason": "base",
                                 "confirmed": "yes", "expect": expect}, follow_redirects=True)
    assert "changed since you confirmed" in text(r)
    assert core.curation.allowlist() == []
    assert {core.curation.get(i).status for i in (first, second)} == {"active"}
    assert core.store.audit.length() == before


def test_a_held_publication_decision_confirmed_for_another_hold_is_refused(
    app, core: Core, personas: Personas
) -> None:
    core.curation.set_policy(SYSTEM, {"guard_add_max": 1}, "test")
    _active(core, personas, "one.example")
    _active(core, personas, "two.example")
    assert core.publisher.publish().status == "held"
    ada = signed_in(app.test_client(), personas.ada)
    page = text(post(ada, "/publications/held/discard", {"reason": "no"}))
    expect = re.search(r'name="expect" value="([^"]*)"', page).group(1)
    _active(core, personas, "three.example")
    assert core.publisher.publish().status == "held"  # a larger hold replaces the one shown
    for decision in ("discard", "release"):
        r = post(ada, f"/publications/held/{decision}", {"reason": "no", "confirmed": "yes", "expect": expect},
                 follow_redirects=True)
        assert "the held publication changed since you confirmed" in text(r)
    held = core.publisher.held()
    assert held is not None and held["added"] == 3 and not held.get("released_by")


def test_roles_that_may_not_read_the_audit_log_cannot_export_it(app, core: Core, personas: Personas) -> None:
    _pending(core, personas.alice, "x.example")
    before = core.store.audit.length()
    for who in (personas.alice, personas.vera):
        client = signed_in(app.test_client(), who)
        for fmt in ("csv", "json"):
            r = client.get(f"/audit/export.{fmt}")
            assert r.status_code == 403, (who.name, fmt)
            assert "hash" not in text(r)
    assert core.store.audit.length() == before
    anonymous = app.test_client()
    assert anonymous.get("/audit/export.csv").status_code == 302


def test_a_reason_that_looks_like_a_formula_is_exported_as_text(app, core: Core, personas: Personas) -> None:
    core.curation.submit(personas.alice.actor, "f.example", "domain", True, None,
                         '=HYPERLINK("http://evil.example","click")', "case-1")
    ada = signed_in(app.test_client(), personas.ada)
    rows = list(csv.DictReader(io.StringIO(text(ada.get("/audit/export.csv?action=entry.submit")))))
    assert rows[0]["reason"].startswith("'=HYPERLINK")


def test_markup_in_a_refused_name_is_shown_as_text_in_messages(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/allowlist", {"domain": "<img src=x onerror=alert(1)>entry 5", "reason": "x"},
             follow_redirects=True)
    page = text(r)
    assert "Not added" in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_another_user_cannot_withdraw_an_entry_through_the_api(client, core: Core, personas: Personas) -> None:
    entry_id = _pending(core, personas.alice, "api-theirs.example")
    r = client.post(f"/api/v1/entries/{entry_id}/withdraw", json={"reason": "x"}, headers=personas.carlos.headers)
    assert r.status_code == 403
    assert r.get_json() == {"error": f"entry {entry_id} was submitted by alice; only the submitter may withdraw it"}
    r = client.post(f"/api/v1/entries/{entry_id}/delist", json={"reason": "x"}, headers=personas.bruno.headers)
    assert r.status_code == 409  # a pending entry is not delisted
    assert core.curation.get(entry_id).status == "pending"
    r = client.post(f"/api/v1/entries/{entry_id}/withdraw", json={}, headers=personas.alice.headers)
    assert r.status_code == 200
    assert r.get_json()["status"] == "rejected"
