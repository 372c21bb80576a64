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


def test_the_walkthrough_script_passes_against_a_live_service(live_server, core, settings) -> None:
    """scripts/api_walkthrough.py, the README's HTTP-only demonstration, run for real."""
    import os
    import subprocess
    import sys

    from app.domain import SYSTEM

    core.users.add(SYSTEM, "boss", "admin", "Programme")
    token = core.users.issue_token(SYSTEM, "boss")
    r = subprocess.run([sys.executable, "scripts/api_walkthrough.py", "--url", live_server.url, "--admin-token",
                        token], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failure(s)" in r.stdout
    assert r.stdout.count("PASS") == 16
    assert "FAIL" not in r.stdout
