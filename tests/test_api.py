"""The curator JSON API: authentication, roles, errors, atomicity, and its OpenAPI contract."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import pytest

from app.core import Core
from app.domain import SYSTEM
from tests.conftest import Personas


def routes(app) -> list[tuple[str, str, str]]:
    """(method, flask rule, OpenAPI path) of every API route."""
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule[len("/api/v1"):])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, path))
    return out


def concrete(rule: str) -> str:
    values = {"entry_id": "1", "action": "approve", "name": "alice", "domain": "x.test", "version": "1",
              "decision": "release", "request_id": "abc"}
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: values[m.group(1)], rule)


def test_the_openapi_document_describes_every_route(app, client) -> None:
    doc = json.loads(files("app").joinpath("openapi.json").read_text())
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    served = {(m, path) for m, _, path in routes(app)}
    assert served == documented
    assert client.get("/api/v1/openapi.json").json["openapi"].startswith("3.")


def test_every_route_refuses_anonymous_and_unknown_tokens(app, client, personas: Personas) -> None:
    for method, rule, _ in routes(app):
        if rule.endswith("openapi.json"):
            continue
        for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": f"Bearer {personas.outsider_token}"}):
            r = client.open(concrete(rule), method=method, headers=headers, json={})
            assert r.status_code == 401, (method, rule, r.status_code)
            assert "error" in r.json


def test_a_disabled_user_is_out_at_once(client, core: Core, personas: Personas) -> None:
    assert client.get("/api/v1/me", headers=personas.alice.headers).status_code == 200
    core.users.set_disabled(personas.ada.actor, "alice", True, "left the unit")
    r = client.get("/api/v1/me", headers=personas.alice.headers)
    assert r.status_code == 403 and "disabled" in r.json["error"]


@pytest.mark.parametrize(("who", "method", "path", "payload"), [
    ("audrey", "POST", "/api/v1/entries", {"value": "x.example.test"}),
    ("alice", "GET", "/api/v1/audit", None),
    ("bruno", "GET", "/api/v1/audit/verify", None),
    ("bruno", "POST", "/api/v1/allowlist", {"domain": "x.test"}),
    ("alice", "DELETE", "/api/v1/allowlist/x.test", None),
    ("bruno", "GET", "/api/v1/users", None),
    ("alice", "POST", "/api/v1/users", {"name": "eve", "role": "admin", "agency": "x"}),
    ("bruno", "POST", "/api/v1/users/alice/disable", {}),
    ("alice", "POST", "/api/v1/users/bruno/token", {}),
    ("vera", "PUT", "/api/v1/settings", {"reverify_days": 5}),
    ("alice", "POST", "/api/v1/publish", {}),
    ("audrey", "POST", "/api/v1/publish", {}),
    ("bruno", "POST", "/api/v1/publications/held/release", {"reason": "x"}),
    ("alice", "GET", "/api/v1/isps", None),
    ("audrey", "POST", "/api/v1/isps", {"name": "acme"}),
    ("bruno", "POST", "/api/v1/isps/acme/revoke", {}),
    ("carlos", "POST", "/api/v1/import", None),
])
def test_roles_are_enforced_on_the_server(client, personas: Personas, who, method, path, payload) -> None:
    p = getattr(personas, who)
    kwargs = {"json": payload} if payload is not None else {}
    if path.endswith("/import") and who == "carlos":
        # curators may import; the auditor may not
        p = personas.audrey
        kwargs = {"data": b"x.example.test\n"}
    r = client.open(path, method=method, headers=p.headers, **kwargs)
    assert r.status_code == 403, (r.status_code, r.json)
    assert r.json["error"]


def test_self_and_same_agency_approval_are_refused_over_http(client, personas: Personas) -> None:
    eid = client.post("/api/v1/entries", json={"value": "four.example.test"}, headers=personas.vera.headers).json["id"]
    for p in (personas.vera, personas.alice):
        r = client.post(f"/api/v1/entries/{eid}/approve", json={}, headers=p.headers)
        assert r.status_code == 403
    r = client.post(f"/api/v1/entries/{eid}/approve", json={}, headers=personas.bruno.headers)
    assert r.json["status"] == "active" and r.json["approved_by"] == "bruno"


@pytest.mark.parametrize(("value", "etype", "status", "fragment"), [
    ("com", "domain", 422, "top-level"),
    ("co.uk", "domain", 422, "public suffix"),
    ("192.0.2.1", "domain", 422, "IP address"),
    ("http://[2001:db8::1]/", "url", 422, "IP address"),
    ("seeded.example", "domain", 422, "allowlist"),
    ("not a domain", "domain", 400, "white space"),
    ("x.test", "ftp", 400, "type"),
    ("", "domain", 400, "empty"),
])
def test_refusals_say_why_and_store_nothing(client, core: Core, personas: Personas, value, etype, status,
                                            fragment) -> None:
    core.curation.allowlist_add(SYSTEM, "seeded.example")
    r = client.post("/api/v1/entries", json={"value": value, "type": etype}, headers=personas.alice.headers)
    assert r.status_code == status
    assert fragment.lower() in r.json["error"].lower()
    assert sum(core.curation.counts().values()) == 0


def test_malformed_requests_get_clear_json_errors(client, personas: Personas) -> None:
    h = personas.alice.headers
    r = client.post("/api/v1/entries", data="{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json["error"]
    r = client.post("/api/v1/entries", json=["a list"], headers=h)
    assert r.status_code == 400
    r = client.post("/api/v1/entries", json={"value": 5}, headers=h)
    assert r.status_code == 400
    r = client.post("/api/v1/entries", json={"value": "x.test", "subdomains": "perhaps"}, headers=h)
    assert r.status_code == 400
    assert client.get("/api/v1/entries/999999", headers=h).status_code == 404
    assert client.post("/api/v1/entries/1/explode", json={}, headers=h).status_code == 400
    assert client.get("/api/v1/entries?page=zero", headers=h).status_code == 400
    assert client.get("/api/v1/nothing", headers=h).json == {"error": "there is nothing at this address"}
    r = client.delete("/api/v1/entries", headers=h)
    assert r.status_code == 405 and "not allowed" in r.json["error"]


def test_bulk_approval_over_http_is_all_or_nothing(client, core: Core, personas: Personas) -> None:
    ids = [client.post("/api/v1/entries", json={"value": f"b{i}.example.test"}, headers=personas.alice.headers)
           .json["id"] for i in range(3)]
    r = client.post("/api/v1/entries/approve", json={"ids": [*ids, 424242]}, headers=personas.bruno.headers)
    assert r.status_code == 409
    assert core.curation.counts()["active"] == 0
    r = client.post("/api/v1/entries/approve", json={"ids": ids}, headers=personas.bruno.headers)
    assert sorted(r.json["approved"]) == sorted(ids)


def test_import_over_http_reports_refused_lines(client, core: Core, personas: Personas) -> None:
    r = client.post("/api/v1/import?source=list.txt", data=b"a.example.test\ncom\nb.example.test\n",
                    headers=personas.carlos.headers)
    assert r.status_code == 201
    assert r.json["accepted"] == 2
    assert r.json["refused"] == [{"line": 2, "value": "com", "reason": "com is a top-level domain"}]
    r = client.post("/api/v1/import", data={"file": (__import__("io").BytesIO(b"\xff\xfe"), "x.txt")},
                    headers=personas.carlos.headers)
    assert r.status_code == 400 and "UTF-8" in r.json["error"]


def test_listing_and_audit_over_http(client, personas: Personas) -> None:
    h = personas.alice.headers
    for i in range(3):
        client.post("/api/v1/entries", json={"value": f"l{i}.example.test", "reason": "r"}, headers=h)
    r = client.get("/api/v1/entries?status=pending&per_page=2", headers=h)
    assert r.json["total"] == 3 and len(r.json["entries"]) == 2 and r.json["next_offset"] == 2
    r = client.get("/api/v1/audit?action=entry.submit", headers=personas.audrey.headers)
    assert [x["actor"] for x in r.json["records"]] == ["alice"] * 3
    r = client.get("/api/v1/audit/verify", headers=personas.audrey.headers)
    assert r.json["ok"] is True


def test_users_and_tokens_over_http(client, personas: Personas) -> None:
    a = personas.ada.headers
    r = client.post("/api/v1/users", json={"name": "nina", "role": "vetter", "agency": "Agency C"}, headers=a)
    assert r.status_code == 400 and "no agency 'Agency C' on the list" in r.json["error"]
    assert client.post("/api/v1/agencies", json={"name": "Agency C"}, headers=a).status_code == 201
    r = client.post("/api/v1/users", json={"name": "nina", "role": "vetter", "agency": "agency c"}, headers=a)
    assert r.status_code == 201 and r.json["role"] == "vetter" and r.json["agency"] == "Agency C"
    token = client.post("/api/v1/users/nina/token", headers=a).json["token"]
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json["name"] == "nina"
    new = client.post("/api/v1/users/nina/token", headers=a).json["token"]
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    r = client.post("/api/v1/users", json={"name": "nina", "role": "vetter", "agency": "C"}, headers=a)
    assert r.status_code == 409
    r = client.post("/api/v1/users", json={"name": "Bad Name", "role": "vetter", "agency": "C"}, headers=a)
    assert r.status_code == 400
    r = client.post("/api/v1/users", json={"name": "x1", "role": "root", "agency": "C"}, headers=a)
    assert r.status_code == 400 and "role" in r.json["error"]
