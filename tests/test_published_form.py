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
    # As a store written by an older release: no published form at all.
    core.store.r.delete(K.feed_lines, K.feed_zone, K.feed_ready)
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
        core: Core, personas: Personas, caplog: pytest.LogCaptureFixture) -> None:
    activate(core, personas, "one.example.test", "two.example.test")
    # An older release writing an active entry without keeping the published form.
    bulk_active(core, 3)
    core.store.r.zrem(K.feed_lines, *core.store.r.zrange(K.feed_lines, 0, 0))
    with caplog.at_level(logging.WARNING, logger="blocklist.publisher"):
        publish(core)
    assert "does not match the entries (4 lines for 5 active entries)" in caplog.text
    assert core.publisher.latest()["count"] == 5
    # It is filled again on the next full build and matches the records.
    core.publisher.publish(full=True, force=True)
    assert core.store.published.ready()
    assert from_form(core) == from_records(core)


def test_a_line_changed_between_two_batches_is_read_once_with_its_own_zone_lines(
        core: Core, personas: Personas) -> None:
    ids = activate(core, personas, *(f"n{i:02d}.example.test" for i in range(12)), subdomains=False)
    reader = core.store.published.read(batch=4)
    batches = [next(reader)]
    # The last line of the first batch changes (subdomains on: its line and its
    # zone lines now sort after the old ones, inside the next batch's range if
    # that started at the old line), and one before the cursor is added.
    last = batches[0][0][-1]
    entry = core.curation.get(ids[3])
    assert last.startswith(b'{"type":"domain","value":"n03.example.test"')
    core.store.transact(lambda txn: core.store.entries.put(
        txn, entry.id, entry.to_json().replace('"s":0', '"s":1'), expect_json=core.store.entries.raw(entry.id),
        index_key=entry.key, old_status="active", new_status="active", score=0.0, dirty=True))
    activate(core, personas, "n00a.example.test")
    batches += list(reader)
    built = lines_from_store(batches)
    assert built is not None
    lines, zone, _ = built
    assert len([x for x in lines if b'"n03.example.test"' in x]) == 1
    assert zone == [zone_fragment_of(x) for x in lines]
