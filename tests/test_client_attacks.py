"""Attacks on the feed: each is refused with one line and a non-zero exit,
and leaves the outputs, the held version and the resolver untouched.

The real server publishes; a proxy in front of it (or a change to the
server's files) plays the attacker: another key, one changed byte, a
replayed old or expired manifest, endless data, a delta from another base,
a jump too far ahead, and entries crafted to break out of a config line.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import time
from typing import Any

import pytest

from client.minisign import SecretKey
from tests.test_client_support import Feed, Proxy


def hold(feed: Feed, proxy: Proxy, bulk: int = 0) -> None:
    """The client holds version 1 of a small list, with every output written."""
    for i in range(bulk):
        feed.list(f"site-{i:02}.example")
    feed.list("bad-site.test", subdomains=True)
    feed.list("exact.example")
    feed.list("https://host.example/a/b?x=1", etype="url")
    feed.publish()
    feed.config(url=proxy.url)
    first = feed.pull()
    assert first.code == 0, first.err
    assert feed.held_version() == 1


def refused(feed: Feed, *, says: str, held: int | None = 1, code: int = 1) -> None:
    before = feed.snapshot_outputs()
    runs = feed.post_apply_runs()

    r = feed.pull()

    assert r.code == code, r
    assert r.out == ""
    assert r.err.startswith("blocklist-pull: ")
    assert r.err.count("\n") == 1, r.err
    assert says in r.err, r.err
    assert feed.snapshot_outputs() == before  # same bytes, not even rewritten
    assert feed.held_version() == held
    assert feed.post_apply_runs() == runs  # the resolver was not reloaded


def manifest(feed: Feed) -> dict[str, Any]:
    return json.loads(feed.artifact("manifest.json"))


# ---------------------------------------------------------------- signatures


def test_a_manifest_signed_by_another_key_is_refused(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    feed.list("innocent.example")
    feed.publish()
    attacker = SecretKey.generate()
    m = manifest(feed)
    proxy.answers["manifest.json.minisig"] = feed.sign("manifest.json", feed.artifact("manifest.json"), 2,
                                                      key=attacker, expires=m["expires_at"])

    refused(feed, says=f"the manifest is signed by key {attacker.public.id_hex}, which is not a pinned key")


def test_an_attackers_own_signed_feed_is_refused(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    attacker = SecretKey.generate()
    m = manifest(feed)
    m["version"] = 2
    body, sig = feed.resign_manifest(m, key=attacker)
    proxy.answers["manifest.json"] = body
    proxy.answers["manifest.json.minisig"] = sig

    refused(feed, says="which is not a pinned key")


@pytest.mark.parametrize(("tamper", "says"), [
    ("body", "the signature does not match the file"),
    ("comment", "the trusted comment has been altered"),
])
def test_a_manifest_altered_after_signing_is_refused(feed: Feed, proxy: Proxy, tamper: str, says: str) -> None:
    hold(feed, proxy)
    feed.list("innocent.example")
    feed.publish()
    body, sig = feed.artifact("manifest.json"), feed.artifact("manifest.json.minisig")
    if tamper == "body":
        body = body.replace(b'"count": 4', b'"count": 5')
    else:
        sig = sig.replace(b"version:2", b"version:3")
    proxy.answers["manifest.json"] = body
    proxy.answers["manifest.json.minisig"] = sig

    refused(feed, says=says)


# ---------------------------------------------------------------- artifacts


@pytest.mark.parametrize("target", ["snapshot", "delta"])
def test_an_artifact_changed_by_one_byte_is_refused(feed: Feed, proxy: Proxy, target: str) -> None:
    hold(feed, proxy)
    feed.list("innocent.example")
    feed.publish()
    rel = "snapshots/2.json" if target == "snapshot" else "deltas/1/2.json"
    if target == "snapshot":
        # Without the delta the client must take the snapshot.
        feed.core.artifacts.remove("deltas/1/2.json")
    path = feed.core.artifacts.path(rel)
    data = bytearray(path.read_bytes())
    at = data.index(b"innocent.example")
    data[at] = ord("j")  # "jnnocent.example": same size, one byte changed
    path.write_bytes(bytes(data))

    refused(feed, says=f"{rel} does not match the sha256 in the manifest")


def test_an_artifact_signed_as_another_file_is_refused(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    feed.list("innocent.example")
    feed.publish()
    feed.core.artifacts.remove("deltas/1/2.json")
    # Correct bytes and a valid signature by the real key, but for another file name.
    proxy.answers["snapshots/2.json.minisig"] = feed.sign("snapshots/1.json", feed.artifact("snapshots/2.json"), 2)

    refused(feed, says="the signed comment of snapshots/2.json names another file, version or list")


# ---------------------------------------------------------------- replays


def test_an_older_manifest_replayed_is_refused_as_a_rollback(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    old_body, old_sig = feed.artifact("manifest.json"), feed.artifact("manifest.json.minisig")
    feed.delist("bad-site.test")  # version 2 takes an entry out...
    feed.publish()
    assert feed.pull().code == 0
    assert feed.held_version() == 2
    # ...and the attacker replays version 1 (still within its validity) to put it back.
    proxy.answers["manifest.json"] = old_body
    proxy.answers["manifest.json.minisig"] = old_sig

    refused(feed, held=2, says="the feed offers version 1, older than the version 2 held: refusing a rollback")


def test_an_expired_manifest_replayed_is_refused_as_a_freeze(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    frozen_body, frozen_sig = feed.artifact("manifest.json"), feed.artifact("manifest.json.minisig")
    feed.clock.advance(2 * 3600)
    # The server keeps re-signing its manifest; the attacker keeps serving the old one.
    assert feed.core.publisher.refresh_manifest(force=True)
    proxy.answers["manifest.json"] = frozen_body
    proxy.answers["manifest.json.minisig"] = frozen_sig

    refused(feed, says="the manifest of version 1 expired at 2027-01-15T09:00:00Z (60 min ago): "
                       "the feed is frozen or an old manifest is being replayed")
    status = feed.pull("status")
    assert status.code == 1
    assert "the last run failed" in status.out

    proxy.answers.clear()
    assert feed.pull().code == 0  # the genuine, freshly signed manifest is accepted


def test_a_feed_that_stops_being_re_signed_is_reported_stale(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    feed.clock.advance(3601)

    refused(feed, says="expired at 2027-01-15T09:00:00Z")
    status = feed.pull("status")
    assert status.code == 1
    assert "stale: no verified manifest since 2027-01-15T08:00:00Z" in status.out


# ---------------------------------------------------------------- endless data


class Endless:
    """Answers with data that never ends, counting what it sent."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        chunk = b" " * 65536
        try:
            while True:
                handler.wfile.write(chunk)
                self.sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return


