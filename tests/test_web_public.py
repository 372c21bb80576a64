"""The public stop page and its appeal form, and the appeals queue of the admin."""

from __future__ import annotations

import html
import re
import time

from app.clock import FakeClock
from app.core import Core
from app.web import create_app
from tests.conftest import Personas, replace
from tests.test_web_helpers import post, signed_in, text

STATEMENT = "I run this small bakery's website and it has never hosted anything illegal."


def form_token(html: str) -> str:
    m = re.search(r'name="form_token" type="hidden" value="([^"]+)"', html)
    assert m, "no form token on the page"
    return m.group(1)


def appeal(client, clock: FakeClock, domain: str = "bad.example", contact: str = "owner@bakery.test",
           statement: str = STATEMENT, wait: float = 5, **extra: str):
    token = form_token(text(client.get("/stop")))
    clock.advance(wait)
    return client.post("/stop/appeal", data={"domain": domain, "contact": contact, "statement": statement,
                                             "website": "", "form_token": token, **extra})


def listed(core: Core, p: Personas, value: str = "bad.example") -> int:
    entry = core.curation.submit(p.alice.actor, value, "domain", True, None, "seen", "case-1")
    core.curation.act(p.bruno.actor, entry.id, "approve")
    return entry.id


def stop_app(core: Core, stop_host: str = "stop.example.org"):
    from app.core import Core as CoreClass

    c = CoreClass(settings=replace(core.settings, stop_host=stop_host, public_url="https://admin.example.org"),
                  store=core.store, clock=core.clock)
    return create_app(core=c, test_config={"TESTING": True})


# --------------------------------------------------------------------------- the page


def test_the_stop_page_explains_the_block_without_sign_in_cookies_or_scripts(client, core: Core) -> None:
    r = client.get("/stop")
    assert r.status_code == 200
    page = text(r)
    s = core.settings
    for fact in (s.programme_name, s.programme_operator, s.programme_law, s.programme_help_url,
                 "child sexual abuse material", "Think this block is a mistake?"):
        assert fact in page
    assert "<script" not in page
    assert " style=" not in page
    assert "Set-Cookie" not in r.headers
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "http://" not in page.replace(s.programme_help_url, "")
    assert "//cdn" not in page


def test_a_request_for_a_blocked_name_gets_the_stop_page_naming_it(core: Core, personas: Personas) -> None:
    listed(core, personas, "bad.example")
    listed(core, personas, "xn--mnchen-3ya.example")
    client = stop_app(core).test_client()
    r = client.get("/some/page?x=1", headers={"Host": "Bad.Example"})
    assert r.status_code == 451
    assert "The address you tried to reach: <strong>bad.example</strong>" in text(r)
    # The walled-garden convention: the resolver answers name.<stop host>.
    r = client.get("/", headers={"Host": "bad.example.stop.example.org"})
    assert "<strong>bad.example</strong>" in text(r)
    # The stop host itself: the page, without a name.
    r = client.get("/", headers={"Host": "stop.example.org"})
    assert r.status_code == 451
    assert "The address you tried to reach" not in text(r)
    # Internationalised names are shown as people write them.
    r = client.get("/", headers={"Host": "xn--mnchen-3ya.example"})
    assert "münchen.example" in text(r)
    # The admin's own host still gets the admin.
    r = client.get("/", headers={"Host": "admin.example.org"})
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/login")
    # Nothing of the admin or the API is reachable through a blocked name.
    for path in ("/login", "/api/v1/entries", "/users"):
        assert client.get(path, headers={"Host": "bad.example"}).status_code == 451
    assert client.get("/static/stop.css", headers={"Host": "bad.example"}).status_code == 200


def test_a_name_that_is_not_listed_gets_a_neutral_page_that_does_not_repeat_it(
    core: Core, personas: Personas
) -> None:
    listed(core, personas, "bad.example")
    client = stop_app(core).test_client()
    for host in ("fine.example", "fine.example.stop.example.org"):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 404
        assert "fine.example" not in text(r)
        assert "child sexual abuse" not in text(r)
        assert "There is nothing to show for this address" in text(r)


# --------------------------------------------------------------------------- the appeal form


def test_an_appeal_reaches_the_curators_queue_with_its_contact(
    app, client, clock: FakeClock, core: Core, personas: Personas
) -> None:
    entry_id = listed(core, personas)
    r = appeal(client, clock)
    assert r.status_code == 200
    reference = re.search(r'class="reference">(A-\d+)<', text(r)).group(1)
    assert "Set-Cookie" not in r.headers
    curator = signed_in(app.test_client(), personas.alice)
    queue = text(curator.get("/appeals"))
    assert reference in queue
    assert "bad.example" in queue
    appeal_id = int(reference[2:])
    page = text(curator.get(f"/appeals/{appeal_id}"))
    assert "owner@bakery.test" in page
    assert html.unescape(page).count(STATEMENT) == 1
    assert f'href="/entries/{entry_id}"' in page
    # Auditors read the audit log, not appellants' contact details.
    auditor = signed_in(app.test_client(), personas.audrey)
    assert auditor.get(f"/appeals/{appeal_id}").status_code == 403
    assert "owner@bakery.test" not in text(auditor.get("/audit"))


