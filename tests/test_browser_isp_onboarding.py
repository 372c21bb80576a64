"""An admin onboards an ISP in a real browser (headless Chromium, Playwright):
adds it, sees everything its engineers need, downloads the bundle with the
secrets, and later the one without; on a laptop screen and on a phone.

Screenshots: ``test-artifacts/screenshots/isp-onboarding-*.png``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from app.core import Core
from client import config as pull_config
from tests.conftest import LiveServer, Personas
from tests.test_browser_admin import SCREENSHOTS, browser  # noqa: F401 (fixture used by name)

pytestmark = pytest.mark.browser


def signed_in(browser: Browser, url: str, who, width: int, height: int) -> Page:  # noqa: F811
    context = browser.new_context(base_url=url, viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto("/login")
    page.get_by_label("User name").fill(who.name)
    page.get_by_label("Password").fill(who.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    return page


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"isp-onboarding-{name}.png"), full_page=True)


def unzip(path: Path, into: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as z:
        z.extractall(into)
    (folder,) = list(into.iterdir())
    return folder


def fits(page: Page) -> bool:
    """Nothing sticks out sideways (the page does not scroll horizontally)."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_an_admin_adds_an_isp_sees_its_onboarding_and_downloads_the_bundle(
    browser: Browser, live_server: LiveServer, core: Core, personas: Personas, tmp_path: Path  # noqa: F811
) -> None:
    page = signed_in(browser, live_server.url, personas.ada, 1366, 768)
    page.get_by_role("link", name="ISPs", exact=True).click()
    page.get_by_label("Name (lower-case letters, digits, dashes)").fill("acme")
    page.get_by_label("NOTIFY targets (IP:PORT, one a line)").fill("192.0.2.53:53")
    page.get_by_label("Allowed addresses for zone transfers (CIDR, one a line; empty: any)").fill("192.0.2.0/24")
    page.get_by_role("button", name="Add and show its credentials").click()

    expect(page.get_by_role("heading", name="ISP acme added")).to_be_visible()
    expect(page.get_by_role("heading", name="Onboarding acme")).to_be_visible()
    key_id = core.publisher.key.public.id_hex
    expect(page.get_by_text(key_id).first).to_be_visible()
    expect(page.get_by_text(f"{core.settings.public_url}/feed/v1").first).to_be_visible()
    page.get_by_text("BIND 9: key and zones").click()
    expect(page.locator("details.config pre").nth(1)).to_contain_text('key "acme.tsig"')
    token = page.locator("dl.secrets code.secret").first.inner_text()
    assert token.startswith("blf_")
    shot(page, "after-adding-1366")

    with page.expect_download() as info:
        page.get_by_role("button", name="Download the onboarding bundle with these secrets (.zip)").click()
    download = info.value
    assert download.suggested_filename == "blocklist-acme-with-secrets.zip"
    saved = tmp_path / "with-secrets.zip"
    download.save_as(saved)
    folder = unzip(saved, tmp_path / "with")
    assert pull_config.load(folder / "pull.toml", environ={}).token == token
    assert core.isps.authenticate_feed(token).name == "acme"

    page.get_by_role("link", name="Done").click()
    page.get_by_role("link", name="Onboarding: feed URL, zones, key, resolver configurations").click()
    expect(page.get_by_role("heading", name="Onboarding acme")).to_be_visible()
    assert token not in page.content()
    with page.expect_download() as info:
        page.get_by_role("link", name="Download the bundle (.zip, no secrets)").click()
    plain = tmp_path / "plain.zip"
    info.value.save_as(plain)
    later = unzip(plain, tmp_path / "plain")
    assert token not in "".join(p.read_text() for p in later.rglob("*") if p.is_file())
    shot(page, "onboarding-page-1366")

    phone = signed_in(browser, live_server.url, personas.ada, 390, 844)
    phone.goto("/isps/acme/onboarding")
    expect(phone.get_by_role("heading", name="Onboarding acme")).to_be_visible()
    phone.get_by_text("pull.toml (blocklist-pull)").click()
    assert fits(phone), "the onboarding page scrolls sideways on a 390 px wide screen"
    shot(phone, "onboarding-page-390")
    for context in (page.context, phone.context):
        context.close()


def test_an_admin_sees_which_isps_resolvers_are_behind_on_a_laptop_and_a_phone(
    browser: Browser, live_server: LiveServer, core: Core, personas: Personas  # noqa: F811
) -> None:
    from app.domain import SYSTEM
    from tests.conftest import publish
    from tests.test_isp_enforcement import report_enforcing
    from tests.test_metrics import list_domain

    list_domain(core, personas, "screen-one.test")
    v1 = publish(core).version
    for name in ("stuck-isp", "healthy-isp"):
        core.isps.add(SYSTEM, name)
    list_domain(core, personas, "screen-two.test")
    v2 = publish(core).version
    for name in ("stuck-isp", "healthy-isp"):
        core.isps.record_pull(core.isps.get(name), v2, "xfr:ixfr")
    report_enforcing(core, "stuck-isp", v1)
    report_enforcing(core, "healthy-isp", v2)

    page = signed_in(browser, live_server.url, personas.ada, 1366, 768)
    expect(page.locator("table.isps-behind")).to_contain_text("stuck-isp")
    expect(page.locator("table.isps-behind")).not_to_contain_text("healthy-isp")
    page.get_by_role("link", name="ISPs", exact=True).click()
    stuck = page.locator("tr.behind", has_text="stuck-isp")
    expect(stuck.locator("td.enforced")).to_contain_text("1 (1 behind)")
    expect(stuck.locator("td.behind-since")).to_contain_text("(enforcing)")
    expect(page.locator("tr", has_text="healthy-isp").locator("td.behind-since")).to_have_text("up to date")
    shot(page, "isps-enforcement-1366")

    phone = signed_in(browser, live_server.url, personas.ada, 390, 844)
    phone.goto("/isps/stuck-isp")
    expect(phone.locator("dd.enforced")).to_contain_text("1 (1 behind)")
    assert fits(phone), "the ISP page scrolls sideways on a 390 px wide screen"
    shot(phone, "isp-enforcement-390")
    for context in (page.context, phone.context):
        context.close()
