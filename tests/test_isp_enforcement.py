"""Enforcement you can see: per ISP, the version it fetched, the version its
resolvers were last seen enforcing, and since when it is behind, on the ISPs
page, the ISP's page, the dashboard and in the metrics.
"""

from __future__ import annotations

import re
from typing import Any

from app.clock import FakeClock
from app.core import Core
from app.domain import SYSTEM
from tests.conftest import Personas, publish
from tests.test_deploy_gunicorn import labelled
from tests.test_metrics import app_for, list_domain, scrape
from tests.test_web_helpers import signed_in, text


def report_enforcing(core: Core, name: str, version: int | None) -> None:
    """What an enforcement report from the ISP's pull tool leaves on the ISP record
    (no version: a resolver did not block the always-blocked canary)."""
    core.store.isps.record_pull(name, {"enforced_version": "" if version is None else str(version),
                                       "enforced_at": str(int(core.clock()))})


def row(page: str, name: str) -> str:
    m = re.search(r'<tr[^>]*>\s*<td><a href="/isps/' + name + r'">.*?</tr>', page, re.S)
    assert m, f"no row for {name}"
    return m.group(0)


def test_an_isp_whose_resolvers_stop_applying_updates_shows_as_behind_on_the_pages_and_in_the_metrics(
    core: Core, personas: Personas, clock: FakeClock
) -> None:
    t0 = clock()
    list_domain(core, personas, "enf-one.test")
    v1 = publish(core).version
    for name in ("stuck", "healthy", "silent", "broken"):
        core.isps.add(SYSTEM, name)
        core.isps.record_pull(core.isps.get(name), v1, "xfr:axfr")
    report_enforcing(core, "stuck", v1)
    report_enforcing(core, "healthy", v1)
    clock.advance(600)
    list_domain(core, personas, "enf-two.test")
    publish(core)
    clock.advance(600)
    list_domain(core, personas, "enf-three.test")
    v3 = publish(core).version
    clock.advance(1200)
    # Every ISP keeps transferring; only "stuck"'s resolvers stay on v1.
    for name in ("stuck", "healthy", "silent", "broken"):
        core.isps.record_pull(core.isps.get(name), v3, "xfr:ixfr")
    report_enforcing(core, "stuck", v1)
    report_enforcing(core, "healthy", v3)
    report_enforcing(core, "broken", None)
    now = t0 + 2400
    v2_published = t0 + 600

    app: Any = app_for(core)
    ada = signed_in(app.test_client(), personas.ada)
    page = text(ada.get("/isps"))
    stuck = row(page, "stuck")
    assert 'class="behind"' in stuck
    assert re.search(r'<td class="enforced">1 <strong>\(2 behind\)</strong>', stuck), stuck
    assert "2027-01-15 08:10 UTC" in stuck and "(enforcing)" in stuck  # when v2 was published
    healthy = row(page, "healthy")
    assert 'class="behind"' not in healthy
    assert '<td class="enforced">3 ' in healthy
    assert "up to date" in healthy
    silent = row(page, "silent")
    assert "no report yet" in silent
    assert 'class="behind"' not in silent

    broken = row(page, "broken")
    assert 'class="behind"' in broken
    assert "<strong>not enforcing</strong>" in broken

    one = text(ada.get("/isps/stuck"))
    assert re.search(r'<dd class="enforced">1 <strong>\(2 behind\)</strong>', one)
    assert "2027-01-15 08:10 UTC" in one

    dashboard = text(ada.get("/"))
    behind = dashboard.split("ISPs behind the latest version", 1)[1].split("</table>", 1)[0]
    assert "stuck" in behind
    assert "healthy" not in behind
    assert "silent" not in behind
    assert "broken" in behind

    found = scrape(app.test_client())
    assert labelled(found, "blocklist_isp_enforced_version", isp="stuck") == v1
    assert labelled(found, "blocklist_isp_enforcing_behind_seconds", isp="stuck") == now - v2_published
    assert labelled(found, "blocklist_isp_behind_seconds", isp="stuck") == 0  # it did fetch v3
    assert labelled(found, "blocklist_isp_enforced_version", isp="healthy") == v3
    assert labelled(found, "blocklist_isp_enforcing_behind_seconds", isp="healthy") == 0
    assert labelled(found, "blocklist_isp_enforcing_behind_seconds", isp="silent") is None
    assert labelled(found, "blocklist_isp_last_enforcement_report_timestamp_seconds", isp="stuck") == now
    # Enforcing nothing: behind since the first version published after it was added.
    assert labelled(found, "blocklist_isp_enforced_version", isp="broken") == 0
    assert labelled(found, "blocklist_isp_enforcing_behind_seconds", isp="broken") == now - t0

    # Its resolvers catch up: it is no longer behind anywhere.
    report_enforcing(core, "stuck", v3)
    found = scrape(app.test_client())
    assert labelled(found, "blocklist_isp_enforcing_behind_seconds", isp="stuck") == 0
    assert 'class="behind"' not in row(text(ada.get("/isps")), "stuck")


def test_an_isp_added_after_a_version_is_behind_only_since_it_was_added(
    core: Core, personas: Personas, clock: FakeClock
) -> None:
    list_domain(core, personas, "late-one.test")
    publish(core)
    clock.advance(5000)
    core.isps.add(SYSTEM, "newcomer")
    clock.advance(60)
    found = scrape(app_for(core).test_client())
    assert labelled(found, "blocklist_isp_behind_seconds", isp="newcomer") == 60
