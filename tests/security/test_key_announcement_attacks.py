"""Door: the next-key announcement in the manifest (key rotation).

A pull client learns the programme's next key only from a manifest whose
signature by a key it already trusts verified. An attacker who can serve
files (a local HTTP server in front of the real feed plays them) tries to
slip in a key of their own: each try is refused with one line, and the
attacker's key never becomes trusted. Once the programme has moved to its
new key, a stolen old key signs nothing the client accepts.
"""

from __future__ import annotations

import json
from typing import Any

from app.domain import SYSTEM
from app.keys import Keyring
from client.minisign import SecretKey
from tests.test_client_support import Feed, Proxy


def hold(feed: Feed, proxy: Proxy) -> None:
    feed.list("first.example.test")
    feed.publish()
    feed.config(url=proxy.url)
    r = feed.pull()
    assert r.code == 0, r.err
    assert feed.held_version() == 1


def manifest(feed: Feed) -> dict[str, Any]:
    return dict(json.loads(feed.artifact("manifest.json")))


def announce(m: dict[str, Any], key: SecretKey) -> dict[str, Any]:
    return {**m, "next_key": {"key_id": key.public.id_hex, "public_key": key.public.base64(),
                              "from": m["published_at"]}}


def trusted_ids(feed: Feed) -> set[str]:
    path = feed.state / "keys.json"
    if not path.exists():
        return set()
    return {k["key_id"] for k in json.loads(path.read_text())["learned"]}


def refused(feed: Feed, says: str) -> None:
    before = feed.snapshot_outputs()
    held = feed.held_version()
    r = feed.pull()
    assert r.code == 1, r
    assert r.err.startswith("blocklist-pull: ") and r.err.count("\n") == 1, r.err
    assert says in r.err, r.err
    assert feed.snapshot_outputs() == before
    assert feed.held_version() == held


def test_an_announcement_in_a_manifest_signed_by_an_attacker_key_is_refused(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    attacker, attacker_next = SecretKey.generate(), SecretKey.generate()
    m = announce({**manifest(feed), "version": 2, "key_id": attacker.public.id_hex}, attacker_next)
    body, sig = feed.resign_manifest(m, key=attacker)
    proxy.answers["manifest.json"] = body
    proxy.answers["manifest.json.minisig"] = sig

    refused(feed, f"signed by key {attacker.public.id_hex}, which is not a pinned key")
    assert attacker_next.public.id_hex not in trusted_ids(feed)

    # The key the forged manifest announced signs nothing the client accepts.
    m = {**manifest(feed), "version": 2, "key_id": attacker_next.public.id_hex}
    proxy.answers["manifest.json"], proxy.answers["manifest.json.minisig"] = feed.resign_manifest(
        m, key=attacker_next)
    refused(feed, f"signed by key {attacker_next.public.id_hex}, which is not a pinned key")
    assert trusted_ids(feed) == set()


def test_an_announcement_spliced_into_a_genuine_manifest_breaks_its_signature(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    attacker = SecretKey.generate()
    genuine_sig = feed.artifact("manifest.json.minisig")
    spliced = announce(manifest(feed), attacker)
    proxy.answers["manifest.json"] = (json.dumps(spliced, indent=1) + "\n").encode()
    proxy.answers["manifest.json.minisig"] = genuine_sig

    refused(feed, "the signature of the manifest does not verify")
    assert attacker.public.id_hex not in trusted_ids(feed)

    m = {**manifest(feed), "version": 2, "key_id": attacker.public.id_hex}
    proxy.answers["manifest.json"], proxy.answers["manifest.json.minisig"] = feed.resign_manifest(m, key=attacker)
    refused(feed, "which is not a pinned key")


def test_a_stolen_retired_key_signs_nothing_after_the_programme_moved_to_its_successor(
        feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    core = feed.core
    old = core.publisher.key
    ring = Keyring(core.store, core.settings.signing_key_file, core.clock)
    rec = ring.rotate(SYSTEM, overlap=0)
    assert rec.next is not None
    feed.list("second.example.test")
    feed.publish()  # signed by the old key, announcing the new one
    assert feed.pull().code == 0
    assert trusted_ids(feed) == {rec.next.key_id}
    ring.complete(SYSTEM)
    feed.list("third.example.test")
    v3 = feed.publish()  # signed by the new key
    r = feed.pull()
    assert r.code == 0, r.err
    assert feed.held_version() == v3
    assert json.loads((feed.state / "keys.json").read_text())["retired"] == [old.public.id_hex]

    # The old key is still pinned in the ISP's configuration, and the attacker has it.
    m = {**manifest(feed), "version": v3 + 1, "key_id": old.public.id_hex}
    proxy.answers["manifest.json"], proxy.answers["manifest.json.minisig"] = feed.resign_manifest(m, key=old)
    refused(feed, f"signed by key {old.public.id_hex}, which is not a pinned key")


def test_an_announcement_whose_key_id_does_not_match_its_key_is_refused(feed: Feed, proxy: Proxy) -> None:
    hold(feed, proxy)
    attacker, other = SecretKey.generate(), SecretKey.generate()
    m = announce(manifest(feed), attacker)
    m["next_key"]["key_id"] = other.public.id_hex
    proxy.answers["manifest.json"], proxy.answers["manifest.json.minisig"] = feed.resign_manifest(m)

    refused(feed, "names a key id that differs from its public key")
    assert trusted_ids(feed) == set()
