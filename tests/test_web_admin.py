"""The curators' pages do the daily work: entries, submission, vetting,
re-verification, allowlist, users, ISPs, publications and the audit log."""

from __future__ import annotations

import io
import re

from app.clock import FakeClock
from app.core import Core
from app.curation import parse_import
from app.domain import SYSTEM
from app.store import K
from tests.conftest import Personas, publish
from tests.test_web_helpers import csrf, post, signed_in, text


def submit(core: Core, who, value: str, subdomains: bool = True) -> int:
    return core.curation.submit(who.actor, value, "domain", subdomains, None, "seen on a forum", "case-7").id


def approved(core: Core, p: Personas, value: str, subdomains: bool = True) -> int:
    entry_id = submit(core, p.alice, value, subdomains)
    core.curation.act(p.bruno.actor, entry_id, "approve")
    return entry_id


def words(r) -> str:
    """A page's text with entry numbers unlinked (messages link them)."""
    return re.sub(r'<a href="/entries/\d+">(\d+)</a>', r"\1", text(r))


def secret_values(html: str) -> list[str]:
    return re.findall(r'<code class="secret">([^<]+)</code>', html)


# --------------------------------------------------------------------------- entries


def test_entries_can_be_filtered_by_state_and_paged(app, core: Core, personas: Personas) -> None:
    lines = "\n".join(f"site{i:03d}.example" for i in range(120))
    report = core.curation.import_rows(personas.alice.actor, parse_import(io.StringIO(lines)), source="t")
    assert report.accepted == 120
    approved(core, personas, "active-one.example")
    client = signed_in(app.test_client(), personas.audrey)
    page1 = text(client.get("/entries?status=pending"))
    assert "120 entries pending; page 1 of 3" in page1
    seen: list[str] = []
    for n in (1, 2, 3):
        page = text(client.get(f"/entries?status=pending&page={n}"))
        seen += re.findall(r'class="value">(site\d+\.example)<', page)
    assert sorted(seen) == [f"site{i:03d}.example" for i in range(120)]  # each once, none lost
    assert "active-one.example" not in page
    next_link = re.search(r'rel="next" href="([^"]+)"', page1).group(1).replace("&amp;", "&")
    assert re.findall(r'class="value">(site\d+\.example)<', text(client.get(next_link))) == seen[50:100]
    active = text(client.get("/entries?status=active"))
    assert "active-one.example" in active
    assert "site001.example" not in active
    assert "121 entries" in text(client.get("/entries"))
    bad = client.get("/entries?status=bogus")
    assert bad.status_code == 400


def test_the_exact_search_finds_the_name_and_what_covers_it(app, core: Core, personas: Personas) -> None:
    parent = approved(core, personas, "bad.example", subdomains=True)
    exact_only = approved(core, personas, "other.example", subdomains=False)
    client = signed_in(app.test_client(), personas.alice)
    page = text(client.get("/entries?q=shop.bad.example"))
    assert f'href="/entries/{parent}"' in page
    assert "covers it: bad.example and its subdomains" in page
    page = text(client.get("/entries?q=www.other.example"))
    assert f'href="/entries/{exact_only}"' not in page
    assert "no entry lists or covers this name" in page
    page = text(client.get("/entries?q=BAD.Example."))
    assert "exact match" in page
    page = text(client.get("/entries?q=ad.exa&mode=contains"))
    assert f'href="/entries/{parent}"' in page


def test_an_entry_page_shows_what_it_covers_and_its_whole_history(app, core: Core, personas: Personas) -> None:
    entry_id = approved(core, personas, "bad.example")
    core.curation.act(personas.vera.actor, entry_id, "suspend", "appeal pending")
    client = signed_in(app.test_client(), personas.alice)
    page = text(client.get(f"/entries/{entry_id}"))
    assert "bad.example and every name under it (*.bad.example)" in page
    for action in ("entry.submit", "entry.approve", "entry.suspend"):
        assert action in page
    assert "appeal pending" in page
    assert client.get("/entries/999999").status_code == 404


