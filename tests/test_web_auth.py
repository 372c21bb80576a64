"""Sign-in: passwords, lock-out, throttling, sessions and the second factor."""

from __future__ import annotations

import time

import pyotp
import pytest

from app.clock import FakeClock
from app.core import Core
from app.web import create_app
from app.web.sessions import PLAIN_COOKIE, SECURE_COOKIE, storage_id
from tests.conftest import PASSWORD, Personas, replace
from tests.test_web_helpers import csrf, post, sign_in, signed_in, text


def session_cookie(client, name: str = PLAIN_COOKIE) -> str | None:
    cookie = client.get_cookie(name)
    return None if cookie is None else cookie.value


def test_a_curator_signs_in_and_sees_the_dashboard(client, personas: Personas) -> None:
    r = client.get("/")
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/login")
    r = sign_in(client, personas.alice, follow_redirects=True)
    assert r.status_code == 200
    assert "<h1>Dashboard</h1>" in text(r)
    assert "alice" in text(r)


def test_the_session_cookie_is_httponly_strict_and_holds_only_an_id(client, core: Core, personas: Personas) -> None:
    r = sign_in(client, personas.alice)
    header = r.headers["Set-Cookie"]
    assert "HttpOnly" in header
    assert "SameSite=Strict" in header
    assert "Expires" not in header  # a browser session cookie; the server enforces the limits
    sid = session_cookie(client)
    assert sid
    assert len(sid) == 43
    assert core.store.sessions.get(sid) is None  # stored under its digest, not the id itself
    assert "alice" in (core.store.sessions.get(storage_id(sid)) or "")


def test_over_https_the_cookie_is_secure_and_host_only(core: Core, personas: Personas) -> None:
    app = create_app(core=replace_core(core, cookie_secure=True), test_config={"TESTING": True})
    client = app.test_client()
    base = "https://admin.example.org"
    r = client.get("/login", base_url=base)
    token = r.get_data(as_text=True).split('name="csrf_token" type="hidden" value="', 1)[1].split('"', 1)[0]
    r = client.post("/login", base_url=base, data={"csrf_token": token, "username": "alice", "password": PASSWORD},
                    headers={"Referer": base + "/login"})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    header = r.headers["Set-Cookie"]
    assert header.startswith(SECURE_COOKIE + "=")
    assert "Secure" in header
    assert "HttpOnly" in header
    assert "Domain" not in header
    # The referrer of form posts stays on the site, so the HTTPS referrer check can work.
    assert client.get("/", base_url=base).headers["Referrer-Policy"] == "same-origin"


def replace_core(core: Core, **settings: object) -> Core:
    return Core(settings=replace(core.settings, **settings), store=core.store, clock=core.clock)