def test_a_form_sent_at_once_is_refused_as_too_fast_and_can_be_sent_again(
    client, clock: FakeClock, core: Core
) -> None:
    token = form_token(text(client.get("/stop")))
    data = {"domain": "bad.example", "contact": "a@x.test", "statement": STATEMENT, "form_token": token}
    r = client.post("/stop/appeal", data=data)
    assert r.status_code == 400
    assert "very fast" in text(r)
    assert form_token(text(r)) == token  # the same form goes through a moment later
    clock.advance(5)
    assert client.post("/stop/appeal", data=data).status_code == 200


def test_a_missing_forged_or_stale_form_token_is_refused(client, clock: FakeClock, core: Core) -> None:
    data = {"domain": "bad.example", "contact": "a@x.test", "statement": STATEMENT}
    assert client.post("/stop/appeal", data=data).status_code == 400
    r = client.post("/stop/appeal", data={**data, "form_token": "1800000000.abc.forged"})
    assert r.status_code == 400
    assert "altered" in text(r)
    token = form_token(text(client.get("/stop")))
    clock.advance(86400 + 1)
    r = client.post("/stop/appeal", data={**data, "form_token": token})
    assert r.status_code == 400
    assert "more than a day old" in text(r)
    assert core.store.audit.length() == 0


def test_a_filled_in_hidden_field_stores_nothing(client, clock: FakeClock, core: Core) -> None:
    r = appeal(client, clock, website="http://spam.example/")
    assert r.status_code == 200
    assert "Thank you" in text(r)
    assert core.store.audit.length() == 0


def test_the_same_appeal_sent_twice_keeps_one_reference(client, clock: FakeClock) -> None:
    first = re.search(r"(A-\d+)", text(appeal(client, clock))).group(1)
    r = appeal(client, clock)
    assert re.search(r"(A-\d+)", text(r)).group(1) == first
    assert "We already had this appeal" in text(r)


def test_bad_input_is_refused_with_a_reason_and_the_form_keeps_what_was_typed(
    client, clock: FakeClock, core: Core
) -> None:
    r = appeal(client, clock, domain="bad.example", contact="owner@bakery.test", statement="short")
    assert r.status_code == 400
    assert "at least 10 characters" in text(r)
    assert 'value="owner@bakery.test"' in text(r)
    r = appeal(client, clock, domain="192.0.2.1")
    assert r.status_code == 422
    assert "IP address" in text(r)
    r = appeal(client, clock, statement="x" * 5001)
    assert r.status_code == 400
    assert core.store.audit.length() == 0


def test_an_oversized_request_is_refused_before_it_is_read(client) -> None:
    r = client.post("/stop/appeal", data={"statement": "x" * 40_000, "form_token": "x"})
    assert r.status_code == 413


def test_each_address_may_file_only_a_few_appeals_an_hour(client, clock: FakeClock) -> None:
    if time.time() % 3600 > 3590:  # the limit counts in fixed one-hour windows
        time.sleep(3601 - time.time() % 3600)
    for i in range(10):
        assert appeal(client, clock, contact=f"person{i}@x.test").status_code == 200
    r = appeal(client, clock, contact="person10@x.test")
    assert r.status_code == 429
    assert "Too many appeals" in text(r)


def test_a_vetter_suspends_from_the_queue_then_upholds(
    app, client, clock: FakeClock, core: Core, personas: Personas
) -> None:
    entry_id = listed(core, personas)
    reference = re.search(r"(A-\d+)", text(appeal(client, clock))).group(1)
    appeal_id = int(reference[2:])
    vetter = signed_in(app.test_client(), personas.vera)
    page = text(vetter.get(f"/appeals/{appeal_id}"))
    assert "Suspend entry while reviewing" in page
    r = post(vetter, f"/appeals/{appeal_id}/review", {"reason": ""}, follow_redirects=True)
    assert "Give a reason" in text(r)
    assert core.curation.get(entry_id).status == "active"
    r = post(vetter, f"/appeals/{appeal_id}/review", {"reason": "owner's claim is plausible"}, follow_redirects=True)
    assert "under review: the entry is suspended" in text(r)
    assert core.curation.get(entry_id).status == "suspended"
    r = post(vetter, f"/appeals/{appeal_id}/uphold", {"reason": "material still online"}, follow_redirects=True)
    assert "upheld" in text(r)
    assert core.curation.get(entry_id).status == "active"
    history = text(vetter.get(f"/entries/{entry_id}"))
    assert "entry.suspend" in history
    assert "entry.reinstate" in history
    # A curator may read appeals but not decide them.
    curator = signed_in(app.test_client(), personas.alice)
    assert "Suspend entry while reviewing" not in text(curator.get(f"/appeals/{appeal_id}"))
    assert post(curator, f"/appeals/{appeal_id}/grant", {"reason": "x"}).status_code == 403


def test_the_stop_page_works_while_redis_is_down_and_the_admin_says_so(core: Core) -> None:
    from app.core import Core as CoreClass
    from app.embedded import free_port
    from app.store import Store

    down = CoreClass(settings=core.settings, store=Store.from_url(f"redis://127.0.0.1:{free_port()}/0"),
                     clock=core.clock)
    client = create_app(core=down, test_config={"TESTING": True}).test_client()
    client.set_cookie("blocklist_session", "x" * 43)
    r = client.get("/stop")
    assert r.status_code == 200
    assert "Think this block is a mistake?" in text(r)
    r = client.get("/entries")
    assert r.status_code == 503
    assert "not reachable" in text(r)