def test_self_approval_is_refused_and_another_agency_approves(app, core: Core, personas: Personas) -> None:
    vera = signed_in(app.test_client(), personas.vera)
    r = post(vera, "/submit", {"value": "forum.bad.example", "type": "domain", "subdomains": "y", "category": "csam",
                               "reason": "seen", "evidence_ref": "case-9", "submit": "Submit for vetting"})
    assert r.status_code == 303
    entry_id = int(r.headers["Location"].rsplit("/", 1)[1])
    page = text(vera.get(f"/entries/{entry_id}"))
    assert "submitted by vera; a second person must approve it" in page
    r = post(vera, f"/entries/{entry_id}/approve", {"reason": ""}, follow_redirects=True)
    assert f"Not approved: entry {entry_id} was submitted by vera" in words(r)
    assert core.curation.get(entry_id).status == "pending"
    # A vetter of the same agency is refused too.
    alice_entry = submit(core, personas.alice, "same-agency.example")
    r = post(vera, f"/entries/{alice_entry}/approve", {}, follow_redirects=True)
    assert "approval must come from a vetter of another agency" in text(r)
    bruno = signed_in(app.test_client(), personas.bruno)
    r = post(bruno, f"/entries/{entry_id}/approve", {"reason": "confirmed"}, follow_redirects=True)
    assert f"Entry {entry_id} (forum.bad.example) approved; it is now active" in words(r)


def test_suspend_and_delist_need_a_reason(app, core: Core, personas: Personas) -> None:
    entry_id = approved(core, personas, "bad.example")
    vera = signed_in(app.test_client(), personas.vera)
    for action in ("suspend", "delist"):
        r = post(vera, f"/entries/{entry_id}/{action}", {"reason": ""}, follow_redirects=True)
        assert "reason is required" in text(r)
        assert core.curation.get(entry_id).status == "active"
    r = post(vera, f"/entries/{entry_id}/delist", {"reason": "site is gone"}, follow_redirects=True)
    assert "delisted" in text(r)
    assert core.curation.get(entry_id).status == "delisted"


# --------------------------------------------------------------------------- submit


def test_submit_checks_first_and_refusals_change_nothing(app, core: Core, personas: Personas) -> None:
    alice = signed_in(app.test_client(), personas.alice)
    r = post(alice, "/submit", {"value": "Bad.Example", "type": "", "subdomains": "y", "category": "csam",
                                "check": "Check what it covers"})
    assert r.status_code == 200
    assert "would block: bad.example and every name under it" in text(r)
    assert core.store.entries.last_id() == 0
    for value, why in (("192.0.2.7", "IP address"), ("co.uk", "public suffix"), ("a..b", "empty label")):
        r = post(alice, "/submit", {"value": value, "category": "csam", "submit": "Submit for vetting"})
        assert r.status_code in (400, 422), value
        assert why in text(r), value
    assert core.store.entries.last_id() == 0
    r = post(alice, "/submit", {"value": "https://Bad.Example/a/../gallery?id=1", "category": "csam",
                                "subdomains": "y", "submit": "Submit for vetting"}, follow_redirects=True)
    assert "Entry 1 (https://bad.example/gallery?id=1) submitted" in words(r)
    assert "only the URL https://bad.example/gallery?id=1" in text(r)


