"""The held list as a base and a journal: runs append their change, compaction writes a new base,
and a damaged journal or a run stopped at any step never leaves a list that is not the one recorded.

Each history is checked against a second client that takes the full snapshot of the same
version: same outputs, same list held.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from client import state as state_mod
from client.pull import describe
from client.state import StagedJournal, StagedLines, StateDir
from client.verify import Record
from tests.feed_builder import FeedBuilder
from tests.test_client_incremental import evolve, pull


def held(d: Path) -> bytes:
    sd = StateDir(d / "state")
    lines = sd.load_lines(sd.load())
    assert lines is not None
    return lines.data


def state(d: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((d / "state" / "state.json").read_text())
    return doc


def same_as_fresh(builder: FeedBuilder, d: Path, fresh: Path) -> None:
    report = pull(builder, fresh)
    assert report.via == "snapshot"
    assert held(d) == held(fresh)
    for mine in (d / "out").iterdir():
        theirs = fresh / "out" / mine.name
        # An output that did not change keeps the header of the version that last changed it.
        assert body(mine) == body(theirs), mine.name


def body(path: Path) -> list[bytes]:
    lines = path.read_bytes().split(b"\n")
    while lines and lines[0].startswith((b"#", b";")):
        lines.pop(0)
    return lines


class Crash(BaseException):
    """The process stopped here (not an error the tool handles)."""


def start(tmp_path: Path, n: int = 200) -> tuple[FeedBuilder, dict[str, Record], random.Random]:
    rng = random.Random(20261202)
    builder = FeedBuilder()
    current: dict[str, Record] = {}
    evolve(rng, current, n)
    builder.publish(list(current.values()))
    assert pull(builder, tmp_path / "c").via == "snapshot"
    return builder, current, rng


def step(builder: FeedBuilder, current: dict[str, Record], rng: random.Random, n: int = 5) -> None:
    builder.now += 60
    evolve(rng, current, n)
    builder.publish(list(current.values()))


def test_deltas_go_to_the_journal_then_a_compaction_writes_a_new_base(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "JOURNAL_RECORDS", 4)
    builder, current, rng = start(tmp_path)
    d = tmp_path / "c"
    base = (d / "state" / "entries.jsonl").read_bytes()
    base_stamp = state(d)["base_stamp"]
    sizes = []
    for i in range(4):
        step(builder, current, rng)
        assert pull(builder, d).via == "delta"
        # The base is untouched; the journal grows by one record, all of it recorded in the state.
        assert (d / "state" / "entries.jsonl").read_bytes() == base and state(d)["base_stamp"] == base_stamp
        sizes.append((d / "state" / "entries.journal").stat().st_size)
        assert state(d)["journal_size"] == sizes[-1] and state(d)["journal_records"] == i + 1
        same_as_fresh(builder, d, tmp_path / f"fresh-{i}")
    assert sizes == sorted(sizes) and sizes[0] > 0

    step(builder, current, rng)
    assert pull(builder, d).via == "delta"  # the fifth record would exceed 4: compaction

    assert state(d)["journal_size"] == 0 and state(d)["journal_records"] == 0
    assert (d / "state" / "entries.journal").stat().st_size == 0
    assert (d / "state" / "entries.jsonl").read_bytes() == held(d) != base
    assert (d / "state" / "entries.chunks").read_bytes() == StateDir(d / "state").load_lines(
        StateDir(d / "state").load()).digest.to_bytes()  # type: ignore[union-attr]
    same_as_fresh(builder, d, tmp_path / "fresh-compacted")
    step(builder, current, rng)
    assert pull(builder, d).via == "delta" and state(d)["journal_records"] == 1  # and on it goes
    same_as_fresh(builder, d, tmp_path / "fresh-after")


def test_a_journal_larger_than_its_share_of_the_base_is_compacted(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "JOURNAL_FLOOR", 0)
    monkeypatch.setattr(state_mod, "JOURNAL_SHARE", 4)  # a quarter of the base's bytes
    builder, current, rng = start(tmp_path)
    d = tmp_path / "c"
    base_size = (d / "state" / "entries.jsonl").stat().st_size
    records = []
    for _ in range(12):
        step(builder, current, rng, 3)
        pull(builder, d)
        records.append(state(d)["journal_records"])
        assert (d / "state" / "entries.journal").stat().st_size <= base_size // 4
        base_size = (d / "state" / "entries.jsonl").stat().st_size
    assert 0 in records and max(records) >= 2, records  # appended, and compacted now and then
    same_as_fresh(builder, d, tmp_path / "fresh")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "removed", "record cut"])
def test_a_damaged_journal_leads_to_a_full_pull_that_says_why(tmp_path: Path, damage: str) -> None:
    builder, current, rng = start(tmp_path)
    d = tmp_path / "c"
    for _ in range(3):
        step(builder, current, rng)
        pull(builder, d)
    journal = d / "state" / "entries.journal"
    data = journal.read_bytes()
    assert state(d)["journal_records"] == 3
    if damage == "flipped byte":
        i = data.index(b'"value":"') + 10
        journal.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :])
        why = "does not match the sha256 recorded in state.json"
    elif damage == "truncated":
        journal.write_bytes(data[: len(data) // 2])
        why = f"is shorter than recorded ({len(data) // 2} bytes of {len(data)})"
    elif damage == "removed":
        journal.unlink()
        why = "is missing"
    else:  # a journal whose sha256 matches but does not fit the base (written by something else)
        sd = StateDir(d / "state")
        st = sd.load()
        bad = b'{"version":9,"removed":1,"added":0}\n-{"type":"domain","value":"zz-not-held.test"}\n'
        journal.write_bytes(bad)
        sd.save(st.__class__(**{**st.__dict__, "journal_size": len(bad),
                                "journal_sha256": hashlib.sha256(bad).hexdigest()}))
        why = "does not fit"
    step(builder, current, rng)

    report = pull(builder, d)

    assert report.via == "snapshot"
    lines = describe(report)
    assert lines[1].startswith("  the list held cannot be used (") and why in lines[1], lines
    assert lines[1].endswith("): taking the full snapshot")
    assert state(d)["journal_size"] == 0
    same_as_fresh(builder, d, tmp_path / "fresh")
    step(builder, current, rng)
    assert pull(builder, d).via == "delta"


def test_a_run_stopped_between_the_journal_append_and_the_state_goes_on_from_the_list_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder, current, rng = start(tmp_path)
    d = tmp_path / "c"
    step(builder, current, rng)
    pull(builder, d)
    before = state(d)
    list_before = held(d)
    step(builder, current, rng)
    commit = StagedJournal.commit

    def crash(self: StagedJournal) -> object:
        commit(self)  # the record is appended and synced, the chunk digests renamed...
        raise Crash  # ...and the process stops before state.json names them

    monkeypatch.setattr(StagedJournal, "commit", crash)
    with pytest.raises(Crash):
        pull(builder, d)
    monkeypatch.undo()

    assert state(d)["version"] == before["version"] and state(d)["journal_size"] == before["journal_size"]
    assert (d / "state" / "entries.journal").stat().st_size > before["journal_size"]  # type: ignore[operator]
    assert held(d) == list_before  # the bytes past the recorded size are not read
    report = pull(builder, d)
    assert report.via == "delta" and report.notes == []
    assert state(d)["version"] == builder.versions[-1].number
    same_as_fresh(builder, d, tmp_path / "fresh")
    step(builder, current, rng)
    assert pull(builder, d).via == "delta"
    same_as_fresh(builder, d, tmp_path / "fresh-next")


def test_a_run_stopped_during_a_compaction_leaves_a_state_that_takes_the_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_mod, "JOURNAL_RECORDS", 2)
    builder, current, rng = start(tmp_path)
    d = tmp_path / "c"
    for _ in range(2):
        step(builder, current, rng)
        pull(builder, d)
    before = state(d)
    step(builder, current, rng)
    commit = StagedLines.commit

    def crash(self: StagedLines) -> object:
        commit(self)  # the new base and its chunk digests are in place...
        raise Crash  # ...but state.json still names the old base and its journal

    monkeypatch.setattr(StagedLines, "commit", crash)
    with pytest.raises(Crash):
        pull(builder, d)
    monkeypatch.undo()

    assert state(d)["version"] == before["version"]
    sd = StateDir(d / "state")
    assert isinstance(sd.load_held(sd.load()), str)  # the old journal on the new base: not the list recorded
    report = pull(builder, d)
    assert report.via == "snapshot" and "taking the full snapshot" in describe(report)[1]
    same_as_fresh(builder, d, tmp_path / "fresh")


def test_a_chunk_digest_file_from_a_stopped_run_is_not_used_and_the_list_is_compacted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder, current, rng = start(tmp_path)
    d = tmp_path / "c"
    step(builder, current, rng)
    pull(builder, d)
    (d / "state" / "entries.chunks").write_bytes(b"\0" * 32)  # as if another list's

    sd = StateDir(d / "state")
    kept = sd.load_held(sd.load())
    assert not isinstance(kept, str) and kept is not None and not kept.trusted  # hashed in full, and it matches
    step(builder, current, rng)
    assert pull(builder, d).via == "delta"
    assert state(d)["journal_size"] == 0  # written in full, so the next run trusts it again
    same_as_fresh(builder, d, tmp_path / "fresh")


def test_a_tool_without_the_journal_does_not_take_the_base_for_the_list(tmp_path: Path) -> None:
    builder, current, rng = start(tmp_path)
    d = tmp_path / "c"
    step(builder, current, rng)
    pull(builder, d)
    doc = state(d)
    # The stamp an older tool trusts is left empty: it would hash entries.jsonl in full, and
    # find that it is not the list recorded.
    assert doc["entries_stamp"] is None and doc["base_stamp"] is not None and doc["journal_size"]


@pytest.mark.parametrize("lines", [
    [], ["d:a.test"], ["d:a.test", "d:b.test"], ["u:https://a.test/x"], ["u:https://a.test/x", "u:https://b.test/"],
    ["d:a.test", "u:https://a.test/x"], ["d:a.test", "d:b.test", "u:https://a.test/x", "u:https://b.test/"],
])
def test_the_url_lines_of_a_held_list_are_found_from_its_end(lines: list[str]) -> None:
    from client.listfile import find_url_start, held_url_start, record_line
    from tests.feed_builder import rec

    data = b"".join(record_line(rec(x[2:], etype="domain" if x[0] == "d" else "url")) for x in lines)
    assert held_url_start(data) == find_url_start(data)
