"""The curators' daily work over plain HTTP: what the submit check says, the
vetting queue, the search, the audit log, the confirmation steps and the
smaller things a curator notices (withdraw, messages, links, the chart)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from html.parser import HTMLParser

from app import audit
from app.clock import FakeClock
from app.core import Core
from app.curation import parse_import
from app.domain import SYSTEM
from tests.conftest import Personas, publish
from tests.test_web_helpers import post, signed_in, text


def submit(core: Core, who, value: str, subdomains: bool = True, kind: str = "domain") -> int:
    return core.curation.submit(who.actor, value, kind, subdomains if kind == "domain" else None, None,
                                "seen on a forum", "case-7").id


def approved(core: Core, p: Personas, value: str, subdomains: bool = True, kind: str = "domain") -> int:
    entry_id = submit(core, p.alice, value, subdomains, kind)
    core.curation.act(p.bruno.actor, entry_id, "approve")
    return entry_id


class _Ids(HTMLParser):
    """Every id on a page, and every label's ``for``."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.label_for: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "label" and a.get("for"):
            self.label_for.append(str(a["for"]))


def ids_of(html: str) -> _Ids:
    p = _Ids()
    p.feed(html)
    return p


# --------------------------------------------------------------------------- submit


def test_the_check_says_only_the_exact_name_when_the_subdomains_box_is_unticked(
    app, core: Core, personas: Personas
) -> None:
    alice = signed_in(app.test_client(), personas.alice)
    # An unticked box is simply absent from the post, as a browser sends it.
    r = post(alice, "/submit", {"value": "shop.bad.example", "category": "csam", "check": "Check what it covers"})
    page = text(r)
    assert "would block: exactly shop.bad.example; names under it stay reachable" in page
    assert "every name under it" not in page
    r = post(alice, "/submit", {"value": "shop.bad.example", "category": "csam", "submit": "Submit for vetting"})
    assert r.status_code == 303
    entry = core.curation.get(1)
    assert entry.subdomains is False  # what the check said is what was created
    r = post(alice, "/submit", {"value": "other.example", "subdomains": "y", "category": "csam",
                                "check": "Check what it covers"})
    assert "would block: other.example and every name under it (*.other.example)" in text(r)


def test_the_submit_page_has_one_id_per_field_and_the_forms_do_not_share_input(
    app, core: Core, personas: Personas
) -> None:
    alice = signed_in(app.test_client(), personas.alice)
    page = text(alice.get("/submit"))
    found = ids_of(page)
    assert [i for i, n in Counter(found.ids).items() if n > 1] == []
    assert set(found.label_for) <= set(found.ids)  # every label names a field of its own
    for name in ("subdomains", "category", "reason"):
        assert f'for="upload-{name}"' in page
    r = post(alice, "/submit", {"value": "bad.example", "category": "csam", "reason": "a forum of abuse",
                                "check": "Check what it covers"})
    upload_reason = re.search(r'<textarea[^>]*id="upload-reason"[^>]*>([^<]*)</textarea>', text(r))
    assert upload_reason is not None
    assert upload_reason.group(1).strip() == ""  # the reason stays in the form it was typed into


def test_messages_show_the_unicode_name_with_its_a_label_and_link_entry_numbers(
    app, core: Core, personas: Personas
) -> None:
    alice = signed_in(app.test_client(), personas.alice)
    r = post(alice, "/submit", {"value": "Bücher-Test.example", "subdomains": "y", "category": "csam",
                                "submit": "Submit for vetting"}, follow_redirects=True)
    page = text(r)
    assert "(bücher-test.example (xn--bcher-test-9db.example)) submitted" in page
    assert 'Entry <a href="/entries/1">1</a>' in page


# --------------------------------------------------------------------------- vetting


