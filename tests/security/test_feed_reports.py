"""The door ``POST /feed/v1/reports``: what an ISP's resolvers enforce, reported by ``blocklist-pull check``.

Only an active ISP with its own feed token may report; a report is checked
strictly and refused whole (nothing recorded, nothing audited) when any part
is wrong; one ISP cannot flood it; a valid report is recorded on that ISP
and audited.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from app import audit
from app.core import Core
from app.domain import SYSTEM, iso


@pytest.fixture
def acme(core: Core) -> dict[str, Any]:
    return core.isps.add(SYSTEM, "acme")


def auth(isp: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {isp['feed_token']}"}


def good(core: Core, **changes: Any) -> dict[str, Any]:
    item = {"resolver": "192.0.2.53:53", "version": 41, "blocked": True, "checked_at": iso(core.clock())}
    item.update(changes)
    return {"resolvers": [item]}


def audit_actions(core: Core) -> list[str]:
    return [r.action for r in audit.records(core.store, list(range(1, audit.head(core.store).seq + 1)))]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer blf_not-a-real-token-at-all"},
                                     {"Authorization": "Basic YWNtZTpwYXNz"}])
def test_a_report_without_a_valid_feed_token_is_refused(client: Any, core: Core, acme: dict[str, Any],
                                                         headers: dict[str, str]) -> None:
    r = client.post("/feed/v1/reports", json=good(core), headers=headers)

    assert r.status_code == 401
    assert "feed token" in r.json["error"]
    assert core.isps.get("acme").enforced_at is None


def test_a_report_from_a_revoked_isp_is_refused(client: Any, core: Core, acme: dict[str, Any]) -> None:
    core.isps.revoke(SYSTEM, "acme", "contract ended")

    r = client.post("/feed/v1/reports", json=good(core), headers=auth(acme))

    assert r.status_code == 403
    assert core.isps.get("acme").enforced_at is None
    assert "isp.report" not in audit_actions(core)


def _bodies(core: Core) -> list[Any]:
    return [
        [], "text", None, {"resolvers": []}, {"resolvers": "x"}, {"resolvers": [], "extra": 1},
        good(core, version="41"), good(core, version=True), good(core, version=-1), good(core, version=2**60),
        good(core, blocked="yes"), good(core, resolver=""), good(core, resolver="a" * 81),
        good(core, resolver="<script>"), good(core, resolver="a b"), good(core, checked_at="yesterday"),
        good(core, checked_at="2026-13-45T99:00:00Z"), good(core, checked_at=iso(core.clock() + 3600)),
        good(core, checked_at=iso(core.clock() - 3 * 86400)),
        {"resolvers": [good(core)["resolvers"][0], good(core)["resolvers"][0]]},
        {"resolvers": [dict(good(core)["resolvers"][0], note="hi")]},
        {"resolvers": [dict(good(core)["resolvers"][0], resolver=f"r{i}") for i in range(17)]},
    ]


def test_a_malformed_report_is_refused_whole_and_records_nothing(client: Any, core: Core,
                                                                 acme: dict[str, Any]) -> None:
    before = audit.head(core.store).seq
    for body in _bodies(core):
        r = client.post("/feed/v1/reports", json=body, headers=auth(acme))
        assert r.status_code == 400, body
        assert r.json["error"] and "\n" not in r.json["error"], body
    for raw, ctype in ((b"{not json", "application/json"), (b'{"resolvers": []}', "text/plain"),
                       (b"x" * 20000, "application/json")):
        r = client.post("/feed/v1/reports", data=raw, headers={**auth(acme), "Content-Type": ctype})
        assert r.status_code in (400, 413), raw[:20]

    isp = core.isps.get("acme")
    assert (isp.enforced_version, isp.enforced_at, isp.resolvers) == (None, None, [])
    assert audit.head(core.store).seq == before


def test_a_flood_of_reports_from_one_isp_is_throttled(client: Any, core: Core, acme: dict[str, Any]) -> None:
    other = core.isps.add(SYSTEM, "beta")
    # The window is the clock hour: start at the top of one so the run cannot straddle two.
    wait = 3600 - time.time() % 3600
    if wait < 30:
        time.sleep(wait + 0.1)
    codes = [client.post("/feed/v1/reports", json=good(core), headers=auth(acme)).status_code for _ in range(61)]

    assert codes[:60] == [201] * 60
    assert codes[60] == 429
    # The limit is per ISP: another ISP still reports.
    assert client.post("/feed/v1/reports", json=good(core), headers=auth(other)).status_code == 201


def test_a_valid_report_is_recorded_on_the_isp_and_audited(client: Any, core: Core, acme: dict[str, Any]) -> None:
    now = iso(core.clock())
    body = {"resolvers": [
        {"resolver": "192.0.2.53:53", "version": 42, "blocked": True, "checked_at": now},
        {"resolver": "[2001:db8::53]:53", "version": 40, "blocked": True, "checked_at": now},
    ]}

    r = client.post("/feed/v1/reports", json=body, headers=auth(acme))

    assert r.status_code == 201, r.json
    isp = core.isps.get("acme")
    assert isp.enforced_version == 40  # the resolver furthest behind
    assert isp.enforced_at == int(core.clock())
    assert [(x["resolver"], x["version"], x["blocked"]) for x in isp.resolvers] == [
        ("192.0.2.53:53", 42, True), ("[2001:db8::53]:53", 40, True)]
    assert isp.public()["enforced_version"] == 40
    record = audit.get(core.store, audit.head(core.store).seq)
    assert record is not None
    assert (record.action, record.actor, record.target) == ("isp.report", "isp:acme", "isp:acme")
    assert audit.verify(core.store).ok


def test_a_resolver_that_lets_the_blocked_canary_through_enforces_nothing(client: Any, core: Core,
                                                                          acme: dict[str, Any]) -> None:
    client.post("/feed/v1/reports", json=good(core, version=41), headers=auth(acme))

    r = client.post("/feed/v1/reports", json=good(core, version=41, blocked=False), headers=auth(acme))

    assert r.status_code == 201
    assert core.isps.get("acme").enforced_version is None
