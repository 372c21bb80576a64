"""The must-show script of the curation core, through the HTTP API only."""

from __future__ import annotations

from tests.conftest import Personas


def test_the_four_eyes_walkthrough(client, personas: Personas) -> None:
    p = personas
    r = client.post("/api/v1/entries", json={"value": "Example.TEST.", "type": "domain", "subdomains": True,
                                             "category": "csam", "reason": "seen", "evidence_ref": "case-1"},
                    headers=p.alice.headers)
    assert r.status_code == 201, r.json
    entry = r.json
    assert entry["value"] == "example.test"
    assert entry["status"] == "pending"
    eid = entry["id"]
    r = client.post(f"/api/v1/entries/{eid}/approve", json={}, headers=p.alice.headers)
    assert r.status_code == 403
    r = client.post(f"/api/v1/entries/{eid}/approve", json={}, headers=p.vera.headers)
    assert r.status_code == 403
    assert "another agency" in r.json["error"]
    r = client.post(f"/api/v1/entries/{eid}/approve", json={}, headers=p.bruno.headers)
    assert r.status_code == 200
    assert r.json["status"] == "active"
