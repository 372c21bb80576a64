"""A pull with nothing new: the manifest is checked as always, the list held is not read, no
file is written; anything not as the last run left it is put right as before.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from client.digest import Digest
from client.errors import RefusedError
from client.listfile import Lines
from client.minisign import SecretKey
from client.pull import describe
from client.state import StateDir
from client.updater import Report, Updater
from tests.feed_builder import FeedBuilder, rec
from tests.test_client_incremental import config, pull


def start(tmp_path: Path) -> FeedBuilder:
    builder = FeedBuilder()
    builder.publish([rec(f"site{i:02}.test", subdomains=i % 3 == 0) for i in range(40)]
                    + [rec("www.site03.test"), rec("https://host.example/a?b=1", etype="url")])
    assert pull(builder, tmp_path).via == "snapshot"
    return builder


def stamps(d: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, inode) of every output and every file of the state directory but state.json."""
    out: dict[str, tuple[int, int, int]] = {}
    for p in sorted([*(d / "out").iterdir(), *(d / "state").iterdir()]):
        if p.name != "state.json":
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def state(d: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((d / "state" / "state.json").read_text())
    return doc


def unread(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, fail the test if a run reads the list held, or checks or hashes a list."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the list was read")

    monkeypatch.setattr(StateDir, "load_held", refuse)
    monkeypatch.setattr(Lines, "check", refuse)
    monkeypatch.setattr(Digest, "of_data", refuse)
    monkeypatch.setattr(Digest, "of_data_counted", refuse)


def test_a_pull_with_nothing_new_reads_no_list_and_writes_no_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    builder = start(tmp_path)
    unread(monkeypatch)
    before = stamps(tmp_path)
    first = state(tmp_path)
    builder.now += 900
    builder.manifest()  # the feed re-signs its manifest: same version, a later expiry

    report = pull(builder, tmp_path)

    assert report.via == "held" and not report.changed
    assert describe(report)[0] == "version 1 is current (42 entries)"
    assert stamps(tmp_path) == before
    after = state(tmp_path)
    assert after["manifest_expires_at"] != first["manifest_expires_at"]
    assert after["last_check"] == builder.now and after["last_change"] == first["last_change"]
    assert {k: v for k, v in after.items() if not k.startswith(("last_", "manifest_"))} \
        == {k: v for k, v in first.items() if not k.startswith(("last_", "manifest_"))}
    assert builder.fetched[-2:] == ["manifest.json", "manifest.json.minisig"]
    assert not any(f.startswith(("snapshots/", "deltas/")) for f in builder.fetched[-2:])


def test_a_dry_run_with_nothing_new_reads_no_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = start(tmp_path)
    unread(monkeypatch)
    before = stamps(tmp_path), state(tmp_path)

    report = Updater(config(builder, tmp_path), builder, clock=lambda: builder.now).run(dry_run=True)

    assert report.via == "held" and report.dry_run and not report.changed
    assert (stamps(tmp_path), state(tmp_path)) == before


def test_a_pull_with_nothing_new_still_refuses_an_expired_manifest(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    builder = start(tmp_path)
    unread(monkeypatch)
    before = stamps(tmp_path)
    builder.now += 2 * 3600  # the manifest is not re-signed: it expired an hour ago

    with pytest.raises(RefusedError, match=r"expired at .*: the feed is frozen or an old manifest is being replayed"):
        pull(builder, tmp_path)

    assert stamps(tmp_path) == before
    assert "expired" in str(state(tmp_path)["last_error"])


def test_a_pull_with_nothing_new_still_refuses_a_replayed_older_manifest(tmp_path: Path) -> None:
    builder = FeedBuilder()
    records = [rec(f"site{i:02}.test") for i in range(20)]
    builder.publish(records)
    old = {k: builder.files[k] for k in ("manifest.json", "manifest.json.minisig")}
    builder.publish([*records, rec("new.test")])
    pull(builder, tmp_path)
    assert pull(builder, tmp_path).via == "held"
    before = stamps(tmp_path)
    builder.files.update(old)  # still within its validity

    with pytest.raises(RefusedError, match="older than the version 2 held: refusing a rollback"):
        pull(builder, tmp_path)

    assert stamps(tmp_path) == before
    assert state(tmp_path)["version"] == 2


def test_a_pull_with_nothing_new_still_refuses_a_manifest_signed_by_another_key(tmp_path: Path) -> None:
    builder = start(tmp_path)
    before = stamps(tmp_path)
    genuine = builder.key
    builder.key = SecretKey.generate()
    builder.manifest()  # the same version, signed by a key the client does not trust
    builder.key = genuine

    with pytest.raises(RefusedError, match="which is not a pinned key"):
        pull(builder, tmp_path)

    assert stamps(tmp_path) == before


@pytest.mark.parametrize("damage", ["edited", "truncated", "removed", "replaced by a copy"])
def test_a_damaged_output_is_written_again_on_a_pull_with_nothing_new(tmp_path: Path, damage: str) -> None:
    builder = start(tmp_path)
    fresh = pull(builder, tmp_path / "fresh")
    zone = tmp_path / "out" / "0.rpz"
    good = zone.read_bytes()
    assert good == (tmp_path / "fresh" / "out" / "0.rpz").read_bytes()
    if damage == "edited":
        zone.write_bytes(good.replace(b"site01.test CNAME .\n", b""))
    elif damage == "truncated":
        zone.write_bytes(good[: len(good) // 2])
    elif damage == "removed":
        zone.unlink()
    else:  # same bytes, another file (a restore from a backup): not the file written
        copy = zone.with_name("copy")
        copy.write_bytes(good)
        copy.replace(zone)

    report = pull(builder, tmp_path)

    assert report.via == "held"
    rpz = next(o for o in report.outputs if o.spec.path == zone)
    others = [o for o in report.outputs if o.spec.path != zone]
    assert rpz.changed == (damage != "replaced by a copy") and not any(o.changed for o in others)
    assert zone.read_bytes() == good
    for mine, theirs in zip(report.outputs, fresh.outputs, strict=True):
        assert mine.spec.path.read_bytes() == theirs.spec.path.read_bytes()
    # The file is now the one recorded: the next run with nothing new reads no list again.
    assert pull(builder, tmp_path).via == "held"
    assert state(tmp_path)["outputs"][str(zone)]["stamp"][2] == zone.stat().st_ino  # type: ignore[index]


def test_a_missing_held_list_is_taken_again_on_a_pull_with_nothing_new(tmp_path: Path) -> None:
    builder = start(tmp_path)
    held = tmp_path / "state" / "entries.jsonl"
    data = held.read_bytes()
    held.unlink()

    report = pull(builder, tmp_path)

    assert report.via == "snapshot" and not report.changed
    assert "cannot be used" in describe(report)[1]
    assert held.read_bytes() == data


def test_a_pending_reload_runs_on_a_pull_with_nothing_new(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = start(tmp_path)
    unread(monkeypatch)
    sd = StateDir(tmp_path / "state")
    sd.save(replace(sd.load(), reload_pending=True))  # the last post-apply command failed
    ran = tmp_path / "ran"
    cfg = replace(config(builder, tmp_path),
                  post_apply=(sys.executable, "-c", f"open({str(ran)!r}, 'w').write('done')"))

    report: Report = Updater(cfg, builder, clock=lambda: builder.now).run()

    assert report.via == "held" and report.post_apply == "ran"
    assert ran.read_text() == "done"
    assert sd.load().reload_pending is False
