"""Helpers shared by the web tests (this module holds no tests itself).

A test signs in the way a browser does: it loads a page, takes the CSRF
token from its form, and posts the form with it.
"""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import PASSWORD, Persona

_TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def token_in(html: str) -> str:
    m = _TOKEN.search(html)
    assert m, "the page has no CSRF token"
    return m.group(1)


def csrf(client: Any, page: str = "/account") -> str:
    """A CSRF token of the client's session, taken from a page's form."""
    r = client.get(page)
    assert r.status_code == 200, (page, r.status_code)
    return token_in(r.get_data(as_text=True))


def sign_in(client: Any, who: Persona | str, password: str = PASSWORD, **kw: Any) -> Any:
    """Post the sign-in form as a browser would; returns the answer (not followed)."""
    name = who if isinstance(who, str) else who.name
    token = csrf(client, "/login")
    return client.post("/login", data={"csrf_token": token, "username": name, "password": password}, **kw)


def signed_in(client: Any, who: Persona) -> Any:
    r = sign_in(client, who)
    assert r.status_code == 302, r.get_data(as_text=True)[:2000]
    return client


def post(client: Any, path: str, data: dict[str, Any] | None = None, **kw: Any) -> Any:
    """Post a form with a valid CSRF token of the client's session."""
    form = {"csrf_token": csrf(client), **(data or {})}
    return client.post(path, data=form, **kw)


def text(r: Any) -> str:
    return str(r.get_data(as_text=True))


def flashes(client: Any, page: str = "/") -> str:
    """The text of the page the client lands on (where messages are shown)."""
    return text(client.get(page))