def test_an_unknown_user_and_a_wrong_password_get_the_same_answer(client, personas: Personas) -> None:
    wrong = sign_in(client, personas.alice, "not the password at all")
    unknown = sign_in(client, "nobody", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    assert alert(wrong) == alert(unknown) == "wrong user name or password"


def alert(r) -> str:
    return text(r).split('role="alert">', 1)[1].split("<", 1)[0]


def test_the_tenth_wrong_password_locks_the_account_until_an_admin_unlocks_it(
    app, core: Core, personas: Personas
) -> None:
    client = app.test_client()
    for n in range(1, 10):
        r = sign_in(client, personas.alice, f"wrong password {n}")
        assert r.status_code == 401
        assert not core.users.get("alice").locked, f"locked after {n} failures"
    r = sign_in(client, personas.alice, "wrong password 10")
    assert r.status_code == 401
    assert core.users.get("alice").locked
    # Even the right password is refused now, with a message that says why.
    r = sign_in(client, personas.alice)
    assert r.status_code == 401
    assert "locked" in text(r)
    records = [r for r in core.store.audit.range() if '"user.lock"' in r[1]]
    assert len(records) == 1
    # An admin unlocks the account on its page; alice gets in again.
    admin = signed_in(app.test_client(), personas.ada)
    page = text(admin.get("/users/alice"))
    assert "locked after repeated failed sign-ins" in page
    r = post(admin, "/users/alice/unlock", {"reason": "she called the helpdesk"}, follow_redirects=True)
    assert "alice is unlocked" in text(r)
    assert sign_in(client, personas.alice).status_code == 302


def test_a_successful_sign_in_resets_the_failure_count(client, core: Core, personas: Personas) -> None:
    for n in range(9):
        sign_in(client, personas.alice, f"wrong {n}")
    assert sign_in(client, personas.alice).status_code == 302
    client.post("/logout", data={"csrf_token": csrf(client)})
    for n in range(9):
        sign_in(client, personas.alice, f"wrong again {n}")
    assert not core.users.get("alice").locked


def test_each_address_may_try_only_so_often(core: Core, personas: Personas) -> None:
    app = create_app(core=core, test_config={"TESTING": True, "LOGIN_RATE": (3, 60)})
    client = app.test_client()
    if time.time() % 60 > 50:  # the limit counts in fixed one-minute windows
        time.sleep(61 - time.time() % 60)
    statuses = [sign_in(client, "nobody", f"guess number {i}").status_code for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    r = sign_in(client, personas.alice)
    assert r.status_code == 429
    assert "Too many sign-in attempts" in text(r)


def test_signing_in_gives_a_new_session_id_and_the_old_one_stops_working(
    client, core: Core, personas: Personas
) -> None:
    client.get("/login")
    before = session_cookie(client)
    assert before
    sign_in(client, personas.alice)
    after = session_cookie(client)
    assert after
    assert after != before
    assert core.store.sessions.get(storage_id(before)) is None


def test_signing_out_ends_the_session_for_good(app, client, personas: Personas) -> None:
    signed_in(client, personas.alice)
    sid = session_cookie(client)
    r = client.post("/logout", data={"csrf_token": csrf(client)}, follow_redirects=True)
    assert "You are signed out" in text(r)
    thief = app.test_client()
    thief.set_cookie(PLAIN_COOKIE, sid or "")
    assert thief.get("/").status_code == 302


def test_sign_out_needs_the_csrf_token(client, personas: Personas) -> None:
    signed_in(client, personas.alice)
    assert client.post("/logout").status_code == 400
    assert client.get("/").status_code == 200


def test_a_session_ends_after_the_idle_time(client, clock: FakeClock, core: Core, personas: Personas) -> None:
    signed_in(client, personas.alice)
    clock.advance(core.settings.session_idle - 60)
    assert client.get("/").status_code == 200
    clock.advance(core.settings.session_idle + 1)
    r = client.get("/")
    assert r.status_code == 302
    assert "Your session ended" in text(client.get(r.headers["Location"]))


def test_a_session_ends_after_the_absolute_time_however_busy(
    client, clock: FakeClock, core: Core, personas: Personas
) -> None:
    signed_in(client, personas.alice)
    step = core.settings.session_idle // 2
    elapsed = 0
    while elapsed + step < core.settings.session_max:
        clock.advance(step)
        elapsed += step
        assert client.get("/").status_code == 200, f"signed out after {elapsed} s"
    clock.advance(step)
    assert client.get("/").status_code == 302


def test_a_disabled_user_is_out_at_once(app, client, personas: Personas) -> None:
    signed_in(client, personas.alice)
    admin = signed_in(app.test_client(), personas.ada)
    r = post(admin, "/users/alice/disable", {"reason": "left the unit"}, follow_redirects=True)
    assert "alice is disabled" in text(r)
    assert client.get("/").status_code == 302
    assert "disabled" in text(sign_in(client, personas.alice))


def test_a_role_change_ends_the_sessions_and_takes_effect(app, client, personas: Personas) -> None:
    signed_in(client, personas.vera)
    assert client.get("/vetting").status_code == 200
    admin = signed_in(app.test_client(), personas.ada)
    post(admin, "/users/vera/edit", {"role": "curator", "agency": personas.vera.user.agency, "reason": "moved"})
    assert client.get("/vetting").status_code == 302  # signed out
    signed_in(client, personas.vera)
    assert client.get("/vetting").status_code == 403


def test_after_sign_in_the_person_lands_where_they_were_going(client, personas: Personas) -> None:
    client.get("/entries?status=active", follow_redirects=True)
    r = sign_in(client, personas.alice)
    assert r.headers["Location"] == "/entries?status=active"


def test_sign_in_never_sends_people_to_another_site(client, personas: Personas) -> None:
    client.get("/login?next=//evil.example/phish")
    assert sign_in(client, personas.alice).headers["Location"] == "/"
    client.post("/logout", data={"csrf_token": csrf(client)})
    client.get("/login?next=https://evil.example/")
    assert sign_in(client, personas.alice).headers["Location"] == "/"


# --------------------------------------------------------------------------- second factor


def set_up_totp(client, clock: FakeClock) -> str:
    r = post(client, "/account/mfa")
    assert r.status_code == 200
    secret = text(r).split('id="totp-secret">', 1)[1].split("<", 1)[0]
    r = post(client, "/account/mfa/confirm", {"code": pyotp.TOTP(secret).at(clock())}, follow_redirects=True)
    assert "Second factor on" in text(r)
    clock.advance(30)  # the code that turned it on is spent; the next one signs in
    return secret


def test_with_a_second_factor_the_password_alone_is_not_enough(
    app, core: Core, personas: Personas, clock: FakeClock
) -> None:
    client = signed_in(app.test_client(), personas.vera)
    secret = set_up_totp(client, clock)
    assert core.users.get("vera").totp_enabled
    client.post("/logout", data={"csrf_token": csrf(client)})

    r = sign_in(client, personas.vera)
    assert r.headers["Location"] == "/login/code"
    assert client.get("/").status_code == 302  # not signed in yet
    token = csrf(client, "/login/code")
    r = client.post("/login/code", data={"csrf_token": token, "code": "000000"})
    assert r.status_code == 401
    assert "not right" in text(r)
    code = pyotp.TOTP(secret).at(clock())
    r = client.post("/login/code", data={"csrf_token": token, "code": code})
    assert r.status_code == 302
    assert client.get("/").status_code == 200
    # The same code cannot be used a second time.
    client.post("/logout", data={"csrf_token": csrf(client)})
    sign_in(client, personas.vera)
    r = client.post("/login/code", data={"csrf_token": csrf(client, "/login/code"), "code": code})
    assert r.status_code == 401


def test_wrong_codes_count_towards_the_lock_out(app, core: Core, personas: Personas, clock: FakeClock) -> None:
    client = signed_in(app.test_client(), personas.vera)
    set_up_totp(client, clock)
    client.post("/logout", data={"csrf_token": csrf(client)})
    for _ in range(2):
        sign_in(client, personas.vera)
        for _ in range(5):
            client.post("/login/code", data={"csrf_token": csrf(client, "/login/code"), "code": "123456"})
    assert core.users.get("vera").locked


def test_admins_must_set_up_a_second_factor_when_required(core: Core, personas: Personas, clock: FakeClock) -> None:
    strict = replace_core(core, require_mfa=True)
    client = create_app(core=strict, test_config={"TESTING": True}).test_client()
    signed_in(client, personas.ada)
    r = client.get("/users")
    assert r.status_code == 302
    assert r.headers["Location"] == "/account"
    assert "Admins must set up a second factor" in text(client.get("/account"))
    set_up_totp(client, clock)
    assert client.get("/users").status_code == 200
    # Other roles are not forced.
    other = create_app(core=strict, test_config={"TESTING": True}).test_client()
    signed_in(other, personas.alice)
    assert other.get("/entries").status_code == 200


def test_changing_the_password_needs_the_current_one_and_signs_out_everywhere_else(
    app, client, core: Core, personas: Personas
) -> None:
    signed_in(client, personas.alice)
    elsewhere = signed_in(app.test_client(), personas.alice)
    new = "a much longer new passphrase"
    r = post(client, "/account/password", {"current": "not it", "new": new, "confirm": new})
    assert r.status_code == 400
    assert "current password is not right" in text(r)
    r = post(client, "/account/password", {"current": PASSWORD, "new": new, "confirm": new})
    assert r.status_code == 303
    assert elsewhere.get("/").status_code == 302
    assert client.get("/").status_code == 200  # this browser goes on in a new session
    assert sign_in(app.test_client(), personas.alice, new).status_code == 302
    assert sign_in(app.test_client(), personas.alice).status_code == 401


@pytest.mark.parametrize("field", ["username", "password"])
def test_the_sign_in_form_refuses_an_empty_field(client, field: str) -> None:
    data = {"csrf_token": csrf(client, "/login"), "username": "alice", "password": PASSWORD, field: ""}
    assert client.post("/login", data=data).status_code == 400


def test_the_sign_in_form_refuses_a_missing_csrf_token(client, personas: Personas) -> None:
    client.get("/login")
    r = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 400
    assert "security token" in text(r)
    assert client.get("/").status_code == 302


def test_an_account_added_without_a_password_gets_one_shown_once(app, core: Core, personas: Personas) -> None:
    core.users.add_agency(personas.ada.actor, "Agency C")
    admin = signed_in(app.test_client(), personas.ada)
    r = post(admin, "/users", {"name": "newbie", "role": "curator", "agency": "Agency C"})
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    password = text(r).split('<code class="secret">', 1)[1].split("<", 1)[0]
    assert len(password) >= 12
    assert password not in text(admin.get("/users/newbie"))
    assert sign_in(app.test_client(), "newbie", password).status_code == 302
    assert core.users.get("newbie").role == "curator"


def test_a_refused_page_says_in_words_what_the_role_may_not_do(app, personas: Personas) -> None:
    auditor = signed_in(app.test_client(), personas.audrey)
    r = auditor.get("/users")
    assert r.status_code == 403
    assert "as an auditor you may not manage user accounts; only admins may" in text(r)
    assert "(user manage)" not in text(r)
