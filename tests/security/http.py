"""A small HTTP client for the security tests: real sockets, a cookie jar,
no redirect following, and answers for every status (4xx/5xx included).
This module holds no tests itself."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Any

_TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Answer:
    status: int
    headers: Any
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))


class Http:
    """One visitor: its own cookies, talking to ``base`` over a real socket."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None, body: Any = None,
                headers: dict[str, str] | None = None) -> Answer:
        data = None
        hdrs = dict(headers or {})
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with self.opener.open(req, timeout=30) as r:
                return Answer(r.status, r.headers, r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            with e:
                return Answer(e.code, e.headers, e.read().decode("utf-8", "replace"))

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def csrf(self, page: str = "/account") -> str:
        a = self.get(page)
        assert a.status == 200, (page, a.status)
        m = _TOKEN.search(a.text)
        assert m, f"no CSRF token on {page}"
        return m.group(1)

    def post_form(self, path: str, fields: dict[str, str], page: str = "/account") -> Answer:
        return self.request("POST", path, form={"csrf_token": self.csrf(page), **fields})

    def sign_in(self, name: str, password: str) -> Answer:
        return self.post_form("/login", {"username": name, "password": password}, page="/login")

    def api(self, method: str, path: str, token: str, body: Any = None) -> Answer:
        return self.request(method, "/api/v1" + path, body=body, headers={"Authorization": f"Bearer {token}"})
