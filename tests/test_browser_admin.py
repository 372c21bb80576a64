"""The main flows in a real browser: headless Chromium (Debian's package)
driven by Playwright against the app on a real socket, as the personas.

Each test leaves a screenshot of the page it ends on in
``test-artifacts/screenshots/<test name>.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.clock import FakeClock
from app.core import Core
from tests.conftest import LiveServer, Persona, Personas, require_binary

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_binary("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Pages:
    """Browser pages of one test; the last one opened is photographed at the end."""

    def __init__(self, browser: Browser, base_url: str) -> None:
        self.browser = browser
        self.base_url = base_url
        self.contexts: list[Any] = []
        self.last: Page | None = None

    def new(self, width: int = 1280, height: int = 900) -> Page:
        context = self.browser.new_context(base_url=self.base_url, viewport={"width": width, "height": height})
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("dialog", lambda dialog: dialog.accept())
        self.last = page
        return page

    def signed_in(self, who: Persona) -> Page:
        page = self.new()
        page.goto("/login")
        page.get_by_label("User name").fill(who.name)
        page.get_by_label("Password").fill(who.password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
        return page


@pytest.fixture
def pages(browser: Browser, live_server: LiveServer, request: pytest.FixtureRequest) -> Iterator[Pages]:
    p = Pages(browser, live_server.url)
    yield p
    if p.last is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        p.last.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    for context in p.contexts:
        context.close()


def test_a_vetter_cannot_approve_their_own_entry_and_a_vetter_of_another_agency_does(
    pages: Pages, core: Core, personas: Personas
) -> None:
    vera = pages.signed_in(personas.vera)
    vera.get_by_role("link", name="Submit", exact=True).click()
    vera.get_by_label("Domain or URL", exact=True).fill("Forum.Bad-Site.example")
    vera.get_by_label("Why it must be blocked").fill("distributes material; seen 2027-01-10")
    vera.get_by_label("Evidence reference").fill("case-2027-041")
    vera.get_by_role("button", name="Check what it covers").click()
    expect(vera.get_by_text("would block: forum.bad-site.example and every name under it")).to_be_visible()
    vera.get_by_role("button", name="Submit for vetting").click()
    expect(vera.get_by_text("submitted. It waits for a vetter from another agency")).to_be_visible()
    entry_url = vera.url
    expect(vera.get_by_text("submitted by vera; a second person must approve it").first).to_be_visible()
    expect(vera.get_by_role("button", name="Approve")).to_be_disabled()  # the server refuses it too
    assert core.curation.get(1).status == "pending"
    vera.get_by_role("button", name="Sign out").click()
    expect(vera.get_by_text("You are signed out")).to_be_visible()

    bruno = pages.signed_in(personas.bruno)
    expect(bruno.get_by_text("forum.bad-site.example")).to_be_visible()  # waiting for him on the dashboard
    bruno.get_by_role("link", name="Vetting", exact=True).click()
    row = bruno.get_by_role("row").filter(has_text="forum.bad-site.example")
    expect(row.get_by_role("button", name="Approve entry 1")).to_be_enabled()
    row.get_by_role("button", name="Approve entry 1").click()
    expect(bruno.get_by_role("status").first).to_contain_text("Entry 1 (forum.bad-site.example) approved")
    bruno.goto(entry_url.replace(pages.base_url, ""))
    expect(bruno.get_by_role("heading", level=1)).to_contain_text("active")
    assert core.curation.get(1).approved_by == "bruno"


def test_publish_now_and_find_the_version_in_the_publications(pages: Pages, core: Core, personas: Personas) -> None:
    for value in ("one.example", "two.example"):
        entry = core.curation.submit(personas.alice.actor, value, "domain", True, None, "seen", "case-1")
        core.curation.act(personas.bruno.actor, entry.id, "approve")
    ada = pages.signed_in(personas.ada)
    ada.get_by_role("link", name="Publications", exact=True).click()
    ada.get_by_placeholder("Reason (optional)").fill("first national list")
    ada.get_by_role("button", name="Publish now").click()
    expect(ada.get_by_role("heading", name="Requested; waiting for the publisher")).to_be_visible()
    outcome = core.publisher.serve_request()  # the worker's step
    assert outcome is not None
    assert outcome.status == "published"
    # The waiting page reloads itself and then shows the outcome.
    expect(ada.get_by_role("status")).to_contain_text("Published version 1", timeout=10_000)
    ada.get_by_role("link", name="Back to publications").click()
    versions = ada.locator("#versions")
    expect(versions.get_by_role("row").nth(1)).to_contain_text("first national list")
    versions.get_by_role("link", name="1", exact=True).click()
    expect(ada.get_by_role("heading", name="Version 1")).to_be_visible()
    ada.get_by_role("link", name="Dashboard", exact=True).click()
    expect(ada.locator("svg.chart-svg")).to_be_visible()


def test_an_appeal_from_the_stop_page_lets_a_vetter_suspend_the_entry(
    pages: Pages, clock: FakeClock, core: Core, personas: Personas
) -> None:
    entry = core.curation.submit(personas.alice.actor, "bakery.example", "domain", True, None, "seen", "case-3")
    core.curation.act(personas.bruno.actor, entry.id, "approve")

    public = pages.new()
    public.goto("/stop")
    expect(public.get_by_role("heading", name="Access to this address has been blocked")).to_be_visible()
    public.get_by_label("The address that was blocked").fill("www.bakery.example")
    public.get_by_label("How we can reach you").fill("owner@bakery.example")
    public.get_by_label("Why the block is wrong").fill(
        "This is our family bakery's shop. We bought the domain last month; it sells bread.")
    clock.advance(10)  # a person takes a while to fill the form in
    public.get_by_role("button", name="Send the appeal").click()
    expect(public.get_by_role("heading", name="Your appeal was received")).to_be_visible()
    reference = public.locator(".reference").inner_text()
    assert public.context.cookies() == []  # the stop page sets no cookie

    vera = pages.signed_in(personas.vera)
    vera.get_by_role("link", name="Appeals", exact=True).click()
    vera.get_by_role("link", name=reference).click()
    expect(vera.get_by_text("owner@bakery.example")).to_be_visible()
    expect(vera.get_by_role("link", name="bakery.example")).to_be_visible()
    vera.get_by_placeholder("Reason (required)").first.fill("claim plausible: new owner")
    vera.get_by_role("button", name="Suspend entry while reviewing").click()
    expect(vera.get_by_role("status").first).to_contain_text("under review: the entry is suspended")
    expect(vera.get_by_role("heading", level=1)).to_contain_text("reviewing")
    assert core.curation.get(entry.id).status == "suspended"


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (390, 844)])
def test_a_too_fast_appeal_shows_its_message_on_screen_without_scrolling(
    pages: Pages, width: int, height: int
) -> None:
    public = pages.new(width, height)
    public.goto("/stop")
    public.get_by_label("The address that was blocked").fill("www.bakery.example")
    public.get_by_label("How we can reach you").fill("owner@bakery.example")
    public.get_by_label("Why the block is wrong").fill("Our family bakery's shop; it sells bread.")
    # No time passes on the fake clock: the form was sent "too fast".
    public.get_by_role("button", name="Send the appeal").click()
    alert = public.get_by_role("alert")
    expect(alert).to_contain_text("very fast")
    box = alert.bounding_box()
    assert box is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, f"the message is off screen at {box}"
    # What the person wrote is kept, so sending again is one click.
    expect(public.get_by_label("Why the block is wrong")).to_have_value("Our family bakery's shop; it sells bread.")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    public.screenshot(path=str(SCREENSHOTS / f"stop-too-fast-{width}.png"))


def test_an_admin_registers_an_address_only_isp_and_sees_the_weaker_mode_and_the_xot_pin(
    pages: Pages, core: Core, personas: Personas
) -> None:
    from app.xot import self_signed, spki_pin

    pem = self_signed("xfr.example.org")[0].decode()
    core.store.isps.set_xot_cert(pem)  # as the transfer server does when it serves XoT
    ada = pages.signed_in(personas.ada)
    ada.goto("/isps")
    ada.get_by_label("Name (lower-case letters, digits, dashes)").fill("bind-isp")
    ada.get_by_role("button", name="Add and show its credentials").click()
    ada.goto("/isps")
    ada.get_by_label("Name (lower-case letters, digits, dashes)").fill("bind-isp")
    ada.get_by_label("Address only, no TSIG key", exact=False).check()
    ada.get_by_role("button", name="Add and show its credentials").click()
    # Every mistake of the form is reported at once: the duplicate name and the missing address.
    expect(ada.locator("p.flash-error")).to_contain_text("already exists")
    expect(ada.locator("small.error", has_text="needs at least one allowed address")).to_be_visible()
    assert core.isps.get("bind-isp").tsig_secret, "the first registration (with a key) is unchanged"
    ada.get_by_label("Name (lower-case letters, digits, dashes)").fill("unbound-isp")
    ada.get_by_label("Allowed addresses for zone transfers", exact=False).fill("192.0.2.53")
    ada.get_by_label("Address only, no TSIG key", exact=False).check()
    ada.get_by_role("button", name="Add and show its credentials").click()
    expect(ada.get_by_text("TSIG secret")).to_have_count(0)
    ada.goto("/isps/bind-isp")
    expect(ada.locator(".transfer-auth")).to_contain_text("TSIG key required")
    ada.goto("/isps/unbound-isp")
    expect(ada.locator(".transfer-auth")).to_contain_text("Address only, no TSIG key: the weaker mode")
    expect(ada.locator(".xot-pin")).to_have_text(spki_pin(pem))
