"""A curators' day in a real browser (Debian's Chromium, headless, driven by
Playwright): submit with a preview, vetting by another agency while the
submitter's agency sees Approve disabled, publish, search in Unicode, the
audit log with a filter and an export, and an allowlist addition that asks
first. Each step leaves screenshots at 1366x768 and at 390 px wide in
``test-artifacts/screenshots/day-<step>-<width>.png``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app import audit
from app.core import Core
from app.curation import parse_import
from app.domain import SYSTEM
from tests.conftest import LiveServer, Persona, Personas, require_binary
from tests.test_browser_admin import CHROMIUM_ARGS, SCREENSHOTS

pytestmark = pytest.mark.browser

WIDE = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    path = require_binary("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Day:
    def __init__(self, browser: Browser, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.contexts: list[object] = []

    def signed_in(self, who: Persona) -> Page:
        context = self.browser.new_context(base_url=self.base_url, viewport=WIDE, accept_downloads=True)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto("/login")
        page.get_by_label("User name").fill(who.name)
        page.get_by_label("Password").fill(who.password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        return page


def go(page: Page, label: str) -> None:
    """Follow a link of the main menu."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()


def shoot(page: Page, step: str) -> None:
    """The page as it is now, wide and on a phone; the page is left wide."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(WIDE)
    page.screenshot(path=str(SCREENSHOTS / f"day-{step}-1366.png"))
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(SCREENSHOTS / f"day-{step}-390.png"))
    # Nothing is wider than the phone's screen except inside scrolling tables.
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= PHONE["width"] + 1, f"{step}: the page is {overflow} px wide on a 390 px phone"
    page.set_viewport_size(WIDE)


@pytest.fixture
def day(chromium: Browser, live_server: LiveServer) -> Iterator[Day]:
    d = Day(chromium, live_server.url)
    yield d
    for context in d.contexts:
        context.close()  # type: ignore[attr-defined]


def test_a_curators_day(day: Day, core: Core, personas: Personas, tmp_path: Path) -> None:
    # Alice (curator, agency A) submits an exact name, after checking what it covers.
    alice = day.signed_in(personas.alice)
    go(alice, "Submit")
    alice.get_by_label("Domain or URL", exact=True).fill("Bücher-Shop.example")
    alice.get_by_label("Block every name under the domain too (*.name)").uncheck()
    alice.get_by_label("Why it must be blocked", exact=True).fill("sells abuse material; seen 2027-01-10")
    alice.get_by_label("Evidence reference").fill("case-2027-077")
    alice.get_by_role("button", name="Check what it covers").click()
    preview = alice.get_by_role("status")
    expect(preview).to_contain_text("would block: exactly bücher-shop.example (xn--bcher-shop-")
    expect(preview).to_contain_text("names under it stay reachable")
    expect(preview).not_to_contain_text("every name under it")
    expect(alice.locator("#upload-reason")).to_have_value("")  # the reason stayed in its own form
    shoot(alice, "1-submit-preview")
    alice.get_by_role("button", name="Submit for vetting").click()
    expect(alice.get_by_role("status").first).to_contain_text("bücher-shop.example (xn--bcher-shop-")
    entry_id = int(alice.url.rsplit("/", 1)[1])
    assert core.curation.get(entry_id).subdomains is False
    expect(alice.get_by_role("button", name="Withdraw")).to_be_visible()  # her own pending entry
    expect(alice.get_by_role("button", name="Delist")).to_have_count(0)  # it was never published
    shoot(alice, "1b-entry-pending")

    # Vera (vetter, agency A) is not offered what she may not approve.
    vera = day.signed_in(personas.vera)
    go(vera, "Vetting")
    expect(vera.locator("#queue")).to_contain_text("Nothing that you may approve is waiting")
    vera.get_by_role("link", name="All waiting").click()
    row = vera.get_by_role("row").filter(has_text="bücher-shop.example")
    expect(row.get_by_role("button", name="Approve")).to_be_disabled()
    expect(row).to_contain_text("submitted from your agency")
    shoot(vera, "2-vetting-same-agency")

    # Bruno (vetter, agency B) approves it, from a phone.
    bruno = day.signed_in(personas.bruno)
    bruno.set_viewport_size(PHONE)
    bruno.get_by_role("button", name="Menu").click()
    go(bruno, "Vetting")
    approve = bruno.get_by_role("button", name=f"Approve entry {entry_id}")
    expect(approve).to_be_enabled()
    box = approve.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    shoot(bruno, "3-vetting-other-agency")
    bruno.set_viewport_size(PHONE)
    approve.click()
    expect(bruno.get_by_role("status").first).to_contain_text(f"Entry {entry_id} (bücher-shop.example")
    assert core.curation.get(entry_id).status == "active"
    bruno.set_viewport_size(WIDE)

    # Ada (admin) publishes; the worker answers; the page shows the version.
    ada = day.signed_in(personas.ada)
    go(ada, "Publications")
    ada.get_by_role("button", name="Publish now").click()
    outcome = core.publisher.serve_request()
    assert outcome is not None and outcome.status == "published"
    expect(ada.get_by_role("status")).to_contain_text("Published version 1", timeout=10_000)
    shoot(ada, "4-published")

    # Alice finds it by a piece of its Unicode name.
    go(alice, "Entries")
    alice.get_by_label("Name", exact=True).fill("bücher")
    alice.get_by_label("Match").select_option("contains")
    alice.get_by_role("button", name="Show").click()
    expect(alice.locator(".summary")).to_contain_text("1 match.")
    expect(alice.get_by_role("link", name="bücher-shop.example")).to_be_visible()
    shoot(alice, "5-search-unicode")

    # Audrey (auditor) filters the log to Bruno's work, unfolds a change, exports it.
    audrey = day.signed_in(personas.audrey)
    go(audrey, "Audit log")
    audrey.get_by_label("Who").fill("bruno")
    audrey.get_by_role("button", name="Filter").click()
    table = audrey.locator("#audit")
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text("entry.approve")
    table.locator("details.diff summary").first.click()
    expect(table.locator("details.diff pre").first).to_be_visible()
    width = audrey.evaluate("document.querySelector('#audit').getBoundingClientRect().width")
    card = audrey.evaluate("document.querySelector('main').getBoundingClientRect().width")
    assert width <= card  # the table stays inside the page
    shoot(audrey, "6-audit-filtered")
    with audrey.expect_download() as download:
        audrey.get_by_role("link", name="CSV").click()
    saved = tmp_path / "audit.csv"
    download.value.save_as(saved)
    rows = list(csv.DictReader(saved.open(encoding="utf-8")))
    assert [r["action"] for r in rows] == ["entry.approve"]
    last = audit.get(core.store, core.store.audit.length())
    assert last is not None and last.action == "audit.export" and last.actor == "audrey"

    # Ada puts the name on the allowlist: she is told what it suspends, and asked.
    go(ada, "Allowlist")
    ada.get_by_label("Domain", exact=True).fill("bücher-shop.example")
    ada.get_by_label("Why it must never be blocked").fill("a bookshop, wrongly listed")
    ada.get_by_role("button", name="Add", exact=True).click()
    expect(ada.get_by_role("heading", level=1)).to_contain_text("Add bücher-shop.example to the allowlist?")
    expect(ada.get_by_role("status")).to_contain_text("This suspends 1 active entry")
    expect(ada.locator("#conflicts")).to_contain_text(str(entry_id))
    assert core.curation.get(entry_id).status == "active"  # nothing happened yet
    shoot(ada, "7-allowlist-confirm")
    ada.get_by_role("button", name="Yes, add it and suspend 1 entry").click()
    message = ada.get_by_role("status").first
    expect(message).to_contain_text("Suspended because they conflict with it: entry")
    expect(message.get_by_role("link", name=str(entry_id))).to_be_visible()  # entry numbers are links
    assert core.curation.get(entry_id).status == "suspended"
    shoot(ada, "8-allowlist-done")

    # On a phone the menu is one button until it is opened; the skip link leads to the content.
    ada.goto("/")
    ada.set_viewport_size(PHONE)
    ada.keyboard.press("Tab")
    expect(ada.get_by_role("link", name="Skip to the content")).to_be_focused()
    nav = ada.get_by_role("navigation", name="Main")
    expect(nav).to_be_hidden()
    ada.get_by_role("button", name="Menu").click()
    expect(nav).to_be_visible()
    expect(ada.get_by_role("button", name="Menu")).to_have_attribute("aria-expanded", "true")
    shoot(ada, "9-phone-menu-open")


def test_a_long_audit_log_stays_inside_the_page(day: Day, core: Core, personas: Personas) -> None:
    long_source = "national-referrals-" + "x" * 80 + ".csv"
    core.curation.import_rows(personas.alice.actor,
                              parse_import(io.StringIO("\n".join(f"n{i}.example" for i in range(40)))),
                              source=long_source)
    for i in range(60):
        core.curation.submit(personas.carlos.actor, f"site-{i}.example", "domain", True, None,
                             "a reason that is rather long, as reasons are, " * 3, f"case-{i}")
    audrey = day.signed_in(personas.audrey)
    go(audrey, "Audit log")
    rows = audrey.locator("#audit tbody tr")
    expect(rows).to_have_count(50)
    table = audrey.evaluate("document.querySelector('#audit').getBoundingClientRect().width")
    main = audrey.evaluate("document.querySelector('main').clientWidth")
    assert table <= main
    height = audrey.evaluate("document.documentElement.scrollHeight")
    assert height < 6000, f"the page is {height} px tall"
    diff_width = audrey.evaluate(
        "Math.min(...[...document.querySelectorAll('#audit tbody td:nth-child(6)')].map(td => td.clientWidth))")
    assert diff_width >= 200, f"the change column is {diff_width} px wide"
    shoot(audrey, "10-audit-long")
    audrey.get_by_role("link", name="older ›").click()
    expect(rows.first).to_be_visible()
    assert audrey.locator("#audit tbody tr").count() >= 10


def test_the_vetting_queue_fits_many_rows_on_a_screen(day: Day, core: Core, personas: Personas) -> None:
    for i in range(25):
        core.curation.submit(personas.carlos.actor, f"forum-{i:02d}.bad-site.example", "domain", True, None,
                             "distributes material; seen on 2027-01-10 in a referral from a hotline", f"case-{i}")
    core.curation.submit(personas.vera.actor, "vera-own.example", "domain", True, None, "seen", "case-v")
    vera = day.signed_in(personas.vera)
    go(vera, "Vetting")
    rows = vera.locator("#queue tbody tr")
    expect(rows).to_have_count(25)  # her own entry is not offered to her
    heights = vera.evaluate("[...document.querySelectorAll('#queue tbody tr')].map(r => r.offsetHeight)")
    assert max(heights) <= 48, heights  # one line a row
    visible = vera.evaluate(
        "[...document.querySelectorAll('#queue tbody tr')].filter(r => r.getBoundingClientRect().bottom <= innerHeight)"
        ".length")
    assert visible >= 12, visible
    ids = [int(t) for t in rows.locator("td.num").all_inner_texts()]
    assert ids == sorted(ids)  # oldest first
    shoot(vera, "11-vetting-many")


def test_discarding_a_held_publication_asks_on_a_page_of_its_own(
    day: Day, core: Core, personas: Personas
) -> None:
    core.curation.set_policy(SYSTEM, {"guard_add_max": 1}, "test")
    for value in ("one.example", "two.example"):
        entry = core.curation.submit(personas.alice.actor, value, "domain", True, None, "seen", "case-1")
        core.curation.act(personas.bruno.actor, entry.id, "approve")
    assert core.publisher.publish().status == "held"
    ada = day.signed_in(personas.ada)
    ada.on("dialog", lambda dialog: pytest.fail(f"a script dialog asked instead of the page: {dialog.message}"))
    go(ada, "Publications")
    ada.get_by_label("Reason for “Discard”").fill("not what we expected")
    ada.get_by_role("button", name="Discard").click()
    expect(ada.get_by_role("heading", level=1)).to_have_text("Discard the held publication?")
    expect(ada.locator("main")).to_contain_text("2 added, 0 removed")
    assert core.publisher.held() is not None  # nothing happened yet
    shoot(ada, "12-discard-confirm")
    ada.get_by_role("button", name="Yes, discard it").click()
    expect(ada.get_by_role("status").first).to_contain_text("Discarded")
    assert core.publisher.held() is None
