"""A snapshot is hashed and its signature checked in a thread while its lines are read: a file
that is not the one signed is refused as such, whatever else is wrong with it, and a snapshot in
another layout is parsed as a whole only once it is known to be the one signed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from client import listfile, updater
from client.errors import RefusedError
from client.minisign import SecretKey
from tests.feed_builder import FeedBuilder, rec
from tests.test_client_incremental import pull


def published(n: int = 50) -> FeedBuilder:
    builder = FeedBuilder()
    builder.publish([rec(f"site{i:02}.test") for i in range(n)])
    return builder


@pytest.mark.parametrize("damage", ["an entry", "its head", "its end", "cut short"])
def test_a_snapshot_changed_after_signing_is_refused_for_its_sha256_not_its_content(tmp_path: Path,
                                                                                     damage: str) -> None:
    builder = published()
    data = builder.files["snapshots/1.json"]
    if damage == "an entry":  # "site0#.test": not a host name, same size
        data = data.replace(b"site03.test", b"site0#.test")
    elif damage == "its head":
        data = data.replace(b'"schema":2', b'"schema":3')
    elif damage == "its end":
        data = data[:-3] + b"}}\n"
    else:
        data = data[: len(data) // 2]
    builder.files["snapshots/1.json"] = data

    with pytest.raises(RefusedError) as e:
        pull(builder, tmp_path)

    says = f"is {len(data)} bytes" if damage == "cut short" else "does not match the sha256 in the manifest"
    assert e.value.message.startswith("snapshots/1.json ") and says in e.value.message, e.value.message
    assert not (tmp_path / "state" / "entries.jsonl").exists()


def test_a_snapshot_signed_by_another_key_is_refused_for_its_signature(tmp_path: Path) -> None:
    builder = published()
    data = builder.files["snapshots/1.json"].replace(b"site03.test", b"site0#.test")
    manifest = json.loads(builder.files["manifest.json"])
    genuine = builder.key
    builder.key = SecretKey.generate()
    builder.put("snapshots/1.json", data, 1, manifest["expires_at"])  # signed, but not by a pinned key
    builder.key = genuine
    for a in manifest["artifacts"]:
        if a["path"] == "snapshots/1.json":
            a["sha256"] = hashlib.sha256(data).hexdigest()
    builder.sign_manifest(manifest)

    with pytest.raises(RefusedError, match=r"snapshots/1\.json is signed by key \w+, which is not a pinned key"):
        pull(builder, tmp_path)


def test_a_snapshot_in_another_layout_is_parsed_whole_only_once_checked(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    builder = published()
    doc = json.loads(builder.files["snapshots/1.json"])
    other = json.dumps(doc, indent=2).encode()  # valid, but not the publisher's layout
    expires = json.loads(builder.files["manifest.json"])["expires_at"]
    builder.put("snapshots/1.json", other, 1, expires)
    manifest = json.loads(builder.files["manifest.json"])
    for a in manifest["artifacts"]:
        if a["path"] == "snapshots/1.json":
            a["sha256"], a["size"] = hashlib.sha256(other).hexdigest(), len(other)
    builder.sign_manifest(manifest)
    strict, check = listfile.parse_snapshot, updater.check_artifact
    order: list[str] = []

    def parse(*args: object) -> object:
        order.append("parsed")
        return strict(*args)  # type: ignore[arg-type]

    def check_then_record(*args: object, **kwargs: object) -> None:
        check(*args, **kwargs)  # type: ignore[arg-type]
        order.append("checked")

    monkeypatch.setattr(listfile, "parse_snapshot", parse)
    monkeypatch.setattr(updater, "check_artifact", check_then_record)

    assert pull(builder, tmp_path).via == "snapshot"
    assert order == ["checked", "parsed"]