def test_a_file_upload_lists_accepted_and_refused_lines_with_reasons(app, core: Core, personas: Personas) -> None:
    core.curation.allowlist_add(SYSTEM, "google.com", True, "platform")
    alice = signed_in(app.test_client(), personas.alice)
    body = "value,subdomains,reason\nbad-one.example,true,seen\nmaps.google.com,true,x\n10.0.0.1,,x\n" \
           "bad-two.example,false,seen\nbad-one.example,true,again\n"
    r = alice.post("/submit/file", data={"csrf_token": csrf(alice), "category": "csam", "subdomains": "",
                                         "file": (io.BytesIO(body.encode()), "list.csv")},
                   content_type="multipart/form-data")
    assert r.status_code == 200, text(r)[:1000]
    page = text(r)
    assert "<strong>2</strong> lines  accepted" in page or "<strong>2</strong> lines accepted" in page
    refused = page.split('id="refused"', 1)[1].split("</table>", 1)[0]
    assert "maps.google.com is under google.com" in refused
    assert "IP address" in refused
    assert "repeats line 2" in refused
    assert [e.value for e in core.curation.get_many([1, 2])] == ["bad-one.example", "bad-two.example"]
    r = alice.post("/submit/file", data={"csrf_token": csrf(alice), "category": "csam", "subdomains": "",
                                         "file": (io.BytesIO(b"\xff\xfe not utf-8"), "x.txt")},
                   content_type="multipart/form-data")
    assert r.status_code == 400
    assert "UTF-8" in text(r)


# --------------------------------------------------------------------------- queues


def test_the_vetting_queue_approves_several_entries_all_or_nothing(app, core: Core, personas: Personas) -> None:
    ids = [submit(core, personas.alice, f"q{i}.example") for i in range(3)]
    own = submit(core, personas.bruno, "bruno-own.example")
    bruno = signed_in(app.test_client(), personas.bruno)
    page = text(bruno.get("/vetting"))
    assert "4 entries waiting" in page
    assert "from another agency than the submitter" in page
    assert f'name="ids" value="{own}"' not in page  # his own entry cannot be ticked
    r = post(bruno, "/vetting", {"ids": [*ids, own]}, follow_redirects=True)
    assert "Not approved: nothing was approved" in text(r)
    assert {core.curation.get(i).status for i in ids} == {"pending"}
    r = post(bruno, "/vetting", {"ids": ids, "reason": "checked all three"}, follow_redirects=True)
    assert "3 entries approved" in text(r)
    assert {core.curation.get(i).status for i in ids} == {"active"}


def test_the_reverification_queue_shows_what_expires_soon(
    app, clock: FakeClock, core: Core, personas: Personas
) -> None:
    soon = approved(core, personas, "old.example")
    clock.advance(80 * 86400)
    later = approved(core, personas, "new.example")
    alice = signed_in(app.test_client(), personas.alice)
    page = text(alice.get("/reverify"))
    assert "1 active entry expire within 14 days" in page
    assert f'value="{soon}"' in page
    assert f'value="{later}"' not in page
    dashboard = text(alice.get("/"))
    assert "Expiring within 14 days: 1" in dashboard
    r = post(alice, "/reverify", {"id": str(soon), "reason": "still online"}, follow_redirects=True)
    assert "re-verified: it stays listed" in text(r)
    assert core.curation.get(soon).verified_at == int(clock.now)
    assert "Nothing expires soon" in text(alice.get("/reverify"))


def test_the_dashboard_shows_the_work_waiting_for_this_person(app, core: Core, personas: Personas) -> None:
    entry_id = submit(core, personas.alice, "pending.example")
    vera = text(signed_in(app.test_client(), personas.vera).get("/"))
    bruno = text(signed_in(app.test_client(), personas.bruno).get("/"))
    alice = text(signed_in(app.test_client(), personas.alice).get("/"))
    assert "Nothing that you may approve is waiting" in vera  # same agency as alice
    assert f'href="/entries/{entry_id}"' in bruno.split("Waiting for your approval")[1].split("</ul>")[0]
    assert f'href="/entries/{entry_id}"' in alice.split("Your submissions waiting for a vetter")[1]


# --------------------------------------------------------------------------- allowlist, users