def test_an_endless_artifact_is_cut_off_at_its_stated_size(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    feed.list("innocent.example")
    feed.publish()
    feed.core.artifacts.remove("deltas/1/2.json")
    endless = Endless()
    proxy.answers["snapshots/2.json"] = endless
    size = manifest(feed)["artifacts"][0]["size"]
    started = time.monotonic()

    refused(feed, says=f"snapshots/2.json is larger than the {size} bytes expected: download stopped")

    assert time.monotonic() - started < 10
    # The client stopped reading at once: only what the socket buffers took was ever sent.
    assert endless.sent < 32 << 20


def announce(length: int) -> Any:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        handler.wfile.write(b"{")

    return answer


def gzip_bomb(handler: http.server.BaseHTTPRequestHandler) -> None:
    data = gzip.compress(b" " * (64 << 20), 9)  # 64 MiB that compress to about 64 KiB
    handler.send_response(200)
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    try:
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.mark.parametrize(("answer", "says"), [
    (announce(1 << 40), "snapshots/2.json is announced as 1099511627776 bytes, more than the"),
    (gzip_bomb, "snapshots/2.json is larger than the"),
])
def test_an_oversized_or_inflating_artifact_is_refused(feed: Feed, proxy: Proxy, answer: Any, says: str) -> None:
    hold(feed, proxy)
    feed.list("innocent.example")
    feed.publish()
    feed.core.artifacts.remove("deltas/1/2.json")
    proxy.answers["snapshots/2.json"] = answer

    refused(feed, says=says)


def test_an_endless_manifest_is_cut_off(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    proxy.answers["manifest.json"] = Endless()

    refused(feed, says="manifest.json is larger than the 1048576 bytes expected: download stopped")


# ---------------------------------------------------------------- deltas and versions


def forge_delta(feed: Feed, proxy: Proxy, frm: int, to: int, change: dict[str, Any]) -> None:
    """Serve deltas/<frm>/<to>.json altered by ``change``, validly signed by the
    publisher's own key, in a manifest re-signed to match (a compromised or
    confused server: every signature verifies)."""
    rel = f"deltas/{frm}/{to}.json"
    doc = json.loads(feed.artifact(rel))
    doc.update(change)
    data = json.dumps(doc, separators=(",", ":")).encode()
    m = manifest(feed)
    for item in m["artifacts"]:
        if item["path"] == rel:
            item.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    body, sig = feed.resign_manifest(m)
    proxy.answers.update({"manifest.json": body, "manifest.json.minisig": sig, rel: data,
                          f"{rel}.minisig": feed.sign(rel, data, to)})


@pytest.mark.parametrize(("change", "says"), [
    ({"from": 1}, "deltas/2/3.json goes from version 1 to 3, but the version held is 2: "
                  "refusing a delta made from another base"),
    ({"from_sha256": "0" * 64}, "deltas/2/3.json was made from a different version 2 than the one held"),
])
def test_a_delta_whose_base_is_not_the_held_version_is_refused(feed: Feed, proxy: Proxy, change: dict[str, Any],
                                                               says: str) -> None:
    hold(feed, proxy, bulk=20)
    feed.list("second.example")
    feed.publish()
    assert "1 delta" in feed.pull().out
    feed.list("third.example")
    feed.publish()
    forge_delta(feed, proxy, 2, 3, change)

    refused(feed, held=2, says=says)
    assert "deltas/2/3.json" in proxy.paths


def test_a_delta_that_removes_what_is_not_held_is_refused(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy, bulk=20)
    feed.list("second.example")
    feed.publish()
    line = {"type": "domain", "value": "never-listed.example", "subdomains": False, "category": "csam",
            "listed_since": "2027-01-15T08:00:00Z", "verified_at": "2027-01-15T08:00:00Z"}
    forge_delta(feed, proxy, 1, 2, {"removed": [line]})

    refused(feed, says="deltas/1/2.json removes 'never-listed.example', which is not in the list held")


def test_a_delta_that_leads_to_another_list_is_refused_by_the_digest(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy, bulk=20)
    feed.list("second.example")
    feed.publish()
    doc = json.loads(feed.artifact("deltas/1/2.json"))
    line = {**doc["added"][0], "value": "swapped.example"}
    forge_delta(feed, proxy, 1, 2, {"added": [line]})  # the digest stated is still the real version 2's

    refused(feed, says="the list after deltas/1/2.json does not match the digest the delta states")


def test_a_jump_beyond_max_version_jump_is_refused(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    for name in ("two.example", "three.example"):
        feed.list(name)
        feed.publish()
    feed.config(url=proxy.url, extra="max_version_jump = 1")

    refused(feed, says="the feed jumps from version 1 to 3, more than max_version_jump (1)")


@pytest.mark.parametrize(("value", "says"), [
    ('evil.test"\n    local-zone: "." always_nxdomain\n#', "is not a valid host name"),
    ("com", "'com' is not a valid host name of at least two labels"),
    ("EVIL.test", "is not a valid host name"),
])
def test_a_signed_entry_that_could_break_an_output_is_refused(feed: Feed, proxy: Proxy, value: str,
                                                              says: str) -> None:
    hold(feed, proxy)
    feed.list("innocent.example")
    feed.publish()
    feed.core.artifacts.remove("deltas/1/2.json")
    snap = feed.artifact("snapshots/2.json").decode()
    data = snap.replace('"value":"innocent.example"', f'"value":{json.dumps(value)}').encode()
    m = manifest(feed)
    m["artifacts"][0].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    body, sig = feed.resign_manifest(m)
    proxy.answers.update({"manifest.json": body, "manifest.json.minisig": sig, "snapshots/2.json": data,
                          "snapshots/2.json.minisig": feed.sign("snapshots/2.json", data, 2)})

    refused(feed, says=says)