def test_the_vetting_queue_shows_what_i_may_approve_oldest_first(
    app, clock: FakeClock, core: Core, personas: Personas
) -> None:
    older = submit(core, personas.carlos, "older.example")
    clock.advance(60)
    same_agency = submit(core, personas.alice, "same-agency.example")
    clock.advance(60)
    newer = submit(core, personas.carlos, "newer.example")
    vera = signed_in(app.test_client(), personas.vera)  # agency A, like alice
    page = text(vera.get("/vetting"))
    assert "3 entries waiting in all, oldest first" in page
    shown = [int(i) for i in re.findall(r'name="only" value="(\d+)"', page)]
    assert shown == [older, newer]
    assert "same-agency.example" not in page
    everything = text(vera.get("/vetting?show=all"))
    row = everything.split(f'href="/entries/{same_agency}">{same_agency}</a>', 1)[1].split("</tr>", 1)[0]
    assert "disabled" in row and "submitted from your agency" in row
    assert f'name="only" value="{same_agency}"' not in everything  # no active Approve for it
    # One line of rule text for the whole page, not one per row.
    assert everything.count("from another agency than the submitter") == 1


def test_a_vetter_approves_a_whole_page_or_an_import_batch(app, core: Core, personas: Personas) -> None:
    report = core.curation.import_rows(personas.carlos.actor,
                                       parse_import(io.StringIO("a1.example\na2.example\na3.example\n")),
                                       source="tips.csv")
    own = submit(core, personas.vera, "vera-own.example")
    vera = signed_in(app.test_client(), personas.vera)
    page = text(vera.get("/vetting"))
    batch = re.search(r'name="batch" value="(\d+)"', page)
    assert batch is not None and "tips.csv" in page
    r = post(vera, "/vetting", {"batch": batch.group(1), "reason": "checked the batch"}, follow_redirects=True)
    assert "3 entries approved" in text(r)
    assert {core.curation.get(i).status for i in report.ids} == {"active"}
    assert core.curation.get(own).status == "pending"
    more = [submit(core, personas.carlos, f"b{i}.example") for i in range(2)]
    r = post(vera, "/vetting", {"scope": "page", "page_ids": more}, follow_redirects=True)
    assert "2 entries approved" in text(r)


# --------------------------------------------------------------------------- search


def test_an_exact_search_for_a_host_lists_the_url_entries_on_it(app, core: Core, personas: Personas) -> None:
    url_id = approved(core, personas, "https://files.example/gallery?id=7", kind="url")
    alice = signed_in(app.test_client(), personas.alice)
    page = text(alice.get("/entries?q=files.example"))
    assert f'href="/entries/{url_id}"' in page
    assert "a URL on files.example" in page
    assert "1 entry for" in page
    assert "no entry lists or covers this name" not in page


def test_url_entries_made_before_the_host_index_existed_are_found_too(
    app, core: Core, personas: Personas
) -> None:
    from app.store import K

    url_id = approved(core, personas, "http://old-files.example:8080/a", kind="url")
    # As a store written by an earlier version: no host index, not marked ready.
    core.store.r.delete(K.url_host.format(host="old-files.example"), K.url_host_ready)
    alice = signed_in(app.test_client(), personas.alice)
    assert f'href="/entries/{url_id}"' in text(alice.get("/entries?q=old-files.example"))
    assert core.store.entries.url_host_index_ready()
    assert core.store.entries.url_host_ids("old-files.example") == [url_id]


def test_the_contains_search_matches_unicode_and_a_labels(app, core: Core, personas: Personas) -> None:
    entry_id = approved(core, personas, "bücher-test.example")
    alice = signed_in(app.test_client(), personas.alice)
    for needle in ("bücher", "BÜCHER-t", "xn--bcher", "bcher-test"):
        page = text(alice.get("/entries", query_string={"q": needle, "mode": "contains"}))
        assert f'href="/entries/{entry_id}"' in page, needle
        assert "1 match." in page, needle
    exact = text(alice.get("/entries", query_string={"q": "BÜCHER-TEST.example"}))
    assert f'href="/entries/{entry_id}"' in exact
    page = text(alice.get("/entries", query_string={"q": "nothing-like-it", "mode": "contains"}))
    assert "No matches." in page
    assert "onwards" not in page


# --------------------------------------------------------------------------- audit


