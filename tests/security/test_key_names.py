"""Attacks on Redis key names: a string someone chooses (a user name, an ISP
name, a session cookie, an appeal number, a rate-limit subject) must never
name a key of another kind. Against the real Redis of the test session."""

from __future__ import annotations

import re

import pytest

from app.core import Core
from app.domain import SYSTEM
from app.errors import ValidationError
from app.store import PREFIX, K, Txn
from app.web.sessions import storage_id
from tests.conftest import Personas


def _families() -> dict[str, str]:
    return {name: value for name, value in vars(K).items()
            if isinstance(value, str) and value.startswith(PREFIX) and not name.startswith("legacy_")}


def test_no_key_family_shares_its_namespace_with_another_key() -> None:
    keys = _families()
    for name, template in keys.items():
        if "{" not in template:
            continue
        family = template.split("{", 1)[0]
        for other_name, other in keys.items():
            if other_name == name:
                continue
            assert not other.startswith(family), (
                f"{other_name} ({other}) lies inside the family of {name} ({template})"
            )


CRAFTED = ["sessions:alice", "user:alice", "alice:x", "Alice", "al ice", "", "x" * 100, "ä"]


@pytest.mark.parametrize("crafted", CRAFTED)
def test_a_crafted_user_name_reaches_no_key(core: Core, personas: Personas, crafted: str) -> None:
    core.store.sessions.put(storage_id("s" * 43), "{}", ttl=60, user="alice")
    before = sorted(core.store.r.keys("*"))
    assert core.users.find(crafted) is None
    for call in (lambda: core.users.get(crafted), lambda: core.users.add(SYSTEM, crafted, "curator", "X"),
                 lambda: core.users.set_disabled(SYSTEM, crafted, True),
                 lambda: core.store.users.raw(crafted), lambda: core.store.users.login_failures(crafted),
                 lambda: core.store.users.add_login_failure(crafted, 60),
                 lambda: core.store.sessions.end_for_user(crafted),
                 lambda: core.store.users.touch(crafted, {"x": "1"})):
        with pytest.raises(ValidationError):
            call()
    assert sorted(core.store.r.keys("*")) == before


@pytest.mark.parametrize("crafted", ["tokens:x", "ISP", "a:b", "", "x y"])
def test_a_crafted_isp_name_reaches_no_key(core: Core, crafted: str) -> None:
    before = sorted(core.store.r.keys("*"))
    with pytest.raises(ValidationError):
        core.store.isps.raw(crafted)
    txn = Txn()
    with pytest.raises(ValidationError):
        core.store.isps.put(txn, crafted, {"name": crafted}, create=True)
    with pytest.raises(ValidationError):
        core.isps.add(SYSTEM, crafted, [], [], "")
    assert sorted(core.store.r.keys("*")) == before


def test_an_isp_token_index_written_by_an_older_release_is_moved_out_of_the_isp_family(core: Core) -> None:
    core.store.r.hset(K.legacy_isp_tokens, "digest", "old-isp")
    core.store.upgrade_key_names()
    assert core.store.isps.token_owner("digest") == "old-isp"
    assert not core.store.r.exists(K.legacy_isp_tokens)


@pytest.mark.parametrize("crafted", ["user:sessions:alice", "../x", "A" * 64, "0" * 63, "z" * 64])
def test_a_crafted_session_id_reaches_no_key(core: Core, personas: Personas, crafted: str) -> None:
    core.store.sessions.put(storage_id("s" * 43), "{}", ttl=60, user="alice")
    before = sorted(core.store.r.keys("*"))
    assert core.store.sessions.get(crafted) is None
    core.store.sessions.delete(crafted)
    with pytest.raises(ValidationError):
        core.store.sessions.put(crafted, "{}", ttl=60, user=None)
    assert sorted(core.store.r.keys("*")) == before


@pytest.mark.parametrize("crafted", ["1:x", "seq", "-1 OR 1", "", None, "1e3"])
def test_a_crafted_appeal_number_reaches_no_key(core: Core, crafted: object) -> None:
    from app.appeals import Appeals

    before = sorted(core.store.r.keys("*"))
    with pytest.raises(ValidationError, match="appeal number must be a number"):
        Appeals(core.store, core.curation, core.clock).get(crafted)
    assert sorted(core.store.r.keys("*")) == before


@pytest.mark.parametrize(("scope", "who"), [("login:x", "a"), ("login", "a:b"), ("LOGIN", "a"), ("appeal", "")])
def test_a_crafted_rate_limit_scope_or_subject_reaches_no_key(core: Core, scope: str, who: str) -> None:
    before = sorted(core.store.r.keys("*"))
    with pytest.raises(ValidationError):
        core.store.rates.hit(scope, who, 60)
    with pytest.raises(ValidationError):
        core.store.rates.peek(scope, who, 60)
    assert sorted(core.store.r.keys("*")) == before


def test_every_key_after_sign_in_activity_belongs_to_exactly_one_family(core: Core, personas: Personas) -> None:
    core.store.sessions.put(storage_id("t" * 43), "{}", ttl=60, user="alice")
    core.store.users.add_login_failure("alice", 60)
    core.store.rates.hit("login", "abc123", 60)
    patterns = {name: re.compile(re.sub(r"\\\{[a-z_]+\\\}", ".+", re.escape(t)))
                for name, t in _families().items()}
    types: dict[str, set[str]] = {}
    for key in core.store.r.keys("*"):
        owners = [name for name, p in patterns.items() if p.fullmatch(str(key))]
        assert len(owners) == 1, (key, owners)
        types.setdefault(owners[0], set()).add(str(core.store.r.type(key)))
    assert all(len(t) == 1 for t in types.values()), types
