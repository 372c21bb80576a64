"""Accounts in a real browser: headless Chromium (Debian's package) driven by
Playwright against the app on a real socket.

The first admin signs in with the password ``serve`` printed, must choose
their own, sets up a second factor by scanning (here: reading) the QR code,
gets recovery codes, curates agencies and makes accounts that pick from
them; a person whose password an admin reset must choose a new one.

Every step leaves two screenshots, at 1366x768 and at 390 px wide, in
``test-artifacts/screenshots/accounts-<step>-<width>.png``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
import segno
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app import bootstrap
from app.clock import FakeClock
from app.core import Core
from tests.conftest import LiveServer, require_binary

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WIDE = {"width": 1366, "height": 768}
NARROW = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_binary("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def snap(page: Page, step: str) -> None:
    """Photograph the page as it is, wide and narrow."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for size, tag in ((WIDE, "1366"), (NARROW, "390")):
        page.set_viewport_size(size)
        page.screenshot(path=str(SCREENSHOTS / f"accounts-{step}-{tag}.png"), full_page=True)
    page.set_viewport_size(WIDE)


def new_page(browser: Browser, base_url: str) -> Page:
    context = browser.new_context(base_url=base_url, viewport=WIDE)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("dialog", lambda dialog: dialog.accept())
    return page


def sign_in(page: Page, name: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def change_password(page: Page, current: str, new: str) -> None:
    page.get_by_label("Current password").fill(current)
    page.get_by_label("New password (at least").fill(new)
    page.get_by_label("New password again").fill(new)
    page.get_by_role("button", name="Change password").click()


def test_first_admin_changes_the_printed_password_sets_up_totp_by_qr_and_curates_agencies_and_users(
    browser: Browser, core: Core, clock: FakeClock, live_server: LiveServer
) -> None:
    first = bootstrap.first_start(core)
    assert first.admin_password
    admin = new_page(browser, live_server.url)

    # 1. The printed password signs in, but only to choose a new one.
    sign_in(admin, "admin", first.admin_password)
    expect(admin.get_by_text("choose your own before anything else")).to_be_visible()
    expect(admin).to_have_url(re.compile(r"/account"))
    snap(admin, "01-forced-change")
    admin.goto("/users")
    expect(admin).to_have_url(re.compile(r"/account"))
    change_password(admin, first.admin_password, "the admin's own long passphrase")
    expect(admin.get_by_text("Password changed.")).to_be_visible()
    snap(admin, "02-password-changed")

    # 2. Second factor by QR code: an inline SVG drawn by the server.
    admin.get_by_role("button", name="Set up").click()
    qr = admin.locator("#totp-qr svg")
    expect(qr).to_be_visible()
    snap(admin, "03-totp-qr")
    assert admin.locator("script").count() == 0 or all(
        s.get_attribute("src") for s in admin.locator("script").all()
    )  # no inline script on the page (the CSP forbids it)
    secret = (admin.locator("#totp-secret").text_content() or "").strip()
    assert len(secret) == 32
    uri = admin.locator("#totp-uri").text_content() or ""
    assert uri.startswith("otpauth://totp/") and secret in uri
    # The QR code is the link shown as text (the same dark modules), with no inline style.
    svg = admin.locator("#totp-qr").inner_html()
    assert "style" not in svg and "<script" not in svg
    expected = segno.make(uri, error="m").svg_inline(scale=4, border=2, dark="#000", light="#fff")
    dark = re.compile(r'stroke="#000" d="([^"]+)"')
    assert dark.search(svg) and dark.search(svg).group(1) == dark.search(expected).group(1)  # type: ignore[union-attr]
    admin.get_by_label("Six-digit code").fill(pyotp.TOTP(secret).at(clock()))
    admin.get_by_role("button", name="Turn on").click()

    # 3. Recovery codes, shown once.
    expect(admin.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    codes = [c.strip() for c in admin.locator("#recovery-codes code").all_text_contents()]
    assert len(codes) == 10 and all(re.fullmatch(r"[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}", c) for c in codes)
    snap(admin, "04-recovery-codes")
    admin.get_by_role("link", name="Done").click()
    expect(admin.get_by_text("Unused recovery codes: 10")).to_be_visible()
    assert core.users.get("admin").totp_enabled

    # 3b. A recovery code signs in once in place of the app; new codes replace the old ones.
    admin.get_by_role("button", name="Sign out").click()
    sign_in(admin, "admin", "the admin's own long passphrase")
    admin.get_by_label("Six-digit code").fill(codes[0])
    snap(admin, "04b-recovery-code-sign-in")
    admin.get_by_role("button", name="Continue").click()
    expect(admin.get_by_role("heading", name="Dashboard")).to_be_visible()
    admin.goto("/account")
    expect(admin.get_by_text("Unused recovery codes: 9")).to_be_visible()
    admin.get_by_label("Your password").fill("the admin's own long passphrase")
    admin.get_by_role("button", name="New recovery codes").click()
    expect(admin.get_by_text("New recovery codes: the earlier ones no longer work.")).to_be_visible()
    fresh = [c.strip() for c in admin.locator("#recovery-codes code").all_text_contents()]
    assert len(fresh) == 10 and not set(fresh) & set(codes)
    snap(admin, "04c-new-recovery-codes")

    # 4. Agencies: a list admins curate.
    admin.goto("/users")
    for agency in ("Agency North (NO)", "Agency South (ES)"):
        admin.get_by_label("Agency name").fill(agency)
        admin.get_by_role("button", name="Add agency").click()
        expect(admin.get_by_text(f"{agency} is on the list of agencies.")).to_be_visible()
    snap(admin, "05-agencies")

    # 5. Users pick their agency from the list; the made password is temporary.
    made = {}
    for name, role, agency in (("nina", "curator", "Agency North (NO)"), ("omar", "vetter", "Agency South (ES)")):
        admin.goto("/users")
        admin.get_by_label("User name").fill(name)
        admin.get_by_label("Role").select_option(role)
        admin.get_by_label("Agency", exact=True).select_option(label=agency)
        admin.get_by_role("button", name="Add", exact=True).click()
        expect(admin.get_by_role("heading", name=f"Account {name} made")).to_be_visible()
        made[name] = (admin.locator("code.secret").first.text_content() or "").strip()
        snap(admin, f"06-user-{name}-made")
    assert core.users.get("nina").agency == "Agency North (NO)"
    assert core.users.get("omar").agency == "Agency South (ES)"
    assert core.users.get("nina").must_change

    # 6. An admin reset: the new password is temporary too.
    admin.goto("/users/nina")
    admin.get_by_role("button", name="Reset password").click()
    expect(admin.get_by_role("heading", name="New password for nina")).to_be_visible()
    reset = (admin.locator("code.secret").first.text_content() or "").strip()
    assert reset and reset != made["nina"]
    snap(admin, "07-reset")

    nina = new_page(browser, live_server.url)
    sign_in(nina, "nina", made["nina"])
    expect(nina.get_by_text("wrong user name or password")).to_be_visible()
    sign_in(nina, "nina", reset)
    expect(nina.get_by_text("choose your own before anything else")).to_be_visible()
    nina.goto("/entries")
    expect(nina).to_have_url(re.compile(r"/account"))
    snap(nina, "08-reset-user-must-change")
    change_password(nina, reset, "nina's own long passphrase")
    expect(nina.get_by_text("Password changed.")).to_be_visible()
    nina.goto("/entries")
    expect(nina).to_have_url(re.compile(r"/entries"))
    snap(nina, "09-reset-user-in")
    assert not core.users.get("nina").must_change