def _many_records(core: Core, personas: Personas, clock: FakeClock, n: int) -> None:
    for i in range(n):
        submit(core, personas.alice if i % 2 else personas.carlos, f"rec{i}.example")
        clock.advance(86400)


def test_the_audit_log_pages_folds_the_changes_and_filters_by_date(
    app, clock: FakeClock, core: Core, personas: Personas
) -> None:
    _many_records(core, personas, clock, 63)
    audrey = signed_in(app.test_client(), personas.audrey)
    page = text(audrey.get("/audit"))
    rows = re.findall(r'<tr><td class="num">(\d+)</td>', page)
    assert len(rows) == 50  # a page, not every record
    assert page.count('<details class="diff">') == 50
    assert "<script" not in page.split("</head>", 1)[1]  # nothing inline: the CSP forbids it
    older = re.search(r'rel="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert len(re.findall(r'<tr><td class="num">(\d+)</td>', text(audrey.get(older)))) > 0
    submits = [core.curation.get(i).history[0] for i in (2, 3, 4)]  # one a day
    first_day = audit.get(core.store, submits[0]).ts[:10]
    third_day = audit.get(core.store, submits[-1]).ts[:10]
    page = text(audrey.get(f"/audit?since={first_day}&until={third_day}&action=entry."))
    assert sorted(int(s) for s in re.findall(r'<tr><td class="num">(\d+)</td>', page)) == submits
    page = text(audrey.get("/audit?actor=alice"))
    assert "carlos" not in page.split('id="audit"', 1)[1]
    bad = audrey.get("/audit?since=yesterday")
    assert bad.status_code == 400
    assert "a date is YYYY-MM-DD" in text(bad)
    bad = audrey.get(f"/audit?since={third_day}&until={first_day}")
    assert "the first day comes after the last day" in text(bad)


def test_the_audit_export_gives_the_filtered_range_and_is_itself_audited(
    app, clock: FakeClock, core: Core, personas: Personas
) -> None:
    _many_records(core, personas, clock, 6)
    audrey = signed_in(app.test_client(), personas.audrey)
    r = audrey.get("/audit/export.csv?actor=alice")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text(r))))
    assert [row["actor"] for row in rows] == ["alice"] * 3
    assert [int(row["seq"]) for row in rows] == sorted(int(row["seq"]) for row in rows)  # oldest first
    assert all(len(row["hash"]) == 64 for row in rows)
    r = audrey.get("/audit/export.json?action=entry.submit&target=entry:2")
    data = json.loads(text(r))
    assert [rec["target"] for rec in data["records"]] == ["entry:2"]
    assert data["complete"] is True
    last = audit.get(core.store, core.store.audit.length())
    assert last is not None and last.action == "audit.export" and last.actor == "audrey"
    assert last.after["format"] == "json" and last.after["records"] == 1
    assert audit.verify(core.store).ok


# --------------------------------------------------------------------------- confirmations


def test_adding_to_the_allowlist_says_what_it_suspends_and_asks_first(app, core: Core, personas: Personas) -> None:
    ids = [approved(core, personas, v) for v in ("a.shared.example", "b.shared.example", "c.shared.example")]
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/allowlist", {"domain": "shared.example", "subdomains": "y", "reason": "hosting base"})
    page = text(r)
    assert "This suspends 3 active entries at once" in page
    for i in ids:
        assert f'href="/entries/{i}"' in page
    assert core.curation.allowlist() == []
    assert {core.curation.get(i).status for i in ids} == {"active"}
    expect = re.search(r'name="expect" value="([^"]*)"', page).group(1)
    r = post(ada, "/allowlist", {"domain": "shared.example", "subdomains": "y", "reason": "hosting base",
                                 "confirmed": "yes", "expect": expect}, follow_redirects=True)
    assert "Suspended because they conflict with it" in text(r)
    assert {core.curation.get(i).status for i in ids} == {"suspended"}


