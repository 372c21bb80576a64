"""The store's published form: every active entry's feed line and zone lines,
kept in order by Redis as entries are written, read by a full publication
instead of decoding, formatting and sorting every record."""

from __future__ import annotations

import json
import logging

import pytest

from app.core import Core
from app.listbuild import full_lines, line_key, lines_from_store, zone_fragment_of
from app.store import K
from client.digest import Digest
from tests.conftest import FakeClock, Personas, publish
from tests.test_publishing import activate, bulk_active


def from_records(core: Core) -> tuple[list[bytes], list[bytes]]:
    return full_lines(core.store.entries.iter_raw())


def from_form(core: Core, batch: int = 3) -> tuple[list[bytes], list[bytes]] | None:
    built = lines_from_store(core.store.published.read(batch=batch))
    if built is None:
        return None
    lines, zone, digest = built
    assert digest.hexdigest() == Digest.of_lines(lines).hexdigest()
    return lines, zone


def test_the_published_form_follows_every_curation_action(core: Core, personas: Personas,
                                                         clock: FakeClock) -> None:
    p = personas
    ids = activate(core, p, "a.example.test", "b.example.test", "c.example.test", "d.example.test",
                   "http://x.example.test/!a", "http://x.example.test/a", "e.example.test")
    activate(core, p, "narrow.example.test", subdomains=False)
    assert core.store.published.counts() == (8, 8)
    assert from_form(core) == from_records(core)
    core.curation.act(p.bruno.actor, ids[0], "delist", "site gone")
    core.curation.act(p.bruno.actor, ids[1], "suspend", "under review")
    clock.advance(3600)
    core.curation.act(p.bruno.actor, ids[2], "reverify")  # a new verified_at: the line changes
    core.curation.act(p.ada.actor, ids[1], "reinstate", "checked again")
    core.curation.act(p.bruno.actor, ids[5], "delist", "gone")
    pending = core.curation.submit(p.alice.actor, "pending.example.test", "domain")
    form = from_form(core)
    assert form == from_records(core)
    lines, zone = form
    values = [line_key(x) for x in lines]
    assert "d:a.example.test" not in values and "d:pending.example.test" not in values
    assert "d:b.example.test" in values and "u:http://x.example.test/!a" in values
    assert core.store.published.counts() == (len(lines), len(lines))
    # Each domain's zone lines are those of its line, URLs have none.
    assert zone == [zone_fragment_of(x) for x in lines]
    core.curation.act(p.bruno.actor, pending.id, "approve")
    assert from_form(core) == from_records(core)


@pytest.mark.parametrize("batch", [1, 2, 5, 1000])
def test_a_full_publication_from_the_published_form_equals_one_from_every_record(
        core: Core, personas: Personas, batch: int) -> None:
    activate(core, personas, "http://u.example.test/p", "zz.example.test")
    bulk_active(core, 300)
    assert from_form(core, batch) == from_records(core)
    out = publish(core)
    snap = json.loads(core.artifacts.read(f"snapshots/{out.version}.json"))
    lines, _ = from_records(core)
    assert [json.dumps(e, separators=(",", ":")).encode() for e in snap["entries"]] == lines


def test_a_store_made_before_the_published_form_is_filled_once_by_the_publisher(
        core: Core, personas: Personas, caplog: pytest.LogCaptureFixture) -> None:
    core.curation.set_policy(personas.ada.actor, {"guard_add_max": 10**6, "guard_add_pct": 10**6})
    ids = activate(core, personas, "old1.example.test", "old2.example.test")
    bulk_active(core, 2500)
    # As a store written by an older release: its published form was two
    # sorted sets, dropped when a process of this release opens the store.
    core.store.r.delete(K.feed_index, K.feed_chunks, K.feed_zchunks, K.feed_count, K.feed_ready)
    legacy = K.legacy_feed
    core.store.r.zadd(legacy[0], {'{"type":"domain","value":"old1.example.test"}': 0})
    core.store.r.set(legacy[2], "1")
    core.store.upgrade_key_names()
    assert not core.store.r.exists(*legacy)
    core.curation.act(personas.bruno.actor, ids[0], "delist", "gone")  # written meanwhile
    expected = from_records(core)
    with caplog.at_level(logging.INFO, logger="blocklist.publisher"):
        out = publish(core)
    assert "filled the published form with 2501 active entries" in caplog.text
    assert core.store.published.ready()
    assert from_form(core, 97) == expected
    assert core.publisher.latest()["count"] == 2501
    snap = json.loads(core.artifacts.read(f"snapshots/{out.version}.json"))
    assert [json.dumps(e, separators=(",", ":")).encode() for e in snap["entries"]] == expected[0]


