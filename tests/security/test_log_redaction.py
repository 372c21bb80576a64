"""Feed tokens in request paths never reach nginx's logs.

Unbound-style clients put their feed token in the path
(``/feed/v1/t/<token>/...``). The shipped nginx site (deploy/nginx/) must
keep it out of the access log and the error log however the path is spelt:
percent-encoded, with doubled slashes, with dot segments, in another letter
case, with the token repeated in the query. Real nginx, in front of the real
app (the fixtures of tests/test_nginx.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from app.core import Core
from app.domain import SYSTEM
from app.embedded import free_port
from tests.conftest import LiveServer, Personas
from tests.test_nginx import (  # noqa: F401 (fixtures used by name)
    STOP_HOST,
    Nginx,
    offload_core,
    publish_list,
    shared_artifacts,
    stack,
)


def _logs(proxy: Nginx) -> dict[str, str]:
    """Every log file nginx wrote, by name."""
    return {p.name: p.read_text(errors="replace") for p in sorted((proxy.dir / "logs").glob("*.log"))}


def _leaks(proxy: Nginx, token: str) -> list[str]:
    body = token.removeprefix("blf_")
    return [f"{name}: {line}" for name, text in _logs(proxy).items() for line in text.splitlines()
            if token in line or body in line or body.lower() in line.lower()]


def _variants(token: str) -> list[str]:
    encoded = "".join(f"%{b:02X}" for b in token.encode())
    return [
        f"/feed/v1/t/{token}/rpz/latest.zone",
        f"/feed/v1/%74/{token}/rpz/latest.zone",
        f"//feed/v1/t/{token}/rpz/latest.zone",
        f"/feed//v1///t/{token}/manifest.json",
        f"/feed/v1/./t/{token}/manifest.json",
        f"/feed/v1/snapshots/../t/{token}/manifest.json",
        f"/x/../feed/v1/t/{token}/manifest.json",
        f"/FEED/V1/T/{token}/manifest.json",
        f"/Feed/v1/t/{token}/manifest.json",
        f"/feed%2Fv1%2Ft%2F{token}%2Fmanifest.json",
        f"/feed/v1/t/{encoded}/manifest.json",
        f"/%66eed/v1/t/{quote(token, safe='')}/manifest.json",
        f"/feed/v1/t/{token}/manifest.json?again={token}",
        f"/feed/v1/t/x/{token}/manifest.json",
        f"/feed/v1/manifest.json?token={token}",
    ]


def test_token_in_encoded_doubled_dotted_or_mixed_case_paths_never_reaches_the_logs(
    stack: tuple[Nginx, LiveServer], offload_core: Core, personas: Personas  # noqa: F811
) -> None:
    proxy, _server = stack
    publish_list(offload_core, personas, n=3)
    token = offload_core.isps.add(SYSTEM, "isp-logs")["feed_token"]
    variants = _variants(token)
    statuses = [proxy.get(path).status for path in variants]
    # The plain path works, so the token really travelled in these requests.
    assert statuses[0] == 200
    assert statuses[1] == 200  # %74 is "t": the app serves it too
    # The same paths over plain HTTP (redirected) and at the stop-page host.
    for path in variants[:8]:
        proxy.get(path, tls=False)
        proxy.get(path, host=STOP_HOST, tls=False)

    assert _leaks(proxy, token) == []
    access = proxy.access_log()
    assert access.count("[REDACTED]") >= len(variants) - 1  # the last one logs no query at all
    assert "/feed/v1/t/[REDACTED]/manifest.json" in access


def test_rate_limited_token_requests_leave_no_token_in_the_error_log(
    stack: tuple[Nginx, LiveServer], offload_core: Core  # noqa: F811
) -> None:
    proxy, _server = stack
    token = offload_core.isps.add(SYSTEM, "isp-burst")["feed_token"]
    statuses = [proxy.get(f"/feed/v1/t/{token}/manifest.json").status for _ in range(70)]
    statuses += [proxy.get(f"/FEED/v1/t/{token}/manifest.json").status for _ in range(10)]
    assert 429 in statuses
    assert _leaks(proxy, token) == []
    assert '"status":429' in proxy.access_log()


@pytest.fixture
def proxy_without_app(tmp_path: Path) -> Iterator[Nginx]:
    """nginx whose upstream does not answer: every proxied request fails with 502."""
    proxy = Nginx(tmp_path / "nginx", free_port(), tmp_path / "artifacts")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_token_requests_to_an_unreachable_app_leave_no_token_in_the_error_log(
    proxy_without_app: Nginx
) -> None:
    proxy = proxy_without_app
    token = "blf_" + "Q7" * 21 + "z"
    for path in _variants(token):
        assert proxy.get(path).status == 502
    assert _leaks(proxy, token) == []
    # The failures are still visible to the operator, without the token.
    assert '"status":502' in proxy.access_log()
    assert proxy.get("/api/v1/me").status == 502
    assert "connect() failed" in _logs(proxy)["blocklist.error.log"]