def test_an_admin_adds_to_the_allowlist_and_conflicting_entries_are_suspended(
    app, core: Core, personas: Personas
) -> None:
    entry_id = approved(core, personas, "cdn.bigplatform.example")
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/allowlist", {"domain": "bigplatform.example", "subdomains": "y", "reason": "platform"},
             follow_redirects=True)
    assert "This suspends 1 active entry at once" in text(r)  # first it says what happens, and asks
    assert "cdn.bigplatform.example" in text(r)
    assert core.curation.get(entry_id).status == "active"
    r = post(ada, "/allowlist", {"domain": "bigplatform.example", "subdomains": "y", "reason": "platform",
                                 "confirmed": "yes", "expect": str(entry_id)}, follow_redirects=True)
    assert f"Suspended because they conflict with it: entry {entry_id}" in words(r)
    assert core.curation.get(entry_id).status == "suspended"
    r = post(ada, "/allowlist", {"domain": "co.uk!", "reason": "x"}, follow_redirects=True)
    assert "Not added" in text(r)
    r = post(ada, "/allowlist/remove", {"domain": "bigplatform.example", "reason": "mistake"}, follow_redirects=True)
    assert "no longer on the allowlist" in text(r)
    alice = text(signed_in(app.test_client(), personas.alice).get("/allowlist"))
    assert 'action="/allowlist"' not in alice  # curators read it, admins change it


def test_an_admin_manages_users(app, core: Core, personas: Personas) -> None:
    for agency in ("Agency C", "Oversight"):
        core.users.add_agency(personas.ada.actor, agency)
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/users", {"name": "dora", "role": "vetter", "agency": "Agency C", "password": "a" * 14})
    assert r.status_code == 200
    assert secret_values(text(r)) == []
    assert core.users.get("dora").role == "vetter"
    r = post(ada, "/users", {"name": "dora", "role": "vetter", "agency": "Agency C"})
    assert r.status_code == 409
    assert "already exists" in text(r)
    r = post(ada, "/users/dora/edit", {"role": "auditor", "agency": "Oversight", "reason": "moved"},
             follow_redirects=True)
    assert "dora is now auditor at Oversight" in text(r)
    r = post(ada, "/users/dora/password", {"reason": "forgot it"})
    temporary = secret_values(text(r))[0]
    assert core.users.authenticate_password("dora", temporary).name == "dora"
    r = post(ada, "/users/ada/disable", {"reason": "oops"}, follow_redirects=True)
    assert "cannot disable your own account" in text(r)
    users = text(ada.get("/users"))
    assert "dora" in users
    assert "Last sign-in" in users
    r = post(ada, "/users/ada/edit", {"role": "curator", "agency": "Programme"}, follow_redirects=True)
    assert "cannot change your own admin role" in text(r)


# --------------------------------------------------------------------------- ISPs


def test_an_isps_credentials_are_shown_once(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/isps", {"name": "isp-one", "notify": "192.0.2.53:53\n198.51.100.7:5300",
                            "allow_from": "192.0.2.0/24", "reason": "contract 12"})
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    shown = secret_values(text(r))
    token, secret = shown[0], shown[3]
    assert token.startswith("blf_")
    assert core.isps.authenticate_feed(token).name == "isp-one"
    assert core.isps.get("isp-one").tsig_secret == secret
    page = text(ada.get("/isps/isp-one"))
    assert token not in page
    assert secret not in page
    assert "192.0.2.53:53, 198.51.100.7:5300" in page
    assert "192.0.2.0/24" in page
    r = post(ada, "/isps", {"name": "Bad Name!"})
    assert r.status_code == 400
    assert "ISP name" in text(r)
    r = post(ada, "/isps/isp-one/rotate", {"token": "y", "tsig": "y", "reason": "leaked"})
    new_token = secret_values(text(r))[0]
    assert new_token != token
    assert core.isps.authenticate_feed(new_token)
    r = post(ada, "/isps/isp-one/revoke", {"reason": "contract ended"}, follow_redirects=True)
    assert "isp-one is revoked" in text(r)
    assert not core.isps.get("isp-one").active


