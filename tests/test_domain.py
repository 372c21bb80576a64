"""Normal forms and safety rules of entries (no I/O)."""

from __future__ import annotations

import idna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.domain import (
    AllowItem,
    Entry,
    EntryType,
    SafetyRules,
    Status,
    display_domain,
    normalize_domain,
    normalize_url,
)
from app.errors import RefusedError, ValidationError


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Example.TEST.", "example.test"),
        ("  www.Example.test  ", "www.example.test"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("ＥＸＡＭＰＬＥ.test", "example.test"),  # full-width letters map (UTS 46)
        ("a-b.c-d.test", "a-b.c-d.test"),
        ("δοκιμή.test", "xn--jxalpdlp.test"),
    ],
)
def test_it_normalises_domains(raw: str, normal: str) -> None:
    assert normalize_domain(raw) == normal


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("", "empty"),
        ("a..test", "empty label"),
        (".a.test", "empty label"),
        ("-a.test", "valid"),
        ("a_b.test", "valid"),
        ("ab--cd.test", "hyphens"),
        ("xn--zz.test", "A-label"),
        ("a" * 64 + ".test", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("*.example.test", "wildcard"),
        ("http://example.test/", "URL"),
        ("example.test:80", "port"),
        ("exa mple.test", "white space"),
    ],
)
def test_it_refuses_malformed_domains_with_a_reason(raw: str, fragment: str) -> None:
    with pytest.raises(ValidationError) as e:
        normalize_domain(raw)
    assert fragment.lower() in e.value.message.lower()


@pytest.mark.parametrize("raw", ["192.0.2.1", "2001:db8::1", "[2001:db8::1]", "3221225985", "0x7f.0.0.1",
                                 "10.0.0.1.", "1.2.3.4.5"])
def test_it_refuses_ip_literals(raw: str) -> None:
    with pytest.raises(RefusedError) as e:
        normalize_domain(raw)
    assert "IP address" in e.value.message


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("HTTP://Example.TEST:80/a/../b/%7euser/%2f?q=%41", "http://example.test/b/~user/%2F?q=A"),
        ("https://example.test", "https://example.test/"),
        ("https://example.test:443/x#fragment", "https://example.test/x"),
        ("http://user:pass@example.test:8080/p", "http://example.test:8080/p"),
        ("http://example.test/ü", "http://example.test/%C3%BC"),
        ('http://example.test/a"b\\c', "http://example.test/a%22b%5Cc"),
        ("http://Bücher.example/x?", "http://xn--bcher-kva.example/x"),
        ("http://example.test/%7e/./x/", "http://example.test/~/x/"),
    ],
)
def test_it_normalises_urls(raw: str, normal: str) -> None:
    assert normalize_url(raw).url == normal


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("http://[2001:db8::1]/", RefusedError),
        ("http://192.0.2.1/x", RefusedError),
        ("ftp://example.test/", ValidationError),
        ("example.test/x", ValidationError),
        ("http:///x", ValidationError),
        ("http://example.test:99999/", ValidationError),
        ("http://exa mple.test/", ValidationError),
    ],
)
def test_it_refuses_bad_urls(raw: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        normalize_url(raw)


RULES = SafetyRules([
    AllowItem("mail.google.com", False),
    AllowItem("mooo.com", False),
    AllowItem("wikipedia.org", True),
])


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("com", "top-level domain"),
        ("co.uk", "public suffix"),
        ("blogspot.com", "public suffix"),  # private section of the PSL
        ("mail.google.com", "allowlist"),
        ("google.com", "parent of mail.google.com"),
        ("mooo.com", "allowlist"),
        ("en.wikipedia.org", "with all its subdomains"),
    ],
)
def test_safety_rules_refuse_what_would_block_legitimate_sites(domain: str, why: str) -> None:
    with pytest.raises(RefusedError) as e:
        RULES.check_domain(domain)
    assert why in e.value.message


@pytest.mark.parametrize("domain", ["bad.mooo.com", "x.blogspot.com", "example.test", "drive.google.test"])
def test_safety_rules_accept_ordinary_names(domain: str) -> None:
    RULES.check_domain(domain)


def test_a_url_on_an_allowlisted_host_is_accepted_but_not_its_front_page() -> None:
    RULES.check_url(normalize_url("https://mail.google.com/some/file"))
    with pytest.raises(RefusedError):
        RULES.check_url(normalize_url("https://mail.google.com/"))


def test_the_stored_form_round_trips() -> None:
    e = Entry(id=7, type=EntryType.DOMAIN, value="a.test", subdomains=True, category="csam",
              status=Status.ACTIVE, reason="r", evidence_ref="case", submitted_by="alice", agency="A",
              submitted_at=1, updated_at=5, approved_by="bruno", approved_agency="B", approved_at=5,
              listed_since=5, verified_at=9, verified_by="vera", history=[1, 2, 3])
    assert Entry.from_json(e.to_json()) == e


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(lambda s: s[2:4] != "--")
ASCII_DOMAIN = st.lists(LABEL, min_size=2, max_size=5).map(".".join)
UNICODE_LABEL = st.text(alphabet=st.characters(categories=["Ll", "Lu", "Lo", "Nd"]), min_size=1, max_size=15)


@settings(max_examples=300, deadline=None)
@given(st.one_of(ASCII_DOMAIN, st.lists(UNICODE_LABEL, min_size=2, max_size=4).map(".".join)),
       st.booleans(), st.booleans())
def test_domain_normalisation_is_idempotent_and_round_trips(name: str, upper: bool, dot: bool) -> None:
    raw = (name.upper() if upper else name) + ("." if dot else "")
    try:
        normal = normalize_domain(raw)
    except (ValidationError, RefusedError):
        return
    assert normalize_domain(normal) == normal
    # A-label form: ASCII, lower case, and its Unicode form maps back to it.
    assert normal.isascii() and normal == normal.lower() and not normal.endswith(".")
    assert normalize_domain(display_domain(normal)) == normal
    assert idna.decode(normal)  # decodes cleanly


PATH_CHARS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs"]), max_size=30)


@settings(max_examples=300, deadline=None)
@given(ASCII_DOMAIN, PATH_CHARS, PATH_CHARS, st.sampled_from(["http", "https", "HTTP"]))
def test_url_normalisation_is_idempotent(host: str, path: str, query: str, scheme: str) -> None:
    assume("#" not in path and "#" not in query and "?" not in path)
    raw = f"{scheme}://{host}/{path}" + (f"?{query}" if query else "")
    try:
        normal = normalize_url(raw).url
    except (ValidationError, RefusedError):
        return
    assert normalize_url(normal).url == normal
    assert normal.isascii()
    assert '"' not in normal and "\\" not in normal and " " not in normal
