"""Snapshot + chain: the manifest names the newest full snapshot and the deltas after it.

The service writes full snapshots only now and then (compaction); versions
in between exist as deltas only. A new client takes the snapshot and the
chain after it; a client inside the chain takes only deltas; a client older
than the chain reaches takes the snapshot and the chain; and every one of
them writes exactly what a client of a feed with full snapshots everywhere
writes. Manifests are built and signed with the real signing code
(tests/feed_builder.py, the publisher's layout).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from client.errors import RefusedError
from client.pull import describe
from client.verify import Record
from tests.feed_builder import FeedBuilder, rec
from tests.test_client_incremental import pull


def history() -> list[list[Record]]:
    base = [rec(f"site{i}.test", subdomains=i % 3 == 0) for i in range(40)]
    return [
        base,
        [*base[2:], rec("new1.test", subdomains=True)],
        [*base[2:], rec("new1.test", subdomains=True), rec("www.new1.test"), rec("https://x.test/a", etype="url")],
        [*base[5:], rec("new1.test"), rec("www.new1.test"), rec("z.test")],
        [*base[5:], rec("new1.test"), rec("z.test"), rec("zz.test", subdomains=True)],
        [*base[6:], rec("new1.test"), rec("z.test"), rec("zz.test", subdomains=True), rec("y.test")],
    ]


def feeds() -> tuple[FeedBuilder, FeedBuilder]:
    """(a feed that writes full snapshots now and then, one that writes them for every version),
    with the same key; :func:`advance` moves both along the same history."""
    compacted, everywhere = FeedBuilder(), FeedBuilder()
    everywhere.key = compacted.key
    return compacted, everywhere


def advance(compacted: FeedBuilder, everywhere: FeedBuilder, version: int, fulls: set[int], retain: int = 100) -> None:
    records = history()[version - 1]
    compacted.now = everywhere.now = 1_800_000_000.0 + 60 * version
    compacted.publish(records, full=version in fulls, retain=retain)
    everywhere.publish(records)


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in (a / "out").iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in (b / "out").iterdir() if not p.name.startswith("."))
    for name in names:
        assert (a / "out" / name).read_bytes() == (b / "out" / name).read_bytes(), name


def test_a_first_pull_takes_the_snapshot_and_the_chain_after_it(tmp_path: Path) -> None:
    compacted, everywhere = feeds()
    for v in (1, 2, 3):
        advance(compacted, everywhere, v, {1})

    report = pull(compacted, tmp_path / "new")
    pull(everywhere, tmp_path / "reference")

    assert report.via == "snapshot" and report.version == 3
    assert describe(report)[0] == "applied version 3 (the full snapshot of version 1 and 2 deltas; 41 entries)"
    assert [p for p in compacted.fetched if not p.endswith(".minisig")] == [
        "manifest.json", "snapshots/1.json", "deltas/1/2.json", "deltas/2/3.json"]
    same_files(tmp_path / "new", tmp_path / "reference")


def test_a_client_inside_the_chain_takes_only_the_deltas(tmp_path: Path) -> None:
    compacted, everywhere = feeds()
    for v in (1, 2):
        advance(compacted, everywhere, v, {1})
    pull(compacted, tmp_path / "client")
    pull(everywhere, tmp_path / "reference")
    for v in (3, 4, 5):
        advance(compacted, everywhere, v, {1})
    compacted.fetched.clear()

    report = pull(compacted, tmp_path / "client")
    pull(everywhere, tmp_path / "reference")

    assert report.via == "delta" and report.steps == 3
    assert not any(p.startswith("snapshots/") for p in compacted.fetched)
    same_files(tmp_path / "client", tmp_path / "reference")


def test_a_client_older_than_the_chain_reaches_takes_the_newest_snapshot_and_its_chain(tmp_path: Path) -> None:
    fulls = {1, 4}
    compacted, everywhere = feeds()
    advance(compacted, everywhere, 1, fulls, retain=1)
    pull(compacted, tmp_path / "client")
    pull(everywhere, tmp_path / "reference")
    for v in (2, 3, 4, 5, 6):
        advance(compacted, everywhere, v, fulls, retain=1)  # deltas before version 4 are no longer listed
    compacted.fetched.clear()

    report = pull(compacted, tmp_path / "client")
    pull(everywhere, tmp_path / "reference")

    assert describe(report)[0].startswith("applied version 6 (the full snapshot of version 4 and 2 deltas")
    assert [p for p in compacted.fetched if not p.endswith(".minisig")] == [
        "manifest.json", "snapshots/4.json", "deltas/4/5.json", "deltas/5/6.json"]
    same_files(tmp_path / "client", tmp_path / "reference")


def test_a_manifest_naming_an_old_snapshot_without_an_unbroken_chain_is_refused(tmp_path: Path) -> None:
    compacted = FeedBuilder()
    for v in (1, 2, 3):
        compacted.now = 1_800_000_000.0 + 60 * v
        compacted.publish(history()[v - 1], full=v == 1)
    compacted.manifest(drop=("deltas/1/2.json",))

    r = refusal(compacted, tmp_path)

    assert "names the snapshot of version 1 but no unbroken chain of deltas from it to version 3" in r
    assert not (tmp_path / "out" / "0.rpz").exists()


def test_a_manifest_naming_a_snapshot_newer_than_itself_is_refused(tmp_path: Path) -> None:
    compacted = FeedBuilder()
    compacted.publish(history()[0])
    body = compacted.manifest()
    body["snapshot_version"] = 2
    compacted.sign_manifest(body)

    assert "names a snapshot of the later version 2" in refusal(compacted, tmp_path)


def refusal(builder: FeedBuilder, d: Path) -> str:
    try:
        pull(builder, d)
    except RefusedError as e:
        return e.message
    raise AssertionError("the pull was not refused")


def test_against_the_real_service_a_new_client_takes_the_compacted_snapshot_and_the_chain(
        feed: Any, tmp_path: Path) -> None:
    from tests.test_client_pull import body, seed
    from tests.test_client_support import OUTPUTS, Feed

    # Full files only when compaction is asked for: versions 2 and 3 are published as deltas.
    feed.core.settings = replace(feed.core.settings, compact_small_bytes=0, compact_ratio=100.0, compact_age=10**9)
    feed.core.publisher.settings = feed.core.settings
    seed(feed)
    assert feed.pull().code == 0  # a client that follows every version
    feed.list("second.test", subdomains=True)
    feed.publish()
    assert feed.pull().code == 0
    feed.delist("exact.example")
    feed.list("www.second.test")
    feed.publish()
    assert "1 delta from version 2" in feed.pull().out

    fresh = Feed(**{**feed.__dict__, "dir": feed.dir / "fresh", "current": None})
    fresh.dir.mkdir()
    r = fresh.pull()

    assert r.code == 0, r.err
    assert "applied version 3 (the full snapshot of version 1 and 2 deltas; 4 entries)" in r.out
    for fmt in OUTPUTS:
        assert body(fresh.output(fmt)) == body(feed.output(fmt)), fmt
        if fmt in ("rpz", "unbound", "dnsmasq"):  # changed in version 3 for both: whole files equal
            assert fresh.output(fmt).read_bytes() == feed.output(fmt).read_bytes(), fmt
