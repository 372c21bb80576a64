"""``/metrics`` of the web tier, in-process with a fake clock: exact figures.

The request counters, the figures read from Redis at scrape time
(publication, manifest, held publication, per-ISP lag, heartbeats), and who
may scrape. The gunicorn test (tests/test_deploy_gunicorn.py) covers the
multiprocess side.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.clock import FakeClock
from app.core import Core
from app.domain import SYSTEM
from app.embedded import free_port
from app.web import create_app
from tests.conftest import Personas, publish
from tests.test_deploy_gunicorn import labelled, samples

TOKEN = "scrape-token-for-tests-0123456789"


def app_for(core: Core, **changes: Any) -> Any:
    settings = replace(core.settings, **{"metrics_token": TOKEN, **changes})
    c = Core(settings=settings, store=core.store, clock=core.clock)
    c.publisher._key = core.publisher._key
    return create_app(core=c, test_config={"TESTING": True})


def scrape(client: Any, **kwargs: Any) -> dict[str, float]:
    reply = client.get("/metrics", **kwargs)
    assert reply.status_code == 200, reply.data
    return samples(reply.get_data(as_text=True))


def list_domain(core: Core, personas: Personas, value: str) -> None:
    entry = core.curation.submit(personas.alice.actor, value, "domain", True, "csam", "seen", "case")
    core.curation.act(personas.bruno.actor, entry.id, "approve", "checked")


def test_isp_lag_is_measured_from_the_first_version_it_lacks(
    core: Core, personas: Personas, clock: FakeClock
) -> None:
    t0 = clock()
    list_domain(core, personas, "lag-one.test")
    v1 = publish(core).version
    pulls = core.isps.add(SYSTEM, "isp-pulls")
    core.isps.add(SYSTEM, "isp-never")
    core.isps.add(SYSTEM, "isp-gone")
    core.isps.revoke(SYSTEM, "isp-gone", "left the programme")
    core.isps.record_pull(core.isps.authenticate_feed(pulls["feed_token"]), v1, "feed:snapshots")
    clock.advance(100)
    list_domain(core, personas, "lag-two.test")
    publish(core)
    clock.advance(200)
    list_domain(core, personas, "lag-three.test")
    v3 = publish(core).version
    clock.advance(1000)

    found = scrape(app_for(core).test_client())
    now = t0 + 1300
    assert found["blocklist_publication_version"] == v3
    assert found["blocklist_publication_entries"] == 3
    assert found["blocklist_publication_last_timestamp_seconds"] == t0 + 300
    assert labelled(found, "blocklist_publication_changes", kind="added") == 1
    assert found["blocklist_manifest_version"] == v3
    assert found["blocklist_manifest_signed_timestamp_seconds"] == t0 + 300
    assert found["blocklist_manifest_expiry_timestamp_seconds"] == t0 + 300 + core.settings.manifest_ttl
    assert found["blocklist_isps"] == 2
    assert labelled(found, "blocklist_isp_last_version", isp="isp-pulls") == v1
    assert labelled(found, "blocklist_isp_versions_behind", isp="isp-pulls") == 2
    # Behind since the version after v1 was published, at t0 + 100.
    assert labelled(found, "blocklist_isp_behind_seconds", isp="isp-pulls") == now - (t0 + 100)
    assert labelled(found, "blocklist_isp_seconds_since_last_pull", isp="isp-pulls") == now - t0
    assert labelled(found, "blocklist_isp_last_pull_timestamp_seconds", isp="isp-pulls") == t0
    assert labelled(found, "blocklist_isp_versions_behind", isp="isp-never") == v3
    assert labelled(found, "blocklist_isp_behind_seconds", isp="isp-never") == now - t0
    assert labelled(found, "blocklist_isp_seconds_since_last_pull", isp="isp-never") is None
    assert labelled(found, "blocklist_isp_versions_behind", isp="isp-gone") is None

    core.isps.record_pull(core.isps.authenticate_feed(pulls["feed_token"]), v3, "xfr:ixfr")
    found = scrape(app_for(core).test_client())
    assert labelled(found, "blocklist_isp_versions_behind", isp="isp-pulls") == 0
    assert labelled(found, "blocklist_isp_behind_seconds", isp="isp-pulls") == 0


def test_a_held_publication_and_waiting_changes_are_reported(core: Core, personas: Personas) -> None:
    held_core = Core(settings=replace(core.settings, guard_add_max=2), store=core.store, clock=core.clock)
    held_core.publisher._key = core.publisher._key
    for i in range(3):
        list_domain(held_core, personas, f"held-{i}.test")
    assert held_core.publisher.publish().status == "held"
    found = scrape(app_for(held_core).test_client())
    assert found["blocklist_publication_held"] == 1
    assert labelled(found, "blocklist_publication_held_changes", kind="added") == 3
    assert found["blocklist_publication_pending_changes"] >= 3
    assert found["blocklist_publication_version"] == 0
    assert labelled(found, "blocklist_entries", status="active") == 3
    assert labelled(found, "blocklist_entries", status="pending") == 0


def test_live_workers_and_the_delta_chain_are_reported(core: Core, personas: Personas) -> None:
    core.store.health.report_worker("host-a:1", {"signs": True, "key_id": "k"}, 60)
    core.store.health.report_worker("host-b:2", {"signs": False, "key_id": None}, 60)
    large = Core(settings=replace(core.settings, compact_small_bytes=0, compact_age=10**9, compact_ratio=100.0),
                 store=core.store, clock=core.clock)
    large.publisher._key = core.publisher._key
    list_domain(large, personas, "first.test")
    publish(large)
    list_domain(large, personas, "second.test")
    publish(large)
    found = scrape(app_for(large).test_client())
    assert labelled(found, "blocklist_workers", can_publish="yes") == 1
    assert labelled(found, "blocklist_workers", can_publish="no") == 1
    assert found["blocklist_publication_deltas_since_full"] == 1


def test_requests_are_counted_by_endpoint_never_by_path(core: Core, personas: Personas) -> None:
    client = app_for(core).test_client()
    for n in range(3):
        assert client.get(f"/feed/v1/t/blf_{n}{'z' * 40}/rpz/latest.zone").status_code == 401
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/api/v1/me", headers=personas.alice.headers).status_code == 200
    reply = client.get("/metrics")
    text = reply.get_data(as_text=True)
    found = samples(text)
    assert labelled(found, "blocklist_http_requests_total", endpoint="feed.artifact_token_in_path", method="GET",
                    status="401") == 3
    assert labelled(found, "blocklist_http_requests_total", endpoint="none", method="GET", status="404") == 1
    assert labelled(found, "blocklist_http_requests_total", endpoint="api.me", method="GET", status="200") == 1
    assert "blf_" not in text
    assert "zzzz" not in text
    assert "/no/such/page" not in text


def test_a_scrape_still_answers_when_redis_is_down(core: Core) -> None:
    dead = replace(core.settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = create_app(core=Core.from_settings(dead, clock=core.clock), test_config={"TESTING": True}).test_client()
    client.get("/livez")
    found = scrape(client)
    assert found["blocklist_store_up"] == 0
    assert "blocklist_publication_version" not in found
    assert labelled(found, "blocklist_http_requests_total", endpoint="health.livez", method="GET", status="200") == 1


@pytest.mark.parametrize(("remote", "headers", "status"), [
    ("127.0.0.1", {}, 200),
    ("::1", {}, 200),
    ("203.0.113.5", {}, 403),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.5"}, 403),
    ("127.0.0.1", {"Forwarded": "for=203.0.113.5"}, 403),
    ("203.0.113.5", {"Authorization": f"Bearer {TOKEN}"}, 200),
    ("203.0.113.5", {"Authorization": "Bearer not-the-token"}, 401),
    ("127.0.0.1", {"Authorization": f"Basic {TOKEN}"}, 401),
])
def test_only_local_clients_or_token_holders_may_scrape(
    core: Core, remote: str, headers: dict[str, str], status: int
) -> None:
    client = app_for(core).test_client()
    reply = client.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": remote})
    assert reply.status_code == status
    if status != 200:
        assert b"blocklist_" not in reply.data


def test_without_a_token_setting_only_local_clients_may_scrape(core: Core) -> None:
    client = app_for(core, metrics_token=None).test_client()
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.5"}).status_code == 403
    assert client.get("/metrics").status_code == 200


def test_heartbeats_of_processes_on_this_host_are_reported(core: Core, tmp_path: Path) -> None:
    health = tmp_path / "run"
    health.mkdir()
    (health / "worker").write_text("1800000123\n")
    (health / "xfrd").write_text("")
    os.utime(health / "xfrd", (1_800_000_456, 1_800_000_456))
    found = scrape(app_for(core, health_dir=health).test_client())
    assert labelled(found, "blocklist_heartbeat_timestamp_seconds", component="worker") == 1_800_000_123
    assert labelled(found, "blocklist_heartbeat_timestamp_seconds", component="xfrd") == 1_800_000_456


def test_metrics_answer_on_the_local_address_when_the_stop_page_is_on(core: Core) -> None:
    """With a stop host every unknown Host gets the stop page; a local scraper
    (Host 127.0.0.1:8000) must still get the metrics, like /livez."""
    app = app_for(core, stop_host="stop.example.org", public_url="https://blocklist.example.org")
    client = app.test_client()
    assert client.get("/livez", base_url="http://127.0.0.1:8000").status_code == 200
    reply = client.get("/metrics", base_url="http://127.0.0.1:8000")
    assert reply.status_code == 200
    assert b"blocklist_store_up 1.0" in reply.data
