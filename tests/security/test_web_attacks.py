"""Attacks on the web doors (stop page, sign-in, accounts, appeals), each
made over HTTP against the app on a real socket, backed by the real Redis of
the test session. Each test is named after the attack it withstands."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest

from app import audit
from app.clock import FakeClock
from app.core import Core
from app.web import create_app
from tests.conftest import PASSWORD, LiveServer, Personas, replace
from tests.security.http import Http

STOP_HOST = "stop.example.org"
STATEMENT = "I run this small bakery's website and it has never hosted anything illegal."


def _listed(core: Core, p: Personas, value: str, etype: str = "domain", subdomains: bool = True) -> int:
    entry = core.curation.submit(p.alice.actor, value, etype, subdomains, None, "seen", "case-1")
    core.curation.act(p.bruno.actor, entry.id, "approve")
    return entry.id


def _server(core: Core, **settings: Any) -> LiveServer:
    c = Core(settings=replace(core.settings, **settings), store=core.store, clock=core.clock)
    return LiveServer(create_app(core=c, test_config={"TESTING": True}))


@pytest.fixture
def stop_server(core: Core) -> Iterator[LiveServer]:
    with _server(core, stop_host=STOP_HOST, public_url="https://admin.example.org") as s:
        yield s


def _as_host(server: LiveServer, host: str, path: str = "/") -> Any:
    return Http(server.url).get(path, headers={"Host": host})


# --------------------------------------------------------------------------- the stop page accuses any site


@pytest.mark.parametrize("host", ["www.bbc.co.uk", f"www.bbc.co.uk.{STOP_HOST}", "WWW.BBC.CO.UK"])
def test_a_forged_host_header_does_not_get_an_unlisted_site_named_as_abuse(
    stop_server: LiveServer, core: Core, personas: Personas, host: str
) -> None:
    _listed(core, personas, "bad.example")
    a = _as_host(stop_server, host)
    assert a.status == 404
    assert "bbc" not in a.text.lower()
    assert "child sexual abuse" not in a.text
    assert "There is nothing to show for this address" in a.text
    assert a.headers["Cache-Control"] == "no-store"


def test_a_pending_or_delisted_entry_does_not_get_its_site_named(
    stop_server: LiveServer, core: Core, personas: Personas
) -> None:
    core.curation.submit(personas.alice.actor, "pending.example", "domain", True, None, "seen", "case-2")
    gone = _listed(core, personas, "gone.example")
    core.curation.act(personas.bruno.actor, gone, "delist", "the site changed hands")
    for host in ("pending.example", "gone.example"):
        a = _as_host(stop_server, host)
        assert a.status == 404, host
        assert host not in a.text
        assert "child sexual abuse" not in a.text


def test_a_parent_without_subdomains_does_not_get_its_subdomains_named(
    stop_server: LiveServer, core: Core, personas: Personas
) -> None:
    _listed(core, personas, "exact.example", subdomains=False)
    assert _as_host(stop_server, "exact.example").status == 451
    a = _as_host(stop_server, "shop.exact.example")
    assert a.status == 404
    assert "shop.exact.example" not in a.text


def test_a_listed_site_is_named_and_can_still_be_appealed(
    stop_server: LiveServer, core: Core, personas: Personas
) -> None:
    _listed(core, personas, "bad.example")
    for host in ("bad.example", "cdn.bad.example", f"cdn.bad.example.{STOP_HOST}"):
        a = _as_host(stop_server, host, "/any/path")
        assert a.status == 451, host
        name = host.removesuffix(f".{STOP_HOST}")
        assert f"The address you tried to reach: <strong>{name}</strong>" in a.text
        assert 'action="/stop/appeal#appeal"' in a.text
        assert f'value="{name}"' in a.text  # the appeal form names the site already


def test_a_url_entry_gets_only_its_own_url_named_not_the_whole_host(
    stop_server: LiveServer, core: Core, personas: Personas
) -> None:
    _listed(core, personas, "http://host.example/gallery/42", etype="url", subdomains=False)
    a = _as_host(stop_server, "host.example", "/gallery/42")
    assert a.status == 451
    assert "http://host.example/gallery/42" in a.text
    for path in ("/", "/gallery/43"):
        a = _as_host(stop_server, "host.example", path)
        assert a.status == 404, path
        assert "host.example" not in a.text


def test_one_address_cannot_test_the_confidential_list_name_by_name(core: Core, personas: Personas) -> None:
    _listed(core, personas, "bad.example")
    with _server(core, stop_host=STOP_HOST, public_url="https://admin.example.org", stop_names_per_hour=3,
                 trust_proxy=1) as server:
        prober = {"X-Forwarded-For": "198.51.100.66"}
        for i in range(3):
            a = Http(server.url).get("/", headers={"Host": f"guess{i}.example", **prober})
            assert a.status == 404
        a = Http(server.url).get("/", headers={"Host": "bad.example", **prober})
        assert a.status == 429
        assert "bad.example" not in a.text and "child sexual abuse" not in a.text
        # Someone else, sent there by their resolver, still gets the page naming the site.
        a = Http(server.url).get("/", headers={"Host": "bad.example", "X-Forwarded-For": "203.0.113.5"})
        assert a.status == 451
        assert "<strong>bad.example</strong>" in a.text


@pytest.mark.parametrize("host", ["192.0.2.1", "[2001:db8::1]", "-bad-.example", "xn--zz.example"])
def test_an_address_or_malformed_host_gets_the_neutral_page(stop_server: LiveServer, host: str) -> None:
    a = _as_host(stop_server, host)
    assert a.status == 404
    assert "child sexual abuse" not in a.text


@pytest.mark.parametrize("host", ["a..b", "bad.example.."])
def test_a_host_header_werkzeug_cannot_route_is_a_clear_400_not_a_server_error(
    live_server: LiveServer, stop_server: LiveServer, core: Core, personas: Personas, host: str
) -> None:
    _listed(core, personas, "bad.example")
    for server in (live_server, stop_server):
        a = _as_host(server, host)
        assert a.status == 400, (server.url, a.status)
        assert a.text == "The Host header is not a valid host name.\n"


# --------------------------------------------------------------------------- crafted user names


@pytest.mark.parametrize("crafted", ["sessions:{victim}", "user:{victim}", "{victim}:x", "tokens", "../{victim}",
                                     "al ice", "a" * 200])
def test_a_crafted_user_name_at_sign_in_is_refused_not_a_server_error(
    live_server: LiveServer, core: Core, personas: Personas, crafted: str
) -> None:
    victim = Http(live_server.url)
    assert victim.sign_in("alice", PASSWORD).status == 302  # alice now has a live session
    before = core.store.r.dbsize()
    a = Http(live_server.url).sign_in(crafted.format(victim="alice"), PASSWORD)
    assert a.status in (400, 401), a.text[:300]
    if a.status == 401:
        assert "wrong user name or password" in a.text
    assert victim.get("/").status == 200  # alice's session is untouched
    assert core.store.r.dbsize() <= before + 1  # at most the rate-limit counter of the address


@pytest.mark.parametrize("crafted", ["sessions:ada", "user:ada", "Ada", "tokens:x", "a b"])
def test_a_crafted_user_name_through_the_api_is_refused_with_a_clear_error(
    live_server: LiveServer, core: Core, personas: Personas, crafted: str
) -> None:
    http = Http(live_server.url)
    token = personas.ada.token
    quoted = crafted.replace(" ", "%20")
    a = http.api("POST", "/users", token, {"name": crafted, "role": "curator", "agency": "Programme"})
    assert a.status == 400
    assert "user name is 2-32 characters" in a.json()["error"]
    for method, path in (("POST", f"/users/{quoted}/disable"), ("POST", f"/users/{quoted}/token"),
                         ("PATCH", f"/users/{quoted}")):
        a = http.api(method, path, token, {"role": "vetter"})
        assert a.status in (400, 404), (path, a.status, a.text[:200])
        assert a.json()["error"]
    assert core.users.get("ada").disabled is False


def test_an_isp_named_like_the_token_index_cannot_corrupt_it(
    live_server: LiveServer, core: Core, personas: Personas
) -> None:
    http = Http(live_server.url)
    first = http.api("POST", "/isps", personas.ada.token, {"name": "first-isp"})
    assert first.status == 201, first.text
    crafted = http.api("POST", "/isps", personas.ada.token, {"name": "tokens"})
    assert crafted.status == 201, crafted.text
    # Both feed tokens work, and the ISP called "tokens" is an ordinary ISP.
    for created in (first.json(), crafted.json()):
        a = http.request("GET", "/feed/v1/manifest.json",
                         headers={"Authorization": f"Bearer {created['feed_token']}"})
        assert a.status not in (401, 403, 500), a.text[:200]  # the token is known (nothing published yet)
    shown = http.api("GET", "/isps/tokens", personas.ada.token)
    assert shown.status == 200
    assert shown.json()["name"] == "tokens"
    assert http.api("GET", "/isps", personas.ada.token).status == 200
    revoked = http.api("POST", "/isps/tokens/revoke", personas.ada.token, {"reason": "test"})
    assert revoked.status == 200
    a = http.request("GET", "/feed/v1/manifest.json",
                     headers={"Authorization": f"Bearer {first.json()['feed_token']}"})
    assert a.status not in (401, 403, 500), a.text[:200]


# --------------------------------------------------------------------------- a token alone becomes a password


def test_an_api_token_alone_cannot_change_its_own_password(
    live_server: LiveServer, core: Core, personas: Personas
) -> None:
    http = Http(live_server.url)
    a = http.api("POST", "/users/alice/password", personas.alice.token, {"password": "stolen token new pw"})
    assert a.status == 400
    assert "current" in a.json()["error"]
    a = http.api("POST", "/users/alice/password", personas.alice.token,
                 {"current": "a wrong guess here", "new": "stolen token new pw"})
    assert a.status == 403
    assert a.json()["error"] == "the current password is not right"
    assert Http(live_server.url).sign_in("alice", PASSWORD).status == 302
    assert Http(live_server.url).sign_in("alice", "stolen token new pw").status == 401


def test_guessing_the_current_password_with_a_stolen_token_locks_the_account(
    live_server: LiveServer, core: Core, personas: Personas
) -> None:
    http = Http(live_server.url)
    for i in range(core.settings.login_max_failures):
        a = http.api("POST", "/users/alice/password", personas.alice.token,
                     {"current": f"guess number {i:04d}", "new": "stolen token new pw"})
        assert a.status == 403
    assert core.users.get("alice").locked
    a = http.api("POST", "/users/alice/password", personas.alice.token,
                 {"current": PASSWORD, "new": "stolen token new pw"})
    assert a.status == 403 and "locked" in a.json()["error"]
    assert Http(live_server.url).sign_in("alice", "stolen token new pw").status == 401


def test_a_locked_account_stays_locked_when_its_holder_changes_the_password_by_token(
    live_server: LiveServer, core: Core, personas: Personas
) -> None:
    core.users.lock("alice")
    http = Http(live_server.url)
    a = http.api("POST", "/users/alice/password", personas.alice.token,
                 {"current": PASSWORD, "new": "a brand new passphrase"})
    assert a.status == 403
    assert "locked" in a.json()["error"]
    assert core.users.get("alice").locked
    assert "locked" in Http(live_server.url).sign_in("alice", PASSWORD).text


def test_a_token_holder_with_a_second_factor_needs_a_code_to_change_the_password(
    live_server: LiveServer, core: Core, personas: Personas, clock: FakeClock
) -> None:
    secret = _totp_on(core, "alice", clock)
    http = Http(live_server.url)
    body = {"current": PASSWORD, "new": "a brand new passphrase"}
    a = http.api("POST", "/users/alice/password", personas.alice.token, body)
    assert a.status == 403
    assert "code" in a.json()["error"]
    clock.advance(30)
    a = http.api("POST", "/users/alice/password", personas.alice.token,
                 dict(body, code=pyotp.TOTP(secret).at(clock())))
    assert a.status == 200, a.text
    assert Http(live_server.url).sign_in("alice", "a brand new passphrase").status == 302


def test_an_admin_reset_is_temporary_keeps_the_lock_and_must_be_changed_at_sign_in(
    live_server: LiveServer, core: Core, personas: Personas
) -> None:
    core.users.lock("carlos")
    http = Http(live_server.url)
    a = http.api("POST", "/users/carlos/password", personas.ada.token, {"reason": "forgot it"})
    assert a.status == 200
    assert a.headers["Cache-Control"] == "no-store"
    temporary = a.json()["temporary_password"]
    assert a.json()["locked"] is True
    assert a.json()["must_change_password"] is True
    carlos = Http(live_server.url)
    assert "locked" in carlos.sign_in("carlos", temporary).text
    assert http.api("POST", "/users/carlos/unlock", personas.ada.token, {"reason": "checked"}).status == 200
    assert carlos.sign_in("carlos", temporary).status == 302
    for path in ("/", "/entries", "/submit"):
        a = carlos.get(path)
        assert a.status == 302 and a.location.startswith("/account"), (path, a.status, a.location)
    new = "carlos chose this one"
    a = carlos.post_form("/account/password", {"current": temporary, "new": new, "confirm": new})
    assert a.status == 303
    assert carlos.get("/entries").status == 200
    assert core.users.get("carlos").must_change is False


def test_an_admin_cannot_skip_the_current_password_for_their_own_account(
    live_server: LiveServer, personas: Personas
) -> None:
    a = Http(live_server.url).api("POST", "/users/ada/password", personas.ada.token,
                                  {"password": "admin sets own pw"})
    assert a.status == 400
    assert Http(live_server.url).sign_in("ada", "admin sets own pw").status == 401


def test_agencies_cannot_be_changed_by_a_forged_post_or_by_someone_who_is_not_an_admin(
    live_server: LiveServer, core: Core, personas: Personas
) -> None:
    before = core.store.agencies.all_raw()
    admin = Http(live_server.url)
    assert admin.sign_in("ada", PASSWORD).status == 302
    a = admin.request("POST", "/agencies", form={"agency-name": "Forged Agency"})  # no CSRF token
    assert a.status == 400
    vera = Http(live_server.url)
    assert vera.sign_in("vera", PASSWORD).status == 302
    a = vera.post_form("/agencies", {"agency-name": "Vetters' Own Agency"})
    assert a.status == 403
    assert "as a vetter you may not manage user accounts; only admins may" in a.text
    a = vera.api("POST", "/agencies/rename", personas.vera.token, {"agency": "Agency A (UK)", "name": "Mine"})
    assert a.status == 403
    assert core.store.agencies.all_raw() == before


# --------------------------------------------------------------------------- TOTP replay


def _totp_on(core: Core, name: str, clock: FakeClock) -> str:
    from app.domain import Actor

    user = core.users.get(name)
    actor = Actor(name=user.name, role=user.role, agency=user.agency)
    uri = core.users.start_totp(actor, name)
    secret = re.search(r"secret=([A-Z2-7]+)", uri).group(1)  # type: ignore[union-attr]
    assert core.users.confirm_totp(actor, name, pyotp.TOTP(secret).at(clock()))
    return secret


def _code_step(http: Http, name: str, code: str) -> Any:
    assert http.sign_in(name, PASSWORD).status == 302
    return http.post_form("/login/code", {"code": code}, page="/login/code")


def test_a_used_totp_code_cannot_be_replayed_within_or_across_the_window(
    live_server: LiveServer, core: Core, personas: Personas, clock: FakeClock
) -> None:
    clock.now = float(int(time.time()) // 30 * 30 + 5)  # the service clock and the wall clock agree
    secret = _totp_on(core, "vera", clock)
    clock.advance(30)
    code = pyotp.TOTP(secret).at(clock())
    assert _code_step(Http(live_server.url), "vera", code).status == 302
    # The same code again, a moment later and after the 180 s any counter
    # of used codes might have had: refused while the code itself is valid.
    for wait in (1, 20):
        clock.advance(wait)
        a = _code_step(Http(live_server.url), "vera", code)
        assert a.status == 401, wait
        assert "already used" in a.text


def test_an_older_totp_code_is_refused_once_a_newer_one_was_used(
    live_server: LiveServer, core: Core, personas: Personas, clock: FakeClock
) -> None:
    clock.now = float(int(time.time()) // 30 * 30 + 5)
    secret = _totp_on(core, "vera", clock)
    clock.advance(60)
    newer = pyotp.TOTP(secret).at(clock())
    older = pyotp.TOTP(secret).at(clock() - 30)  # still inside the accepted window
    assert _code_step(Http(live_server.url), "vera", newer).status == 302
    a = _code_step(Http(live_server.url), "vera", older)
    assert a.status == 401
    clock.advance(30)
    assert _code_step(Http(live_server.url), "vera", pyotp.TOTP(secret).at(clock())).status == 302


def test_a_recovery_code_works_once_instead_of_a_totp_code(
    live_server: LiveServer, core: Core, personas: Personas, clock: FakeClock
) -> None:
    from app.domain import Actor

    user = core.users.get("vera")
    actor = Actor(name=user.name, role=user.role, agency=user.agency)
    uri = core.users.start_totp(actor, "vera")
    secret = re.search(r"secret=([A-Z2-7]+)", uri).group(1)  # type: ignore[union-attr]
    codes = core.users.confirm_totp(actor, "vera", pyotp.TOTP(secret).at(clock()))
    assert codes and len(codes) == 10
    assert _code_step(Http(live_server.url), "vera", codes[0].upper()).status == 302
    assert _code_step(Http(live_server.url), "vera", codes[0]).status == 401
    assert core.users.get("vera").recovery_left == 9
    assert any('"user.recovery_used"' in text for _, text in audit.iterate(core.store))


# --------------------------------------------------------------------------- appeals shut for everyone


def _appeal_page(http: Http) -> str:
    a = http.get("/stop")
    m = re.search(r'name="form_token" type="hidden" value="([^"]+)"', a.text)
    assert m
    return m.group(1)


def _send_appeal(http: Http, token: str, address: str, **fields: str) -> Any:
    form = {"domain": "bad.example", "contact": "owner@bakery.test", "statement": STATEMENT, "website": "",
            "form_token": token, **fields}
    return http.request("POST", "/stop/appeal", form=form, headers={"X-Forwarded-For": address})


@pytest.fixture
def appeal_server(core: Core, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    from app.web import public

    monkeypatch.setattr(public, "RATE_OVERALL", (3, 3600))
    monkeypatch.setattr(public, "RATE_PER_ADDRESS", (4, 3600))
    with _server(core, trust_proxy=1) as s:
        yield s


def test_junk_appeals_from_many_addresses_do_not_shut_the_form_for_everyone(
    appeal_server: LiveServer, core: Core, clock: FakeClock
) -> None:
    http = Http(appeal_server.url)
    token = _appeal_page(http)
    clock.advance(5)
    for i in range(10):
        junk = _send_appeal(http, token if i % 2 else "forged", f"198.51.100.{i}", statement="short")
        assert junk.status == 400
    a = _send_appeal(http, token, "203.0.113.7")
    assert a.status == 200, a.text[:400]
    assert "reference" in a.text.lower()


def test_a_replayed_appeal_form_does_not_count_against_everyone(
    appeal_server: LiveServer, core: Core, clock: FakeClock
) -> None:
    http = Http(appeal_server.url)
    token = _appeal_page(http)
    clock.advance(5)
    assert _send_appeal(http, token, "198.51.100.1").status == 200
    for i in range(6):
        again = _send_appeal(http, token, f"198.51.100.{10 + i}",
                             statement=STATEMENT + f" Said again, number {i}.")
        assert again.status == 409, again.text[:300]
    for i in range(2):
        fresh = _appeal_page(http)
        clock.advance(5)
        a = _send_appeal(http, fresh, f"203.0.113.{i}", statement=STATEMENT + f" Another site {i}.")
        assert a.status == 200, a.text[:300]
    # The limit for everyone does hold, for valid new appeals.
    fresh = _appeal_page(http)
    clock.advance(5)
    a = _send_appeal(http, fresh, "203.0.113.99", statement=STATEMENT + " One too many.")
    assert a.status == 429


def test_one_address_over_its_limit_is_stopped_before_it_reaches_the_limit_for_everyone(
    appeal_server: LiveServer, core: Core, clock: FakeClock
) -> None:
    http = Http(appeal_server.url)
    for i in range(4):
        token = _appeal_page(http)
        clock.advance(5)
        a = _send_appeal(http, token, "198.51.100.1", statement=STATEMENT + f" Take {i}.",
                         domain=f"site{i}.example")
        assert a.status == (200 if i < 3 else 429), (i, a.status)
    token = _appeal_page(http)
    clock.advance(5)
    a = _send_appeal(http, token, "198.51.100.1")
    assert a.status == 429
    assert "from here" in a.text
