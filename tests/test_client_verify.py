"""The pull tool's parts on their own: the verification core (no I/O), the
configuration reader, the HTTP transport's limits and the state directory."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.embedded import free_port
from client.config import Overrides, load
from client.errors import ConfigError, FeedError, LocalError, LockedError, RefusedError
from client.fetch import HttpTransport
from client.listfile import Lines
from client.minisign import SecretKey, format_trusted_comment
from client.state import State, StateDir
from client.verify import (
    AnnouncedKey,
    ArtifactRef,
    Delta,
    EntryList,
    Held,
    KeyRing,
    Manifest,
    Record,
    TrustPolicy,
    check_manifest,
    entries_digest,
    load_json,
    parse_snapshot,
    plan,
)

T = "2027-01-15T08:00:00Z"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
KEY = SecretKey.generate()


def rec(value: str, subdomains: bool = False, etype: str = "domain", verified: str = T) -> Record:
    return Record(etype, value, subdomains, "csam", T, verified)


def manifest_doc(version: int = 3, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": 2, "list": "worst-of", "version": version, "published_at": T, "signed_at": T,
        "expires_at": "2027-01-15T09:00:00Z", "count": 0, "entries_digest": hashlib.sha256(b"").hexdigest(),
        "snapshot": f"snapshots/{version}.json", "rpz": f"rpz/{version}.zone", "rpz_zone": "blocklist.rpz.",
        "artifacts": [
            {"kind": "snapshot", "path": f"snapshots/{version}.json", "sha256": "a" * 64, "size": 500},
            {"kind": "rpz", "path": f"rpz/{version}.zone", "sha256": "b" * 64, "size": 300},
            *({"kind": "delta", "path": f"deltas/{v - 1}/{v}.json", "sha256": "c" * 64, "size": 100,
               "from": v - 1, "to": v} for v in range(version, 1, -1)),
        ],
    }
    doc.update(changes)
    return doc


def signed(doc: dict[str, Any], key: SecretKey = KEY, **comment: str) -> tuple[bytes, bytes]:
    body = (json.dumps(doc, indent=1) + "\n").encode()
    fields = {"list": doc["list"], "version": str(doc["version"]), "file": "manifest.json",
              "expires": doc["expires_at"], **comment}
    return body, key.sign_bytes(body, format_trusted_comment(fields)).text().encode()


def policy(*keys: SecretKey, jump: int = 10, list_name: str | None = None) -> TrustPolicy:
    return TrustPolicy(keys=tuple(k.public for k in (keys or (KEY,))), max_version_jump=jump,
                       max_artifact_size=1 << 20, list_name=list_name)


def held(version: int, list_name: str = "worst-of") -> Held:
    return Held(list_name, version, "d" * 64, hashlib.sha256(b"").hexdigest(), 0)


def check(doc: dict[str, Any], *, pol: TrustPolicy | None = None, h: Held | None = None, now: float = NOW,
          **comment: str) -> Manifest:
    body, sig = signed(doc, **comment)
    return check_manifest(body, sig, pol or policy(), h, now)


# ---------------------------------------------------------------- manifest


def test_a_manifest_signed_by_either_pinned_key_is_accepted_during_a_rotation() -> None:
    new = SecretKey.generate()
    body, sig = signed(manifest_doc(), key=new)
    m = check_manifest(body, sig, policy(KEY, new), None, NOW)
    assert m.version == 3
    assert m.key_id == new.public.id_hex
    assert [d.path for d in m.deltas] == ["deltas/2/3.json", "deltas/1/2.json"]


@pytest.mark.parametrize("comment", [{"file": "snapshots/3.json"}, {"version": "4"}, {"list": "other"},
                                     {"expires": "2027-01-16T09:00:00Z"}])
def test_a_signed_comment_that_does_not_match_the_manifest_is_refused(comment: dict[str, str]) -> None:
    with pytest.raises(RefusedError, match="signed comment does not match"):
        check(manifest_doc(), **comment)


def test_a_schema_1_manifest_is_refused_with_the_tool_it_needs() -> None:
    old = manifest_doc(schema=1, entries_sha256=hashlib.sha256(b"").hexdigest())
    del old["entries_digest"]
    with pytest.raises(RefusedError, match=r"the manifest is in feed schema 1 \(whole-list entries_sha256\); "
                                           r"this blocklist-pull reads schema 2 \(entries_digest\): "
                                           r"a schema 1 feed needs blocklist-pull 1\.x"):
        check(old)
    with pytest.raises(RefusedError, match="has feed schema 3; this blocklist-pull reads schema 2: a newer feed"):
        check(manifest_doc(schema=3))
    with pytest.raises(RefusedError, match="the manifest's entries_digest is not a lower-case hex sha256"):
        check({k: v for k, v in manifest_doc().items() if k != "entries_digest"})


def test_a_manifest_is_refused_from_the_second_it_expires() -> None:
    expires = NOW + 3600
    assert check(manifest_doc(), now=expires - 1).version == 3
    with pytest.raises(RefusedError, match=r"expired at 2027-01-15T09:00:00Z \(0 s ago\)"):
        check(manifest_doc(), now=expires)


def test_versions_only_go_up_and_by_at_most_the_bound() -> None:
    with pytest.raises(RefusedError, match="refusing a rollback"):
        check(manifest_doc(4), h=held(5))
    assert check(manifest_doc(5), h=held(5)).version == 5
    assert check(manifest_doc(15), h=held(5)).version == 15
    with pytest.raises(RefusedError, match="jumps from version 5 to 16, more than max_version_jump"):
        check(manifest_doc(16), h=held(5))
    assert check(manifest_doc(1000)).version == 1000  # a first pull has nothing to compare with


def test_a_feed_for_another_list_is_refused() -> None:
    with pytest.raises(RefusedError, match="not the configured 'national'"):
        check(manifest_doc(), pol=policy(list_name="national"))
    with pytest.raises(RefusedError, match="this client holds list 'national'"):
        check(manifest_doc(), h=held(2, "national"))


@pytest.mark.parametrize(("artifacts", "says"), [
    ([{"kind": "snapshot", "path": "../../etc/passwd", "sha256": "a" * 64, "size": 1}], "names the snapshot"),
    ([{"kind": "delta", "path": "deltas/1/3.json", "sha256": "a" * 64, "size": 1, "from": 1, "to": 2}],
     "inconsistent delta"),
    ([{"kind": "snapshot", "path": "snapshots/3.json", "sha256": "A" * 64, "size": 1}], "lower-case hex"),
    ([{"kind": "snapshot", "path": "snapshots/3.json", "sha256": "a" * 64, "size": 2 << 20}],
     "more than max_download"),
    ([{"kind": "snapshot", "path": "snapshots/3.json", "sha256": "a" * 64, "size": 1}], "exactly one snapshot"),
])
def test_a_manifest_with_a_malformed_artifact_list_is_refused(artifacts: list[dict[str, Any]], says: str) -> None:
    with pytest.raises(RefusedError, match=says):
        check(manifest_doc(artifacts=artifacts))


def test_json_with_a_duplicate_key_is_refused_rather_than_guessed() -> None:
    with pytest.raises(RefusedError, match="has the key 'version' twice"):
        load_json(b'{"version": 1, "version": 9}', "the manifest")


# ---------------------------------------------------------------- entries


def test_the_canonical_line_is_the_compact_json_of_the_record() -> None:
    for r in (rec("a.example", True), rec("https://h.example/p?q=1&r=%20", etype="url")):
        assert r.line() == json.dumps(r._asdict(), separators=(",", ":"))
    assert entries_digest([]) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(("line", "says"), [
    ('{"type":"domain","value":"a.test\\"\\nlocal-zone: \\".\\" always_nxdomain","subdomains":true,'
     '"category":"csam","listed_since":"T","verified_at":"T"}', "not a valid host name"),
    ('{"type":"domain","value":"com","subdomains":true,"category":"csam","listed_since":"T","verified_at":"T"}',
     "at least two labels"),
    ('{"type":"domain","value":"10.0.0.1","subdomains":false,"category":"csam","listed_since":"T",'
     '"verified_at":"T"}', "not a valid host name"),
    ('{"type":"domain","value":"A.example","subdomains":false,"category":"csam","listed_since":"T",'
     '"verified_at":"T"}', "not a valid host name"),
    ('{"type":"url","value":"https://h.example/a b","subdomains":false,"category":"csam","listed_since":"T",'
     '"verified_at":"T"}', "not a URL in normal form"),
    ('{"type":"url","value":"https://h.example/\\"","subdomains":false,"category":"csam","listed_since":"T",'
     '"verified_at":"T"}', "not a URL in normal form"),
    ('{"type":"url","value":"ftp://h.example/","subdomains":false,"category":"csam","listed_since":"T",'
     '"verified_at":"T"}', "not a URL in normal form"),
    ('{"type":"domain","value":"a.example","subdomains":1,"category":"csam","listed_since":"T",'
     '"verified_at":"T"}', "subdomains flag"),
    ('{"type":"domain","value":"a.example","subdomains":true,"category":"CSAM!","listed_since":"T",'
     '"verified_at":"T"}', "invalid category"),
    ('{"type":"domain","value":"a.example","subdomains":true,"category":"csam","listed_since":"yesterday",'
     '"verified_at":"T"}', "invalid time"),
])
def test_an_entry_that_could_break_a_configuration_line_is_refused(line: str, says: str) -> None:
    with pytest.raises(RefusedError, match=says):
        load_json(line.replace('"T"', f'"{T}"').encode(), "a snapshot")


def test_an_entry_with_its_keys_in_another_order_is_not_canonical() -> None:
    doc = load_json(f'[{{"value":"a.example","type":"domain","subdomains":true,"category":"csam",'
                    f'"listed_since":"{T}","verified_at":"{T}"}}]'.encode(), "x")
    with pytest.raises(RefusedError, match="not in canonical form"):
        EntryList.of(doc, "the snapshot")


@pytest.mark.parametrize("records", [[rec("b.example"), rec("a.example")], [rec("a.example"), rec("a.example")],
                                     [rec("https://a.example/", etype="url"), rec("z.example")]])
def test_a_list_out_of_canonical_order_or_with_repeats_is_refused(records: list[Record]) -> None:
    with pytest.raises(RefusedError, match="not in canonical order or repeats"):
        EntryList.of(records, "the snapshot")


def snapshot(records: list[Record], version: int = 3, **changes: Any) -> tuple[bytes, Manifest]:
    entries = EntryList.of(records, "test")
    head = {"schema": 2, "list": "worst-of", "version": version, "published_at": T, "expires_at": T,
            "previous_version": None, "previous_sha256": None, "count": len(records),
            "entries_digest": entries.digest, **changes}
    data = (json.dumps(head, separators=(",", ":"))[:-1] + ',"entries":[\n'
            + ",\n".join(r.line() for r in records) + "\n]}\n").encode()
    m = check(manifest_doc(version, count=len(records), entries_digest=entries.digest))
    return data, m


def test_a_snapshot_is_accepted_only_with_the_manifests_digest_and_count() -> None:
    records = [rec("a.example", True), rec("b.example"), rec("https://c.example/x", etype="url")]
    data, m = snapshot(records)
    listed, published = parse_snapshot(data, m)
    assert listed.records == tuple(records)
    assert published == T

    other, _ = snapshot([*records[:2], rec("https://c.example/y", etype="url")])
    with pytest.raises(RefusedError, match=r"do not match the entries_digest in the manifest|holds"):
        parse_snapshot(other, m)
    wrong_version, _ = snapshot(records, version=2)
    with pytest.raises(RefusedError, match="another list or version"):
        parse_snapshot(wrong_version, m)


def test_a_schema_1_snapshot_is_refused_by_either_reader() -> None:
    from client.listfile import parse_snapshot_lines

    records = [rec("a.example", True), rec("b.example")]
    data, m = snapshot(records, schema=1)
    for reader in (parse_snapshot, parse_snapshot_lines):
        with pytest.raises(RefusedError, match=r"snapshots/3\.json is in feed schema 1"):
            reader(data, m)
    # The layout of a schema 1 snapshot (entries_sha256 in its head) goes to the strict reader, which says so too.
    old = data.replace(b'"entries_digest"', b'"entries_sha256"')
    with pytest.raises(RefusedError, match=r"snapshots/3\.json is in feed schema 1"):
        parse_snapshot_lines(old, m)


# ---------------------------------------------------------------- deltas and plans


def delta(base: list[Record], added: list[Record], removed: list[Record], result: list[Record], /,
          **changes: Any) -> Delta:
    d = Delta(from_version=2, to_version=3, from_sha256="d" * 64, to_sha256="e" * 64, from_count=len(base),
              to_count=len(result), to_entries_digest=entries_digest(result), published_at=T,
              added=tuple(added), removed=tuple(removed))
    return Delta(**{**d.__dict__, **changes})


REF = ArtifactRef("delta", "deltas/2/3.json", "c" * 64, 100, 2, 3)


def test_a_delta_applies_removals_then_additions_including_a_changed_entry() -> None:
    base = [rec("a.example"), rec("b.example"), rec("c.example")]
    renewed = rec("b.example", verified="2027-02-01T00:00:00Z")
    result = [rec("a.example"), renewed, rec("d.example")]
    d = delta(base, [renewed, rec("d.example")], [rec("b.example"), rec("c.example")], result)

    after = Lines.of_records(base).apply(d, REF, 2, "d" * 64)

    assert after.data == Lines.of_records(result).data


@pytest.mark.parametrize(("change", "says"), [
    ({"removed": (rec("b.example", verified="2026-01-01T00:00:00Z"),)}, "not the one held"),
    ({"removed": (rec("z.example"),)}, "which is not in the list held"),
    ({"added": (rec("a.example"),), "removed": ()}, "adds 'a.example', which is already in the list held"),
    ({"to_entries_digest": "f" * 64}, "does not match the digest the delta states"),
    ({"from_version": 1}, "the version held is 2"),
    ({"from_sha256": "0" * 64}, "made from a different version 2"),
    ({"from_count": 7}, "expects 7 entries"),
])
def test_a_delta_that_does_not_fit_the_list_held_is_refused(change: dict[str, Any], says: str) -> None:
    base = [rec("a.example"), rec("b.example")]
    d = delta(base, [], [rec("b.example")], [rec("a.example")], **change)
    with pytest.raises(RefusedError, match=says):
        Lines.of_records(base).apply(d, REF, 2, "d" * 64)


def test_the_held_list_applies_a_delta_only_when_it_leads_to_the_digest_stated() -> None:
    base = [rec(f"n{i:04}.example", subdomains=i % 3 == 0) for i in range(600)]
    removed = [base[5], base[300], base[599]]
    renewed = rec("n0100.example", verified="2027-02-01T00:00:00Z")
    added = [rec("a-first.example"), rec("n0300a.example"), renewed, rec("z-last.example")]
    result = sorted(set(base) - {*removed, base[100]} | set(added))
    held_lines = Lines.of_records(base)
    d = delta(base, added, [*removed, base[100]], result)

    after = held_lines.apply(d, REF, 2, "d" * 64)

    fresh = Lines.of_records(result)
    assert after.data == fresh.data
    assert after.digest.hexdigest() == fresh.digest.hexdigest() == entries_digest(result)
    # A delta that states the digest of another list (one entry more, or one flag changed) is refused.
    for other in ([*result, rec("zz.example")], [r._replace(subdomains=not r.subdomains) if r == base[400] else r
                                                 for r in result]):
        with pytest.raises(RefusedError, match="does not match the digest the delta states"):
            held_lines.apply(delta(base, added, [*removed, base[100]], result,
                                   to_entries_digest=entries_digest(sorted(other))), REF, 2, "d" * 64)


def test_a_schema_1_delta_is_refused() -> None:
    from client.verify import parse_delta

    m = check(manifest_doc())
    doc = {"schema": 1, "list": "worst-of", "from": 2, "to": 3, "published_at": T, "expires_at": T,
           "from_sha256": None, "to_sha256": None, "from_count": 0, "to_count": 0,
           "to_entries_sha256": hashlib.sha256(b"").hexdigest(), "added": [], "removed": []}
    with pytest.raises(RefusedError, match=r"deltas/2/3\.json is in feed schema 1"):
        parse_delta(json.dumps(doc).encode(), REF, m)
    doc.update(schema=2, to_entries_digest=doc.pop("to_entries_sha256"))
    assert parse_delta(json.dumps(doc).encode(), REF, m).to_entries_digest == hashlib.sha256(b"").hexdigest()


def test_the_plan_takes_deltas_from_the_held_version_only_when_complete_and_smaller() -> None:
    m = check(manifest_doc(5))
    assert plan(m, None, False) == [m.snapshot]
    assert [r.path for r in plan(m, held(3), True)] == ["deltas/3/4.json", "deltas/4/5.json"]
    assert plan(m, held(3), False) == [m.snapshot]  # the held list is damaged or missing
    assert plan(m, held(5), True) == []
    small = check(manifest_doc(5, artifacts=[
        {"kind": "snapshot", "path": "snapshots/5.json", "sha256": "a" * 64, "size": 150},
        {"kind": "rpz", "path": "rpz/5.zone", "sha256": "b" * 64, "size": 1},
        {"kind": "delta", "path": "deltas/4/5.json", "sha256": "c" * 64, "size": 100, "from": 4, "to": 5},
        {"kind": "delta", "path": "deltas/3/4.json", "sha256": "c" * 64, "size": 100, "from": 3, "to": 4},
    ]))
    assert plan(small, held(3), True) == [small.snapshot]  # two deltas weigh more than the snapshot
    assert [r.path for r in plan(small, held(4), True)] == ["deltas/4/5.json"]
    gap = check(manifest_doc(5, artifacts=manifest_doc(5)["artifacts"][:3]))  # only 4 -> 5 retained
    assert plan(gap, held(2), True) == [gap.snapshot]


# ---------------------------------------------------------------- configuration


def write_config(tmp: Path, text: str) -> Path:
    (tmp / "token").write_text("blf_" + "a" * 43 + "\n")
    path = tmp / "pull.toml"
    path.write_text(f'feed_url = "https://feed.example.org/feed/v1/"\ntoken_file = "token"\n'
                    f'public_keys = ["{KEY.public.base64()}"]\n{text}')
    return path


def test_a_configuration_file_is_read_with_paths_relative_to_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'state_dir = "state"\npost_apply = "rndc reload blocklist.rpz"\n'
                                  '[[output]]\nformat = "hosts"\npath = "out/hosts"\nmode = "0640"\n'
                                  'addresses = ["0.0.0.0"]\n')
    c = load(path, environ={})
    assert c.feed_url == "https://feed.example.org/feed/v1"
    assert c.token == "blf_" + "a" * 43
    assert c.state_dir == tmp_path / "state"
    assert c.post_apply == ("rndc", "reload", "blocklist.rpz")
    assert c.outputs[0].path == tmp_path / "out" / "hosts"
    assert c.outputs[0].mode == 0o640
    assert c.outputs[0].addresses == ("0.0.0.0",)


@pytest.mark.parametrize(("text", "says"), [
    ("colour = 1\n", "unknown setting 'colour'"),
    ('[[output]]\nformat = "bind"\npath = "x"\n', "format must be one of"),
    ('[[output]]\nformat = "hosts"\npath = "x"\nredirect = ["192.0.2.1"]\n', "has no setting 'redirect'"),
    ('[[output]]\nformat = "unbound"\npath = "x"\nredirect = ["stop.example"]\n', "not an IPv4 or IPv6 address"),
    ('[[output]]\nformat = "hosts"\npath = "x"\n[[output]]\nformat = "domains"\npath = "x"\n', "two outputs"),
    ('[[output]]\nformat = "urls"\npath = "x"\nstyle = "regex"\n', "style must be one of squid, plain"),
    ("max_version_jump = 0\n", "max_version_jump must be a whole number of at least 1"),
    ('feed_url = "ftp://x"\n', "is not valid TOML"),  # defined twice
])
def test_a_configuration_mistake_is_named(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load(write_config(tmp_path, text), environ={})


def test_feed_url_token_and_keys_are_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    with pytest.raises(ConfigError, match="must use https://"):
        load(path, Overrides(feed_url="http://feed.example.org/feed/v1"), environ={})
    assert load(path, Overrides(feed_url="http://127.0.0.1:8000/feed/v1"), environ={}).feed_url.startswith("http:")
    with pytest.raises(ConfigError, match="does not hold a feed token"):
        load(path, environ={"BLOCKLIST_PULL_TOKEN": "blu_user_token_not_a_feed_token"})
    assert load(path, environ={"BLOCKLIST_PULL_TOKEN": "blf_" + "b" * 43}).token == "blf_" + "b" * 43
    with pytest.raises(ConfigError, match="a --public-key: not an Ed25519 minisign public key"):
        load(path, Overrides(public_keys=[base64.b64encode(b"Ed" + bytes(20)).decode()]), environ={})
    assert load(path, need_token=False, environ={"BLOCKLIST_PULL_TOKEN": "nonsense"}).token == ""


def test_the_example_configuration_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "deploy" / "pull.example.toml"
    c = load(example, environ={"BLOCKLIST_PULL_TOKEN": "blf_" + "e" * 43})
    assert c.feed_url == "https://blocklist.example.org/feed/v1"
    assert [(o.format, str(o.path)) for o in c.outputs] == [
        ("unbound", "/etc/unbound/unbound.conf.d/blocklist.conf"), ("rpz", "/var/lib/bind/blocklist.rpz.zone")]
    assert c.post_apply == ("unbound-control", "reload")
    assert len(c.keys) == 1


# ---------------------------------------------------------------- transport


class Canned:
    """A local HTTP server answering every request with one handler function."""

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None]) -> None:
        self.requests: list[tuple[str, str | None]] = []
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                canned.requests.append((self.path, self.headers.get("Authorization")))
                answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[http.server.BaseHTTPRequestHandler], None]], Canned]]:
    servers: list[Canned] = []

    def start(answer: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Canned:
        servers.append(Canned(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def reply(body: bytes, status: int = 200, **headers: str) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            h.send_header(k.replace("_", "-"), v)
        h.end_headers()
        h.wfile.write(body)

    return answer


TOKEN = "blf_" + "t" * 43


def test_gzip_is_decoded_and_the_token_sent(serve: Any) -> None:
    data = b'{"entries": []}' * 100
    s = serve(reply(gzip.compress(data), Content_Encoding="gzip"))
    assert HttpTransport(s.url, TOKEN).get("snapshots/1.json", len(data)) == data
    assert s.requests == [("/snapshots/1.json", f"Bearer {TOKEN}")]


def test_a_gzip_body_that_inflates_past_the_limit_is_refused(serve: Any) -> None:
    s = serve(reply(gzip.compress(b"\0" * (8 << 20)), Content_Encoding="gzip"))
    with pytest.raises(RefusedError, match="larger than the 1000 bytes expected: download stopped"):
        HttpTransport(s.url, TOKEN).get("snapshots/1.json", 1000)


def test_a_redirect_is_not_followed_so_the_token_goes_nowhere_else(serve: Any) -> None:
    elsewhere = serve(reply(b"{}"))
    s = serve(reply(b"", 302, Location=f"{elsewhere.url}/steal"))
    with pytest.raises(FeedError, match="redirects are not followed"):
        HttpTransport(s.url, TOKEN).get("manifest.json", 1000)
    assert elsewhere.requests == []


def test_a_server_that_trickles_is_stopped_at_the_download_deadline(serve: Any) -> None:
    def trickle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        try:
            for _ in range(100):
                h.wfile.write(b" ")
                h.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    s = serve(trickle)
    started = time.monotonic()
    with pytest.raises(FeedError, match="took longer than download_timeout"):
        HttpTransport(s.url, TOKEN, deadline=0.5).get("snapshots/1.json", 100000)
    assert time.monotonic() - started < 3


def test_an_unreachable_feed_is_one_clear_error() -> None:
    with pytest.raises(FeedError, match=r"cannot reach the feed at http://127\.0\.0\.1:\d+: Connection refused"):
        HttpTransport(f"http://127.0.0.1:{free_port()}", TOKEN).get("manifest.json", 1000)


# ---------------------------------------------------------------- state


def test_a_damaged_state_file_stops_the_tool_instead_of_dropping_rollback_protection(tmp_path: Path) -> None:
    d = StateDir(tmp_path)
    d.ensure()
    (tmp_path / "state.json").write_text('{"schema": 1, "version": "9')
    with pytest.raises(LocalError, match="is damaged; move it away to start afresh"):
        d.load()


def test_a_held_list_that_does_not_match_its_digest_is_not_used(tmp_path: Path) -> None:
    d = StateDir(tmp_path)
    d.ensure()
    entries = Lines.of_records([rec("a.example"), rec("b.example")])
    d.save_lines(entries)
    state = State(entries_digest=entries.digest.hexdigest(), count=2)
    assert d.load_lines(state) == entries
    (tmp_path / "entries.jsonl").write_text((tmp_path / "entries.jsonl").read_text().replace("b.ex", "c.ex"))
    assert d.load_lines(state) is None


def test_the_saved_chunk_digests_are_used_only_for_the_file_written_with_them(tmp_path: Path) -> None:
    d = StateDir(tmp_path)
    d.ensure()
    entries = Lines.of_records([rec(f"n{i:03}.example") for i in range(200)])
    stamp = d.save_lines(entries)
    assert (tmp_path / "entries.chunks").read_bytes() == entries.digest.to_bytes()
    state = State(entries_digest=entries.digest.hexdigest(), count=200, entries_stamp=stamp)
    loaded = d.load_lines(state)
    assert loaded is not None and loaded.digest.to_bytes() == entries.digest.to_bytes()

    # Chunk digests that are not the state's (damaged, or left by a run stopped before
    # its state was saved) are not used: the digest is computed from the list itself.
    other = Lines.of_records([rec("x.example")])
    for damage in (other.digest.to_bytes(), b"short", b""):
        (tmp_path / "entries.chunks").write_bytes(damage)
        loaded = d.load_lines(state)
        assert loaded is not None and loaded.digest.hexdigest() == entries.digest.hexdigest()
    (tmp_path / "entries.chunks").unlink()
    assert d.load_lines(state) is not None

    # A list file that is not the one written (its stamp differs) is hashed in full.
    (tmp_path / "entries.chunks").write_bytes(entries.digest.to_bytes())
    (tmp_path / "entries.jsonl").write_bytes(other.data)
    assert d.load_lines(state) is None


def test_a_state_from_before_feed_schema_2_keeps_its_version_but_holds_no_list(tmp_path: Path) -> None:
    d = StateDir(tmp_path)
    d.ensure()
    (tmp_path / "state.json").write_text(json.dumps({
        "schema": 1, "list_name": "worst-of", "version": 7, "count": 2, "snapshot_sha256": "d" * 64,
        "entries_sha256": "e" * 64}))
    state = d.load()
    assert state.entries_digest is None
    h = state.held()
    assert h is not None and h.version == 7 and h.entries_digest is None  # still the rollback baseline
    assert d.load_lines(state) is None
    m = check(manifest_doc(7))
    assert plan(m, h, True) == [m.snapshot]  # same version, but no list known: the snapshot


def test_a_second_run_while_one_holds_the_lock_is_refused(tmp_path: Path) -> None:
    d = StateDir(tmp_path)
    with d.lock(), pytest.raises(LockedError, match="another blocklist-pull run holds"), StateDir(tmp_path).lock():
        pass


# ---------------------------------------------------------------- key ring (rotation)


def _signed_by(key_id: str, announces: SecretKey | None = None) -> Any:
    """The two fields of a checked manifest that the key ring reads."""
    nxt = AnnouncedKey(announces.public, "2027-01-22T08:00:00Z") if announces else None
    return type("M", (), {"key_id": key_id, "next_key": nxt})()


def test_the_key_ring_learns_an_announcement_and_retires_the_announcer_after_the_switch() -> None:
    old, new, newer = SecretKey.generate(), SecretKey.generate(), SecretKey.generate()
    pinned = [old.public]
    ring = KeyRing().after(_signed_by(old.public.id_hex, new), pinned, 1_800_000_000)
    assert [k.id_hex for k in ring.trusted(pinned)] == [old.public.id_hex, new.public.id_hex]
    ring = ring.after(_signed_by(new.public.id_hex), pinned, 1_800_000_100)
    assert [k.id_hex for k in ring.trusted(pinned)] == [new.public.id_hex]
    assert ring.retired == (old.public.id_hex,)
    # A later announcement of the retired key does not bring it back.
    ring = ring.after(_signed_by(new.public.id_hex, old), pinned, 1_800_000_200)
    assert [k.id_hex for k in ring.trusted(pinned)] == [new.public.id_hex]
    # The next rotation works the same way.
    ring = ring.after(_signed_by(new.public.id_hex, newer), pinned, 1_800_000_300)
    ring = ring.after(_signed_by(newer.public.id_hex), pinned, 1_800_000_400)
    assert [k.id_hex for k in ring.trusted(pinned)] == [newer.public.id_hex]


def test_a_replaced_announcement_is_no_longer_trusted() -> None:
    old, first, second = SecretKey.generate(), SecretKey.generate(), SecretKey.generate()
    pinned = [old.public]
    ring = KeyRing().after(_signed_by(old.public.id_hex, first), pinned, 1_800_000_000)
    ring = ring.after(_signed_by(old.public.id_hex, second), pinned, 1_800_000_100)
    assert [k.id_hex for k in ring.trusted(pinned)] == [old.public.id_hex, second.public.id_hex]
    assert KeyRing.from_dict(ring.to_dict()) == ring
