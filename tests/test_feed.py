"""The ISP feed over HTTP: tokens, revocation, caching, gzip, history, pull records."""

from __future__ import annotations

import gzip
import hashlib
import json
import time

import pytest

from app.core import Core
from app.domain import SYSTEM
from tests.conftest import Personas, publish


@pytest.fixture
def isp(core: Core) -> dict:
    return core.isps.add(SYSTEM, "acme", notify=["192.0.2.53:53"], allow_from=["192.0.2.0/24"])


@pytest.fixture
def published(core: Core, personas: Personas) -> int:
    for v in ("a.example.test", "b.example.test"):
        e = core.curation.submit(personas.alice.actor, v)
        core.curation.act(personas.bruno.actor, e.id, "approve")
    publish(core)
    e = core.curation.submit(personas.alice.actor, "c.example.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    return publish(core).version


def auth(isp: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {isp['feed_token']}"}


def test_without_a_valid_token_the_feed_answers_401(client, isp, published) -> None:
    for headers in ({}, {"Authorization": "Bearer blf_wrong"}, {"Authorization": "Bearer blu_user_token_here"}):
        r = client.get("/feed/v1/manifest.json", headers=headers)
        assert r.status_code == 401
        assert "feed token" in r.json["error"]
    assert client.get("/feed/v1/t/blf_nope/manifest.json").status_code == 401


def test_a_revoked_isp_gets_403_on_its_next_request(client, core: Core, isp, published) -> None:
    assert client.get("/feed/v1/manifest.json", headers=auth(isp)).status_code == 200
    core.isps.revoke(SYSTEM, "acme", "contract ended")
    r = client.get("/feed/v1/manifest.json", headers=auth(isp))
    assert r.status_code == 403 and "revoked" in r.json["error"]
    assert client.get(f"/feed/v1/t/{isp['feed_token']}/rpz/latest.zone").status_code == 403


def test_a_rotated_token_replaces_the_old_one(client, core: Core, isp, published) -> None:
    new = core.isps.rotate(SYSTEM, "acme")["feed_token"]
    assert client.get("/feed/v1/manifest.json", headers=auth(isp)).status_code == 401
    assert client.get("/feed/v1/manifest.json", headers={"Authorization": f"Bearer {new}"}).status_code == 200


def test_the_feed_serves_what_the_manifest_lists(client, core: Core, isp, published) -> None:
    manifest = client.get("/feed/v1/manifest.json", headers=auth(isp))
    assert manifest.status_code == 200 and manifest.mimetype == "application/json"
    m = manifest.json
    assert m["version"] == published
    sig = client.get("/feed/v1/manifest.json.minisig", headers=auth(isp)).data.decode()
    assert core.publisher.key.public.verify_bytes(__import__("client.minisign", fromlist=["Signature"])
                                                  .Signature.parse(sig), manifest.data)
    for art in m["artifacts"]:
        r = client.get(f"/feed/v1/{art['path']}", headers=auth(isp))
        assert r.status_code == 200, art
        assert hashlib.sha256(r.data).hexdigest() == art["sha256"] and len(r.data) == art["size"]
        assert r.headers["ETag"] == f'"{art["sha256"]}"'
        assert "immutable" in r.headers["Cache-Control"]
        assert client.get(f"/feed/v1/{art['path']}.minisig", headers=auth(isp)).status_code == 200
    zone = client.get("/feed/v1/rpz/latest.zone", headers=auth(isp))
    assert zone.status_code == 200 and b"$ORIGIN blocklist.rpz." in zone.data
    assert "no-cache" in zone.headers["Cache-Control"]
    same = client.get(f"/feed/v1/t/{isp['feed_token']}/rpz/latest.zone")
    assert same.data == zone.data


def test_if_none_match_answers_304(client, isp, published) -> None:
    r = client.get(f"/feed/v1/snapshots/{published}.json", headers=auth(isp))
    etag = r.headers["ETag"]
    again = client.get(f"/feed/v1/snapshots/{published}.json", headers={**auth(isp), "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    m = client.get("/feed/v1/manifest.json", headers=auth(isp))
    assert client.get("/feed/v1/manifest.json",
                      headers={**auth(isp), "If-None-Match": m.headers["ETag"]}).status_code == 304


def test_gzip_is_offered_to_clients_that_accept_it(client, isp, published) -> None:
    plain = client.get(f"/feed/v1/snapshots/{published}.json", headers=auth(isp)).data
    r = client.get(f"/feed/v1/snapshots/{published}.json", headers={**auth(isp), "Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip"
    assert r.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(r.data) == plain


def test_deltas_exist_between_consecutive_versions_only(client, isp, published) -> None:
    r = client.get(f"/feed/v1/deltas/{published - 1}/{published}.json", headers=auth(isp))
    assert r.status_code == 200
    assert [e["value"] for e in r.json["added"]] == ["c.example.test"]
    missing = client.get(f"/feed/v1/deltas/0/{published}.json", headers=auth(isp))
    assert missing.status_code == 404 and "full snapshot" in missing.json["error"]
    assert client.get("/feed/v1/snapshots/99.json", headers=auth(isp)).status_code == 404
    assert client.get("/feed/v1/../../etc/passwd", headers=auth(isp)).status_code == 404
    assert client.get("/feed/v1/snapshots/1.zone", headers=auth(isp)).status_code == 404


def test_every_pull_is_recorded(client, core: Core, isp, published) -> None:
    assert core.isps.get("acme").last_version is None
    client.get(f"/feed/v1/snapshots/{published}.json", headers=auth(isp))
    got = core.isps.get("acme")
    assert got.last_version == published and got.last_pull_via == "feed:snapshots"
    pulls = core.store.isps.recent_pulls()
    assert pulls[0]["isp"] == "acme" and pulls[0]["last_version"] == str(published)
    r = client.get("/api/v1/isps", headers={"Authorization": f"Bearer {core.users.issue_token(SYSTEM, 'ada')}"})
    assert r.json["isps"][0]["versions_behind"] == 0


def test_nothing_published_yet_is_a_clear_404(client, core: Core, isp) -> None:
    r = client.get("/feed/v1/manifest.json", headers=auth(isp))
    assert r.status_code == 404 and "nothing has been published" in r.json["error"]


def test_api_publish_without_a_running_publisher_answers_503_and_withdraws_the_request(
        client, core: Core, personas: Personas, clock) -> None:
    e = core.curation.submit(personas.alice.actor, "api.example.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    r = client.post("/api/v1/publish", json={"reason": "urgent"}, headers=personas.bruno.headers)
    assert r.status_code == 202 and r.json["status"] == "requested"
    request_id = r.json["request"]
    clock.advance(core.settings.publish_answer_timeout + 1)
    late = client.get(f"/api/v1/publish/{request_id}", headers=personas.bruno.headers)
    assert late.status_code == 503
    assert late.json["error"].startswith("no publisher answered within 30 s")
    assert core.publisher.serve_request() is None
    assert core.latest_version() is None
    unknown = client.get("/api/v1/publish/0123456789abcdef", headers=personas.bruno.headers)
    assert unknown.status_code == 404


def test_a_publish_request_no_publisher_took_in_time_is_never_served_later(core: Core, personas: Personas) -> None:
    e = core.curation.submit(personas.alice.actor, "late.example.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    core.publisher.request(personas.bruno.actor, "nobody polls this one", timeout=1)
    time.sleep(6.5)  # the request lives its timeout plus 5 s
    assert core.publisher.serve_request() is None  # a publisher starting now does not act on it
    assert core.latest_version() is None


def test_publishing_over_the_api_needs_the_worker(client, core: Core, personas: Personas, isp) -> None:
    e = core.curation.submit(personas.alice.actor, "api.example.test")
    core.curation.act(personas.bruno.actor, e.id, "approve")
    r = client.post("/api/v1/publish", json={"reason": "urgent"}, headers=personas.bruno.headers)
    assert r.status_code == 202
    request_id = r.json["request"]
    outcome = core.publisher.serve_request()  # what the worker does within a second
    assert outcome is not None and outcome.status == "published"
    done = client.get(f"/api/v1/publish/{request_id}", headers=personas.bruno.headers)
    assert done.json["status"] == "published" and done.json["version"] == 1
    meta = client.get("/api/v1/publications/1", headers=personas.alice.headers).json
    assert meta["by"] == "bruno" and meta["reason"] == "urgent"
    diff = client.get("/api/v1/publications/1/diff", headers=personas.alice.headers).json
    assert diff["added"] is None  # the first version has nothing to compare with
    listing = client.get("/api/v1/publications", headers=personas.audrey.headers).json
    assert [p["version"] for p in listing["publications"]] == [1]
    assert json.loads(core.publisher.manifest()[0])["version"] == 1
