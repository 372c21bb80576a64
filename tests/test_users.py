"""Accounts: agencies as a curated list, temporary passwords, recovery codes,
and the audit records they leave. Real Redis, personas from conftest."""

from __future__ import annotations

import json

import pyotp
import pytest

from app import audit, bootstrap
from app.clock import FakeClock
from app.config import Settings
from app.core import Core
from app.domain import SYSTEM, Actor
from app.errors import AuthenticationError, ConflictError, PermissionDeniedError, ValidationError
from tests.conftest import AGENCY_A, AGENCY_B, PASSWORD, Personas


def _actions(core: Core) -> list[dict[str, object]]:
    return [json.loads(text) for _, text in audit.iterate(core.store)]


def _records(core: Core, action: str) -> list[dict[str, object]]:
    return [r for r in _actions(core) if r["action"] == action]


def test_free_text_agencies_of_existing_accounts_join_the_list_on_upgrade(core: Core, personas: Personas) -> None:
    core.store.r.delete("bl:agencies")  # as an older release left it: agencies only on accounts
    names = {a.name for a in core.users.agencies()}
    assert {AGENCY_A, AGENCY_B, "Programme", "Oversight board"} <= names
    first = bootstrap.first_start(core)
    assert first.admin_password is None  # accounts exist; nothing else is made


def test_an_admin_picks_an_agency_from_the_list_and_a_typo_is_refused(core: Core, personas: Personas) -> None:
    ada = personas.ada.actor
    with pytest.raises(ValidationError, match="there is no agency 'Agency  A' on the list"):
        core.users.add(ada, "typo", "vetter", "Agency  A", PASSWORD)
    u = core.users.add(ada, "nina", "vetter", AGENCY_A.upper(), PASSWORD)
    assert u.agency == AGENCY_A


def test_renaming_an_agency_keeps_the_four_eyes_rule_between_its_people(core: Core, personas: Personas) -> None:
    ada = personas.ada.actor
    entry = core.curation.submit(personas.alice.actor, "bad.example", "domain", True, None, "seen", "case-1")
    core.users.rename_agency(ada, AGENCY_A, "Agency A (United Kingdom)", "official name")
    vera = core.users.get("vera")
    assert core.users.agency_names()[vera.agency] == "Agency A (United Kingdom)"
    with pytest.raises(PermissionDeniedError, match="another agency"):
        core.curation.act(vera.actor, entry.id, "approve")
    assert core.curation.act(personas.bruno.actor, entry.id, "approve").status == "active"
    assert _records(core, "agency.rename")[-1]["after"] == {"name": "Agency A (United Kingdom)"}


def test_a_retired_agency_is_offered_to_nobody_new(core: Core, personas: Personas) -> None:
    ada = personas.ada.actor
    core.users.retire_agency(ada, AGENCY_B, "merged")
    with pytest.raises(ValidationError, match="no agency"):
        core.users.add(ada, "nina", "vetter", AGENCY_B, PASSWORD)
    assert core.users.get("bruno").agency == AGENCY_B  # its people keep it
    with pytest.raises(ConflictError, match="already on the list"):
        core.users.add_agency(ada, AGENCY_B.lower())
    assert _records(core, "agency.retire")


def test_only_admins_curate_agencies_and_the_refusal_reads_as_a_sentence(core: Core, personas: Personas) -> None:
    with pytest.raises(PermissionDeniedError) as e:
        core.users.add_agency(personas.vera.actor, "Agency Z")
    assert e.value.message == "as a vetter you may not manage user accounts; only admins may"


def test_a_password_an_admin_sets_is_temporary_and_leaves_a_lock_in_place(core: Core, personas: Personas) -> None:
    core.users.lock("alice")
    temporary = core.users.reset_password(personas.ada.actor, "alice", "forgot it")
    alice = core.users.get("alice")
    assert alice.must_change and alice.locked
    with pytest.raises(PermissionDeniedError, match="on your account page, with your current password"):
        core.users.reset_password(personas.ada.actor, "ada")
    core.users.unlock(personas.ada.actor, "alice")
    core.users.change_own_password(personas.alice.actor, temporary, "alice's own new passphrase")
    assert not core.users.get("alice").must_change
    after = [r["after"] for r in _records(core, "user.password")]
    assert {"password": "set by an admin", "must_change": True} in after
    assert all("passphrase" not in json.dumps(r) and temporary not in json.dumps(r) for r in _actions(core))