def test_the_isp_page_says_in_one_line_how_transfers_are_authenticated_and_shows_the_xot_pin(
        app, core: Core, personas: Personas) -> None:
    from app.xot import self_signed, spki_pin

    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/isps", {"name": "unbound-isp", "allow_from": "192.0.2.53", "address_only": "y",
                            "reason": "resolver cannot sign"})
    assert r.status_code == 200
    assert core.isps.get("unbound-isp").address_only
    assert core.isps.get("unbound-isp").tsig_secret == ""
    r = post(ada, "/isps", {"name": "nowhere", "address_only": "y"})
    assert r.status_code == 400
    assert "needs at least one allowed address" in text(r)
    core.isps.add(SYSTEM, "bind-isp", allow_from=["192.0.2.0/24"])
    weak = text(ada.get("/isps/unbound-isp"))
    assert "<strong>Address only, no TSIG key</strong>: the weaker mode" in weak
    strong = text(ada.get("/isps/bind-isp"))
    assert "TSIG key required: <code>bind-isp.tsig.</code>" in strong
    assert ada.get("/isps/xot-certificate.pem").status_code == 404
    pem = self_signed("xfr.example.org")[0].decode()
    core.store.isps.set_xot_cert(pem)
    page = text(ada.get("/isps/bind-isp"))
    assert spki_pin(pem) in page
    assert "name <code>xfr.example.org</code>" in page, "the name ISPs check is the certificate's"
    cert = ada.get("/isps/xot-certificate.pem")
    assert cert.status_code == 200
    assert cert.get_data(as_text=True) == pem
    api = app.test_client().get("/api/v1/isps/unbound-isp", headers=personas.ada.headers).json
    assert (api["transfer_auth"], api["tsig_key_name"]) == ("address-only", None)
    assert api["xot"]["spki_pin_sha256"] == spki_pin(pem)
    outsider = app.test_client().get("/isps/xot-certificate.pem")
    assert outsider.status_code in (302, 303, 401), "only signed-in staff download it here"


def test_isps_behind_the_latest_version_are_shown(app, core: Core, personas: Personas) -> None:
    core.isps.add(SYSTEM, "slowisp")
    core.isps.add(SYSTEM, "fastisp")
    approved(core, personas, "one.example")
    publish(core)
    core.isps.record_pull(core.isps.get("slowisp"), 1, "feed")
    approved(core, personas, "two.example")
    publish(core)
    core.isps.record_pull(core.isps.get("fastisp"), 2, "ixfr")
    ada = signed_in(app.test_client(), personas.ada)
    dashboard = text(ada.get("/"))
    behind = dashboard.split("ISPs behind the latest version", 1)[1].split("</table>", 1)[0]
    assert "slowisp" in behind
    assert "fastisp" not in behind
    isps = text(ada.get("/isps"))
    assert re.search(r"slowisp</a></td><td>active</td>\s*<td>1</td>\s*<td>1</td>", isps)


# --------------------------------------------------------------------------- publications and audit


def test_publish_now_without_a_running_publisher_says_so_and_withdraws_the_request(
        app, core: Core, personas: Personas, clock) -> None:
    approved(core, personas, "one.example")
    ada = signed_in(app.test_client(), personas.ada)
    request_page = post(ada, "/publications/publish", {"reason": "weekly"}).headers["Location"]
    assert "Requested; waiting for the publisher" in text(ada.get(request_page))
    clock.advance(core.settings.publish_answer_timeout + 1)
    page = text(ada.get(request_page))
    assert "No publisher answered" in page
    assert "no publisher answered within 30 s" in page and "blocklist worker" in page
    assert 'http-equiv="refresh"' not in page
    assert core.publisher.serve_request() is None  # withdrawn: a publisher started later does not act on it
    assert core.latest_version() is None


def test_publish_now_reports_the_version_the_worker_published(app, core: Core, personas: Personas) -> None:
    approved(core, personas, "one.example")
    approved(core, personas, "two.example")
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/publications/publish", {"reason": "weekly"})
    assert r.status_code == 303
    request_page = r.headers["Location"]
    waiting = ada.get(request_page)
    assert "Requested; waiting for the publisher" in text(waiting)
    assert 'http-equiv="refresh"' in text(waiting)
    outcome = core.publisher.serve_request()  # what the worker does
    assert outcome is not None
    assert outcome.status == "published"
    done = text(ada.get(request_page))
    assert "Published" in done
    assert 'href="/publications/1"' in done
    page = text(ada.get("/publications"))
    assert re.search(r'<a href="/publications/1">1</a></td><td>[^<]+</td>\s*<td class="num">2</td>', page)
    approved(core, personas, "three.example")
    preview = text(ada.get("/publications/preview"))
    assert "1 added, 0 removed, 0 changed" in preview
    assert "three.example" in preview
    publish(core)
    diff = text(ada.get("/publications/2"))
    added = diff.split('id="diff-added"', 1)[1].split("</table>", 1)[0]
    assert "three.example" in added
    assert "one.example" not in added
    assert ada.get("/publications/99").status_code == 404