def test_discarding_a_held_publication_asks_first(app, core: Core, personas: Personas) -> None:
    core.curation.set_policy(SYSTEM, {"guard_add_max": 1}, "test")
    approved(core, personas, "one.example")
    approved(core, personas, "two.example")
    assert core.publisher.publish().status == "held"
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/publications/held/discard", {"reason": "not expected"})
    page = text(r)
    assert "Discard the held publication?" in page
    assert "2 added" in page
    assert core.publisher.held() is not None
    expect = re.search(r'name="expect" value="([^"]*)"', page).group(1)
    r = post(ada, "/publications/held/discard", {"reason": "not expected", "confirmed": "yes", "expect": expect},
             follow_redirects=True)
    assert "Discarded" in text(r)
    assert core.publisher.held() is None


def test_a_held_publication_is_reported_once_by_the_publish_request_page(
    app, core: Core, personas: Personas
) -> None:
    core.curation.set_policy(SYSTEM, {"guard_add_max": 1}, "test")
    approved(core, personas, "one.example")
    approved(core, personas, "two.example")
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/publications/publish", {"reason": ""})
    location = r.headers["Location"]
    core.publisher.serve_request()
    page = text(ada.get(location))
    assert "Held for an admin:" in page
    assert "held for an admin" not in page.lower().replace("held for an admin:", "", 1)


# --------------------------------------------------------------------------- entries


def test_the_submitter_withdraws_a_pending_entry_and_delist_is_not_offered_on_it(
    app, core: Core, personas: Personas
) -> None:
    entry_id = submit(core, personas.alice, "mistake.example")
    alice = signed_in(app.test_client(), personas.alice)
    page = text(alice.get(f"/entries/{entry_id}"))
    assert f"/entries/{entry_id}/withdraw" in page
    bruno = signed_in(app.test_client(), personas.bruno)
    page = text(bruno.get(f"/entries/{entry_id}"))
    assert f"/entries/{entry_id}/delist" not in page  # a pending entry was never published
    assert f"/entries/{entry_id}/withdraw" not in page  # only the submitter withdraws
    r = post(bruno, f"/entries/{entry_id}/delist", {"reason": "x"}, follow_redirects=True)
    assert "Not delisted" in text(r)
    r = post(alice, f"/entries/{entry_id}/withdraw", {"reason": "typed the wrong name"}, follow_redirects=True)
    assert "withdrawn; it is now rejected" in text(r)
    entry = core.curation.get(entry_id)
    assert entry.status == "rejected"
    assert entry.status_reason == "withdrawn by submitter: typed the wrong name"
    last = audit.get(core.store, entry.history[-1])
    assert last is not None and last.action == "entry.withdraw" and last.actor == "alice"


def test_the_entries_summary_reads_as_a_person_would_say_it(app, core: Core, personas: Personas) -> None:
    approved(core, personas, "only.example")
    alice = signed_in(app.test_client(), personas.alice)
    page = text(alice.get("/entries"))
    assert "1 entry." in page
    page = text(alice.get("/entries?q=only&mode=contains"))
    assert "1 match." in page
    assert "Showing matches" not in page


# --------------------------------------------------------------------------- dashboard and layout


def test_the_chart_axis_starts_at_zero_with_several_labels(
    app, clock: FakeClock, core: Core, personas: Personas
) -> None:
    for i in range(3):
        approved(core, personas, f"v{i}.example")
        clock.advance(60)
        publish(core)
    ada = signed_in(app.test_client(), personas.ada)
    chart = text(ada.get("/")).split('<g class="axis">', 1)[1].split("</g>", 1)[0]
    labels = re.findall(r'class="tick">([^<]+)<', chart)
    assert labels[0] == "0"
    assert len(labels) >= 3
    assert labels[-1] == "3"


def test_every_admin_page_has_a_skip_link_and_a_menu_button(app, personas: Personas) -> None:
    alice = signed_in(app.test_client(), personas.alice)
    page = text(alice.get("/"))
    assert '<a class="skip" href="#main">' in page
    assert 'class="menu-button" aria-controls="main-nav" aria-expanded="false"' in page
    assert 'id="main-nav"' in page