def test_an_entry_written_behind_the_published_forms_back_is_noticed_and_the_list_built_from_records(
        core: Core, personas: Personas, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    activate(core, personas, "one.example.test", "two.example.test")
    # An older release writing active entries without keeping the published form.
    monkeypatch.setattr(core.store.published, "stage", lambda txn: txn.feed.clear())
    bulk_active(core, 3)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="blocklist.publisher"):
        publish(core)
    assert "does not match the entries (2 lines for 5 active entries)" in caplog.text
    assert core.publisher.latest()["count"] == 5
    # It is filled again when a full build next needs it, and matches the records.
    lines, zone, _ = core.publisher._full_build()
    assert core.store.published.ready()
    assert from_form(core) == from_records(core) == (lines, zone)


def test_lines_merged_behind_the_reader_into_a_later_chunk_are_read_once_with_their_own_zone_lines(
        core: Core, personas: Personas) -> None:
    ids = bulk_active(core, 120, prefix="n")
    assert core.store.r.zcard(K.feed_index) >= 3
    reader = core.store.published.read(batch=1)
    batches = [next(reader)]
    _, chunks, _ = batches[0]
    first = chunks[0].split(b"\n")[:-1]
    assert len(first) >= 2, "the first chunk holds more than its last line"
    # The line that ends the first chunk read goes: the rest of that chunk,
    # already read, is merged into the next chunk, which the reader reads next.
    last = next(i for i in ids if core.store.entries.raw(i) and
                f'"n{i}.example.test"'.encode() in first[-1])
    entry = core.curation.get(last)
    core.store.transact(lambda txn: core.store.entries.put(
        txn, entry.id, entry.to_json().replace('"st":"active"', '"st":"delisted"'),
        expect_json=core.store.entries.raw(entry.id), index_key=entry.key, old_status="active",
        new_status="delisted", score=0.0, dirty=True))
    batches += list(reader)
    built = lines_from_store(batches)
    assert built is not None
    lines, zone, digest = built
    assert len(lines) == len(set(lines)) == 120, "read once each (the delisted line was read before it went)"
    assert lines == sorted(lines)
    assert zone == [zone_fragment_of(x) for x in lines]
    assert digest.hexdigest() == Digest.of_lines(lines).hexdigest()
    # Read again, the form is the records' list.
    assert from_form(core, 2) == from_records(core)


def _line(i: int, tag: str = "") -> tuple[str, tuple[str, str]]:
    value = f"v{i:04d}.example.test"
    return "d:" + value, (f'{{"type":"domain","value":"{value}","tag":"{tag}"}}', f"{value} CNAME .\n")


