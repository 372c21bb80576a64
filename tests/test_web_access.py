"""Every admin page refuses anonymous users and wrong roles, every form refuses
a missing CSRF token, and a view that declares no permission cannot ship."""

from __future__ import annotations

import pytest
from flask import Flask

from app.core import Core
from app.domain import PERMISSIONS, Role
from app.web.auth import GUARDED_BLUEPRINTS, SIGNED_IN, check_declared
from tests.conftest import Personas
from tests.test_web_helpers import csrf, signed_in, text

# Values for the variable parts of admin URLs.
SAMPLE_ARGS = {"entry_id": "1", "action": "approve", "name": "alice", "version": "1", "request_id": "0" * 16,
               "appeal_id": "1", "decision": "review"}


def admin_rules(app: Flask, method: str) -> list[tuple[str, str]]:
    """(url, endpoint) of every admin view answering ``method``."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".", 1)[0] not in GUARDED_BLUEPRINTS or method not in (rule.methods or ()):
            continue
        url = rule.rule
        for arg in rule.arguments:
            url = url.replace(f"<int:{arg}>", SAMPLE_ARGS[arg]).replace(f"<{arg}>", SAMPLE_ARGS[arg])
        out.append((url, rule.endpoint))
    return sorted(out)


def test_the_admin_has_the_pages_the_curators_need(app) -> None:
    urls = {u for u, _ in admin_rules(app, "GET")}
    for page in ("/", "/entries", "/entries/1", "/submit", "/vetting", "/reverify", "/appeals", "/allowlist",
                 "/users", "/isps", "/publications", "/audit", "/account"):
        assert page in urls, page


def test_every_admin_page_sends_anonymous_users_to_sign_in(app, client) -> None:
    pages = admin_rules(app, "GET")
    assert len(pages) >= 19
    for url, _ in pages:
        r = client.get(url)
        assert r.status_code == 302, url
        assert r.headers["Location"].startswith("/login?next="), url
        assert "<table" not in text(r)


def test_every_admin_form_refuses_anonymous_users_even_with_a_token(app, client, core: Core) -> None:
    token = csrf(client, "/login")
    before = core.store.audit.length()
    for url, _ in admin_rules(app, "POST"):
        r = client.post(url, data={"csrf_token": token, "reason": "x", "value": "example.com"})
        assert r.status_code == 401, url
    assert core.store.audit.length() == before


def needed(app: Flask, endpoint: str) -> str:
    permission: str = app.view_functions[endpoint]._permission
    return permission.format(**SAMPLE_ARGS)


@pytest.mark.parametrize("who", ["alice", "vera", "ada", "audrey"])
def test_every_admin_page_refuses_roles_without_its_permission(app, personas: Personas, who: str) -> None:
    persona = getattr(personas, who)
    client = signed_in(app.test_client(), persona)
    role = persona.user.role
    checked = 0
    for method in ("GET", "POST"):
        token = csrf(client)
        for url, endpoint in admin_rules(app, method):
            permission = needed(app, endpoint)
            if permission == SIGNED_IN or role in PERMISSIONS[permission]:
                continue
            if method == "GET":
                r = client.get(url)
            else:
                r = client.post(url, data={"csrf_token": token, "reason": "trying", "value": "example.com",
                                           "domain": "example.com", "name": "x", "role": "admin", "agency": "x"})
            assert r.status_code == 403, (who, method, url, r.status_code)
            assert "Not allowed" in text(r)
            checked += 1
    assert checked > 0


# Written out by hand, so that a wrong declaration in the code cannot hide itself.
REFUSED = [
    ("/users", ["alice", "carlos", "vera", "bruno", "audrey"]),
    ("/users/alice", ["alice", "vera", "audrey"]),
    ("/isps", ["alice", "vera"]),
    ("/audit", ["alice", "carlos", "vera", "bruno"]),
    ("/vetting", ["alice", "carlos", "ada", "audrey"]),
    ("/reverify", ["ada", "audrey"]),
    ("/submit", ["audrey"]),
    ("/appeals", ["audrey"]),
]
ALLOWED = [
    ("/users", ["ada"]), ("/isps", ["ada", "audrey"]), ("/audit", ["ada", "audrey"]),
    ("/vetting", ["vera", "bruno"]), ("/reverify", ["alice", "vera"]), ("/submit", ["alice", "vera", "ada"]),
    ("/appeals", ["alice", "vera", "ada"]), ("/entries", ["alice", "vera", "ada", "audrey"]),
    ("/publications", ["alice", "audrey"]), ("/allowlist", ["alice", "audrey"]), ("/account", ["audrey"]),
]


@pytest.mark.parametrize(("page", "who"), REFUSED)
def test_pages_refuse_these_roles(app, personas: Personas, page: str, who: list[str]) -> None:
    for name in who:
        client = signed_in(app.test_client(), getattr(personas, name))
        assert client.get(page).status_code == 403, (page, name)


@pytest.mark.parametrize(("page", "who"), ALLOWED)
def test_pages_admit_these_roles(app, personas: Personas, page: str, who: list[str]) -> None:
    for name in who:
        client = signed_in(app.test_client(), getattr(personas, name))
        assert client.get(page).status_code == 200, (page, name)


def test_the_menu_shows_only_what_the_role_may_open(app, personas: Personas) -> None:
    page = text(signed_in(app.test_client(), personas.alice).get("/"))
    assert 'href="/submit"' in page
    assert 'href="/reverify"' in page
    assert 'href="/users"' not in page
    assert 'href="/audit"' not in page
    assert 'href="/vetting"' not in page


def test_every_form_refuses_a_missing_csrf_token_and_changes_nothing(app, core: Core, personas: Personas) -> None:
    client = signed_in(app.test_client(), personas.ada)
    before = (core.store.audit.length(), core.store.audit.head())
    forms = admin_rules(app, "POST")
    assert len(forms) >= 20
    for url, _ in [*forms, ("/logout", "auth.logout"), ("/login", "auth.login")]:
        r = client.post(url, data={"reason": "no token", "value": "example.com", "domain": "example.com",
                                   "name": "eve", "role": "admin", "agency": "x", "username": "ada",
                                   "password": "x" * 20})
        assert r.status_code == 400, url
        assert "security token" in text(r), url
        forged = client.post(url, data={"csrf_token": "forged.token.value", "reason": "bad token"})
        assert forged.status_code == 400, url
    assert (core.store.audit.length(), core.store.audit.head()) == before
    assert client.get("/").status_code == 200  # still signed in: nothing was done


def test_an_admin_view_without_a_declared_permission_stops_the_app(app) -> None:
    app.add_url_rule("/undeclared", endpoint="admin.undeclared", view_func=lambda: "anything")
    with pytest.raises(RuntimeError, match=r"admin\.undeclared"):
        check_declared(app)


def test_admin_pages_carry_the_security_headers(app, personas: Personas) -> None:
    client = signed_in(app.test_client(), personas.ada)
    for page in ("/", "/entries", "/users", "/login"):
        r = client.get(page)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Cache-Control"] == "no-store"
        body = text(r)
        assert "<script>" not in body
        assert " style=" not in body
        assert " on" + "click=" not in body


def test_no_role_beyond_the_four_exists() -> None:
    # The tables above name every role; a new one must be added to them.
    assert {r.value for r in Role} == {"admin", "curator", "vetter", "auditor"}


def test_the_bearer_token_api_needs_no_csrf_token_and_ignores_the_session(app, core: Core, personas: Personas) -> None:
    client = app.test_client()
    r = client.post("/api/v1/entries", json={"value": "api.example", "type": "domain"}, headers=personas.alice.headers)
    assert r.status_code == 201
    # A browser session alone does not open the API: it needs its bearer token.
    browser = signed_in(app.test_client(), personas.alice)
    assert browser.get("/api/v1/entries").status_code == 401
    assert "Set-Cookie" not in client.get("/api/v1/entries", headers=personas.alice.headers).headers
