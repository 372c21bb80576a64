"""The onboarding bundle with secrets: only for admins, only with the ISP's
current credentials, only with a CSRF token; and every download is audited.

The server keeps no clear secret to put in a bundle: the page shown right
after creation or rotation sends the ones it showed back, and the server
checks them (the token against its hash) before it builds anything.
"""

from __future__ import annotations

from typing import Any

from app import audit
from app.core import Core
from tests.conftest import Personas
from tests.test_isp_onboarding import add_isp, download_with_secrets
from tests.test_web_admin import secret_values
from tests.test_web_helpers import csrf, post, signed_in, text


def downloads(core: Core) -> int:
    return len(audit.search(core.store, action="isp.bundle")[0])


def refused(r: Any) -> bool:
    return r.status_code in (400, 401, 403) and r.headers.get("Content-Type") != "application/zip"


def test_guessed_credentials_do_not_make_a_bundle_with_secrets(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    page, secrets = add_isp(ada, "acme")
    guessed = {"feed_token": "blf_" + "A" * 43, "tsig_secret": secrets["tsig_secret"]}
    r = download_with_secrets(ada, "acme", page, guessed)
    assert refused(r)
    assert "not the current credentials of acme" in text(r)
    r = download_with_secrets(ada, "acme", page, {"tsig_secret": "AAAA" + secrets["tsig_secret"][4:]})
    assert refused(r)
    r = download_with_secrets(ada, "acme", page, {})
    assert refused(r)
    assert downloads(core) == 0


def test_credentials_replaced_by_a_rotation_no_longer_make_a_bundle(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    page, old = add_isp(ada, "acme")
    rotated = post(ada, "/isps/acme/rotate", {"token": "y", "tsig": "y", "reason": "leaked"})
    assert secret_values(text(rotated))[0] != old["feed_token"]
    assert refused(download_with_secrets(ada, "acme", page, old))
    assert refused(download_with_secrets(ada, "acme", page, {"feed_token": old["feed_token"]}))
    assert downloads(core) == 0


def test_another_isps_credentials_do_not_make_a_bundle(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    page, _ = add_isp(ada, "acme")
    _, other = add_isp(ada, "globex")
    assert refused(download_with_secrets(ada, "acme", page, other))
    assert downloads(core) == 0


def test_an_auditor_gets_no_bundle_with_secrets_and_no_secret_in_the_plain_one(
        app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    _, secrets = add_isp(ada, "acme")
    audrey = signed_in(app.test_client(), personas.audrey)
    r = audrey.post("/isps/acme/bundle.zip", data={"csrf_token": csrf(audrey), **secrets})
    assert refused(r)
    assert downloads(core) == 0
    plain = audrey.get("/isps/acme/bundle.zip")
    assert plain.status_code == 200
    assert secrets["feed_token"].encode() not in plain.data
    assert downloads(core) == 1


def test_a_bundle_request_without_a_csrf_token_is_refused(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    _, secrets = add_isp(ada, "acme")
    assert refused(ada.post("/isps/acme/bundle.zip", data=secrets))
    assert refused(ada.post("/isps/acme/bundle.zip", data={"csrf_token": "forged", **secrets}))
    assert downloads(core) == 0


def test_signed_out_visitors_and_curators_get_no_onboarding(app, core: Core, personas: Personas) -> None:
    ada = signed_in(app.test_client(), personas.ada)
    add_isp(ada, "acme")
    anonymous = app.test_client()
    alice = signed_in(app.test_client(), personas.alice)
    for client in (anonymous, alice):
        for path in ("/isps/acme/onboarding", "/isps/acme/bundle.zip"):
            r = client.get(path)
            assert r.status_code in (302, 303, 401, 403), (path, r.status_code)
            assert r.headers.get("Content-Type") != "application/zip"
    assert downloads(core) == 0