def test_the_published_form_keeps_the_digests_chunks_through_any_sequence_of_changes(core: Core) -> None:
    """Additions, removals and replacements in random batches: after each step
    the stored chunks are exactly the list digest's chunks of the lines held."""
    import random

    rnd = random.Random(7)
    held: dict[str, tuple[str, str]] = {}
    for step in range(60):
        change: dict[str, tuple[str, str] | None] = {}
        for _ in range(rnd.choice([1, 1, 3, 40, 200])):
            i = rnd.randrange(600)
            key, new = _line(i, tag=str(rnd.randrange(3)))
            if key in held and rnd.random() < 0.5:
                change[key] = None
            else:
                change[key] = new
        core.store.transact(lambda txn, change=change: txn.feed.update(change))
        for k, v in change.items():
            if v is None:
                held.pop(k, None)
            else:
                held[k] = v
        expected = [held[k][0].encode() for k in sorted(held)]
        built = lines_from_store(core.store.published.read(batch=rnd.choice([1, 2, 7, 2000])))
        assert built is not None, f"step {step}: the form reads back"
        lines, zone, digest = built
        assert lines == expected, f"step {step}"
        assert zone == [held[k][1].encode() for k in sorted(held)]
        assert digest.hexdigest() == Digest.of_lines(expected).hexdigest(), f"step {step}"
        stored = core.store.r.hgetall(K.feed_chunks)
        assert len(stored) == len(digest) == core.store.r.zcard(K.feed_index)
        assert int(core.store.r.get(K.feed_count) or 0) == len(held)


def test_two_steps_that_read_the_same_chunk_cannot_both_write_it(core: Core) -> None:
    from app.errors import RetryableConflictError
    from app.store import Txn

    core.store.transact(lambda txn: txn.feed.update(dict(_line(i) for i in range(5))))
    a, b = Txn(), Txn()
    a.feed.update(dict([_line(10)]))
    b.feed.update(dict([_line(11)]))
    core.store.published.stage(a)
    core.store.published.stage(b)  # read the same chunk as a
    core.store.commit(a)
    with pytest.raises(RetryableConflictError):
        core.store.commit(b)
    # Through transact, b's change is read again and gets through.
    core.store.transact(lambda txn: txn.feed.update(dict([_line(11)])))
    built = lines_from_store(core.store.published.read())
    assert built is not None
    assert [line_key(x) for x in built[0]] == ["d:" + f"v{i:04d}.example.test" for i in (0, 1, 2, 3, 4, 10, 11)]


def test_a_full_rebuild_finds_a_line_changed_behind_the_published_forms_back_and_publishes_the_records(
        core: Core, personas: Personas, clock: FakeClock, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ids = activate(core, personas, "one.example.test", "two.example.test", "three.example.test")
    publish(core)
    # An older release re-verifies an entry without keeping the form: same count, a stale line.
    clock.advance(7200)
    monkeypatch.setattr(core.store.published, "stage", lambda txn: txn.feed.clear())
    core.curation.act(personas.bruno.actor, ids[1], "reverify")
    monkeypatch.undo()
    assert core.store.published.counts() == (3, 3)
    with caplog.at_level(logging.WARNING, logger="blocklist.publisher"):
        out = core.publisher.publish(full=True, force=True)
    assert "differs from the entries (1 lines, such as d:two.example.test)" in caplog.text
    snap = json.loads(core.artifacts.read(f"snapshots/{out.version}.json"))
    assert [json.dumps(e, separators=(",", ":")).encode() for e in snap["entries"]] == from_records(core)[0]
    assert not core.store.published.ready(), "dropped, to be filled again"
    activate(core, personas, "four.example.test")
    lines, zone, _ = core.publisher._full_build()
    assert core.store.published.ready()
    assert from_form(core) == from_records(core) == (lines, zone)


def test_an_entry_written_while_a_full_rebuild_reads_the_records_is_not_taken_for_damage(
        core: Core, personas: Personas, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import app.publishing

    activate(core, personas, "one.example.test", "two.example.test")
    publish(core)
    real = app.publishing.full_lines

    def then_a_curator_acts(records: object) -> tuple[list[bytes], list[bytes]]:
        built = real(records)  # type: ignore[arg-type]
        activate(core, personas, "late.example.test")
        return built

    monkeypatch.setattr(app.publishing, "full_lines", then_a_curator_acts)
    with caplog.at_level(logging.WARNING, logger="blocklist.publisher"):
        core.publisher.publish(full=True, force=True)
    assert "differs from the entries" not in caplog.text
    assert core.store.published.ready()
    assert from_form(core) == from_records(core)