def test_changing_your_own_password_needs_the_current_one_and_a_different_new_one(
    core: Core, personas: Personas
) -> None:
    with pytest.raises(AuthenticationError):
        core.users.change_own_password(personas.alice.actor, "not the password", "a fine new passphrase")
    with pytest.raises(ValidationError, match="must differ"):
        core.users.change_own_password(personas.alice.actor, PASSWORD, PASSWORD)


def test_recovery_codes_are_stored_hashed_used_once_and_replaced_together(
    core: Core, personas: Personas, clock: FakeClock
) -> None:
    actor = Actor(name="vera", role=personas.vera.user.role, agency=personas.vera.user.agency)
    uri = core.users.start_totp(actor, "vera")
    secret = uri.split("secret=", 1)[1].split("&", 1)[0]
    codes = core.users.confirm_totp(actor, "vera", pyotp.TOTP(secret).at(clock()))
    assert codes is not None and len(set(codes)) == 10
    stored = json.dumps(core.store.users.raw("vera"))
    assert not any(c in stored or c.replace("-", "") in stored for c in codes)
    vera = core.users.get("vera")
    assert core.users.check_second_factor(vera, codes[3])
    assert not core.users.check_second_factor(vera, codes[3])
    new = core.users.regenerate_recovery_codes(actor, PASSWORD)
    assert not core.users.check_second_factor(vera, codes[4])
    assert core.users.check_second_factor(vera, new[0])
    assert core.users.get("vera").recovery_left == 9
    assert _records(core, "user.recovery_codes") and len(_records(core, "user.recovery_used")) == 2


def test_the_first_admin_password_is_temporary(core: Core) -> None:
    first = bootstrap.first_start(core)
    admin = core.users.authenticate_password("admin", first.admin_password or "")
    assert admin.must_change
    assert SYSTEM.agency not in {a.id for a in core.users.agencies()}


def test_agency_and_password_commands_say_what_is_wrong_in_one_sentence_and_change_nothing(
    core: Core, settings: Settings, personas: Personas
) -> None:
    from tests.test_cli import run

    assert run(settings, "user", "agency", "add", "Agency North").returncode == 0
    r = run(settings, "user", "agency", "add", "agency north")
    assert r.returncode == 1 and "already on the list" in r.stderr and "Traceback" not in r.stderr
    r = run(settings, "user", "agency", "rename", "Agency North", "Agency North (NO)")
    assert r.returncode == 0 and "is now called Agency North (NO)" in r.stdout
    r = run(settings, "user", "agency", "retire", "Agency Nowhere")
    assert r.returncode == 1 and "there is no agency 'Agency Nowhere'" in r.stderr
    assert run(settings, "user", "agency", "retire", "agency north (no)").returncode == 0
    listing = json.loads(run(settings, "user", "agency", "list", "--json").stdout)
    assert {"id": "Agency North", "name": "Agency North (NO)", "retired": True} in listing
    r = run(settings, "user", "add", "nils", "--role", "vetter", "--agency", "Agency North (NO)")
    assert r.returncode == 1 and "no agency" in r.stderr
    assert core.users.find("nils") is None
    r = run(settings, "user", "password", "sessions:alice", stdin="a long enough password\n")
    assert r.returncode == 1 and "user name is 2-32 characters" in r.stderr and "Traceback" not in r.stderr
    before = core.store.users.raw("alice")["password_hash"]
    r = run(settings, "user", "password", "alice", stdin="short\n")
    assert r.returncode == 1 and "at least 12 characters" in r.stderr
    assert core.store.users.raw("alice")["password_hash"] == before
    r = run(settings, "user", "password", "alice", stdin="a long enough password\n")
    assert r.returncode == 0 and "must choose a new one" in r.stdout
    assert core.users.get("alice").must_change
