"""A yes/no is read one way everywhere: the text "false" is false, in JSON
bodies, query strings, forms and import files; what is neither yes nor no
is refused with a sentence and changes nothing."""

from __future__ import annotations

import io
import re

import pytest

from app.core import Core
from app.domain import parse_bool
from app.errors import ValidationError
from tests.conftest import Personas
from tests.test_web_helpers import post, signed_in


@pytest.mark.parametrize("text", ["false", "False", " no ", "0", "off", "n", False, 0])
def test_false_in_any_spelling_is_false(text: object) -> None:
    assert parse_bool(text, "x") is False


@pytest.mark.parametrize("text", ["true", "TRUE", "yes", "1", "on", "y", True, 1])
def test_true_in_any_spelling_is_true(text: object) -> None:
    assert parse_bool(text, "x") is True


@pytest.mark.parametrize("text", ["maybe", "", "2", "tru", None, [], {}])
def test_anything_else_is_refused_with_a_sentence(text: object) -> None:
    with pytest.raises(ValidationError, match="must be true or false"):
        parse_bool(text, "x")


def test_the_api_keeps_the_feed_token_when_told_token_false(client, core: Core, personas: Personas) -> None:
    r = client.post("/api/v1/isps", json={"name": "acme"}, headers=personas.ada.headers)
    assert r.status_code == 201
    old_token = r.get_json()["feed_token"]
    r = client.post("/api/v1/isps/acme/rotate", json={"token": "false", "tsig": "true"},
                    headers=personas.ada.headers)
    assert r.status_code == 201, r.get_json()
    assert "feed_token" not in r.get_json()
    assert "tsig_secret" in r.get_json()
    assert core.isps.authenticate_feed(old_token).name == "acme"  # the ISP's pulls keep working


def test_the_api_refuses_a_yes_no_it_cannot_read_and_changes_nothing(
    client, core: Core, personas: Personas
) -> None:
    r = client.post("/api/v1/isps", json={"name": "acme"}, headers=personas.ada.headers)
    old_token = r.get_json()["feed_token"]
    before = core.store.audit.length()
    r = client.post("/api/v1/isps/acme/rotate", json={"token": "perhaps"}, headers=personas.ada.headers)
    assert r.status_code == 400
    assert r.get_json() == {"error": "token must be true or false, not 'perhaps'"}
    assert core.isps.authenticate_feed(old_token).name == "acme"
    assert core.store.audit.length() == before
    r = client.post("/api/v1/import?dry_run=perhaps", data=b"x.example\n",
                    headers=personas.alice.headers)
    assert r.status_code == 400
    assert core.store.entries.last_id() == 0


def test_false_is_false_in_entries_imports_and_the_allowlist(client, core: Core, personas: Personas) -> None:
    r = client.post("/api/v1/entries", json={"value": "a.example", "subdomains": "false"},
                    headers=personas.alice.headers)
    assert r.status_code == 201
    assert r.get_json()["subdomains"] is False
    r = client.post("/api/v1/import?subdomains=false&dry_run=false", data=b"b.example\n",
                    headers=personas.alice.headers)
    assert r.status_code == 201, r.get_json()
    assert core.curation.find("domain", "b.example").subdomains is False
    r = client.post("/api/v1/import", data=b"value,subdomains\nd.example,false\ne.example,FALSE\n",
                    headers=personas.alice.headers)
    assert r.status_code == 201, r.get_json()
    assert [core.curation.find("domain", v).subdomains for v in ("d.example", "e.example")] == [False, False]
    r = client.post("/api/v1/allowlist", json={"domain": "platform.example", "subdomains": "false"},
                    headers=personas.ada.headers)
    assert r.status_code == 201
    assert [a.subdomains for a in core.curation.allowlist()] == [False]


def test_false_is_false_in_the_web_forms(app, core: Core, personas: Personas) -> None:
    alice = signed_in(app.test_client(), personas.alice)
    r = post(alice, "/submit", {"value": "c.example", "subdomains": "false", "category": "csam",
                                "submit": "Submit for vetting"})
    assert r.status_code == 303
    assert core.curation.find("domain", "c.example").subdomains is False
    r = alice.post("/submit/file", data={"csrf_token": re.search(r'name="csrf_token" type="hidden" value="([^"]+)"',
                                                                   alice.get("/submit").get_data(as_text=True))[1],
                                         "category": "csam", "subdomains": "false",
                                         "file": (io.BytesIO(b"f.example\n"), "list.txt")},
                   content_type="multipart/form-data")
    assert r.status_code == 200
    assert core.curation.find("domain", "f.example").subdomains is False