def test_a_held_publication_is_released_by_an_admin(app, core: Core, personas: Personas) -> None:
    core.curation.set_policy(SYSTEM, {"guard_add_max": 1}, "test")
    approved(core, personas, "one.example")
    approved(core, personas, "two.example")
    assert core.publisher.publish().status == "held"
    vera = signed_in(app.test_client(), personas.vera)
    page = text(vera.get("/publications"))
    assert "adds 2 entries, more than 1" in page
    assert "An admin must release" in page
    ada = signed_in(app.test_client(), personas.ada)
    r = post(ada, "/publications/held/release", {"reason": ""}, follow_redirects=True)
    assert "Give a reason" in text(r)
    r = post(ada, "/publications/held/release", {"reason": "expected: new national list"}, follow_redirects=True)
    assert "Release the held publication?" in text(r)
    assert not core.publisher.held().get("released_by")  # nothing is done before the confirmation
    expect = re.search(r'name="expect" value="([^"]+)"', text(r)).group(1)
    r = post(ada, "/publications/held/release", {"reason": "expected: new national list", "confirmed": "yes",
                                                 "expect": expect}, follow_redirects=True)
    assert "Released" in text(r)
    assert 'http-equiv="refresh"' in text(r)  # the page follows the publisher until it has published
    core.publisher.serve_request()
    assert core.latest_version() == 1


def test_the_dashboard_chart_shows_list_size_and_changes(app, core: Core, personas: Personas) -> None:
    first = approved(core, personas, "one.example")
    approved(core, personas, "two.example")
    publish(core)
    approved(core, personas, "three.example")
    core.curation.act(personas.vera.actor, first, "delist", "gone")
    publish(core)
    page = text(signed_in(app.test_client(), personas.alice).get("/"))
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'class="size-line"' in svg
    assert svg.count('class="size-dot"') == 2
    assert "version 2" in svg
    assert "2 entries, 1 added, 1 removed" in svg
    assert svg.count('class="added"') == 2
    assert svg.count('class="removed"') == 1


def test_the_audit_log_is_filterable_and_shows_the_chain_check(app, core: Core, personas: Personas) -> None:
    approved(core, personas, "bad.example")
    audrey = signed_in(app.test_client(), personas.audrey)
    page = text(audrey.get("/audit"))
    assert "Chain intact" in page
    assert "entry.approve" in page
    assert "user.add" in page
    filtered = text(audrey.get("/audit?actor=bruno"))
    rows = filtered.split('id="audit"', 1)[1]
    assert "entry.approve" in rows
    assert "entry.submit" not in rows
    # Someone removes a record in Redis behind the service's back.
    sid, _ = core.store.audit.range(count=1)[0]
    core.store.r.xdel(K.audit, sid)
    page = text(audrey.get("/audit"))
    assert "Chain BROKEN" in page
    assert "missing before record 2 (removed)" in page


def test_the_users_page_shows_its_agencies_once_and_a_plain_title(app, core: Core, personas: Personas) -> None:
    core.users.add_agency(personas.ada.actor, "Agency C")
    page = text(signed_in(app.test_client(), personas.ada).get("/users"))
    title = re.search(r"<title>(.*?)</title>", page, re.S)
    assert title is not None and "Agencies" not in title.group(1) and "<" not in title.group(1)
    assert title.group(1).startswith("Users")
    assert page.count('id="agencies"') == 1
