"""A feed request over plain HTTP is refused, never redirected.

Redirected, a client configured with ``http://`` would keep working and keep
sending its token in clear on every pull; refused, the mistake shows at
once. Real nginx with the shipped site (fixtures of tests/test_nginx.py).
"""

from __future__ import annotations

from app.core import Core
from app.domain import SYSTEM
from tests.conftest import LiveServer
from tests.test_nginx import Nginx, offload_core, shared_artifacts, stack  # noqa: F401 (fixtures)


def test_a_feed_request_over_plain_http_is_refused_and_not_redirected_to_https(
    stack: tuple[Nginx, LiveServer], offload_core: Core  # noqa: F811
) -> None:
    proxy, _server = stack
    token = offload_core.isps.add(SYSTEM, "isp-plain")["feed_token"]
    for path, headers in ((f"/feed/v1/t/{token}/rpz/latest.zone", {}),
                          ("/feed/v1/manifest.json", {"Authorization": f"Bearer {token}"}),
                          (f"/FEED/v1/t/{token}/manifest.json", {})):
        answer = proxy.get(path, headers, tls=False)
        assert answer.status == 403, (path, answer.status)
        assert "location" not in answer.headers
        assert b"HTTPS only" in answer.body
    # Everything else still moves to HTTPS.
    assert proxy.get("/login", tls=False).status == 301
    assert token not in proxy.access_log()
