"""Deltas patch the outputs in place, and the result is byte for byte what a fresh pull writes.

A client that follows the feed version by version patches each output (cuts
the lines of removed entries, puts in those of added ones); a second client
starting afresh at each version renders everything from the snapshot. Their
files must be identical, through random histories with names nested under
names and subdomain flags that flip, for every format and option.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from client.config import Config, OutputSpec
from client.pull import describe
from client.updater import Report, Updater
from client.verify import Record
from tests.feed_builder import FeedBuilder, rec

SPECS = [
    ("rpz", {}), ("unbound", {}), ("unbound", {"redirect": ("192.0.2.10", "2001:db8::10")}),
    ("dnsmasq", {}), ("dnsmasq", {"redirect": ("192.0.2.10",)}), ("hosts", {}),
    ("hosts", {"addresses": ("127.0.0.1",)}), ("domains", {"style": "wildcard"}), ("domains", {"style": "squid"}),
    ("urls", {"style": "squid"}), ("urls", {"style": "plain"}),
]


def config(builder: FeedBuilder, d: Path) -> Config:
    out = d / "out"
    out.mkdir(parents=True, exist_ok=True)
    outputs = tuple(OutputSpec(fmt, out / f"{i}.{fmt}", **opts) for i, (fmt, opts) in  # type: ignore[arg-type]
                    enumerate(SPECS))
    return Config(feed_url="http://127.0.0.1/feed/v1", token="blf_" + "t" * 32, keys=(builder.key.public,),
                  state_dir=d / "state", outputs=outputs)


def pull(builder: FeedBuilder, d: Path) -> Report:
    return Updater(config(builder, d), builder, clock=lambda: builder.now).run()


def names(rng: random.Random) -> str:
    base = f"{rng.choice(['bad', 'cp', 'x-y', 'img'])}{rng.randrange(40)}.{rng.choice(['test', 'example'])}"
    for _ in range(rng.choice([0, 0, 1, 2])):
        base = f"{rng.choice(['www', 'm', 'cdn'])}.{base}"
    return base


def evolve(rng: random.Random, current: dict[str, Record], n: int) -> None:
    for _ in range(n):
        roll = rng.random()
        if roll < 0.35 and current:
            del current[rng.choice(sorted(current))]
        elif roll < 0.5 and current:
            value = rng.choice(sorted(current))
            old = current[value]
            if old.type == "domain":
                current[value] = old._replace(subdomains=not old.subdomains)
        elif roll < 0.6:
            url = f"https://{names(rng)}/p{rng.randrange(99)}?q=%20{rng.randrange(9)}"
            current[url] = rec(url, etype="url")
        else:
            value = names(rng)
            current[value] = rec(value, subdomains=rng.random() < 0.5)


def test_outputs_patched_through_a_random_history_equal_a_fresh_pull_byte_for_byte(tmp_path: Path) -> None:
    rng = random.Random(20261201)
    builder = FeedBuilder()
    current: dict[str, Record] = {}
    evolve(rng, current, 300)
    builder.publish(list(current.values()))
    assert pull(builder, tmp_path / "follower").via == "snapshot"
    patched: dict[str, int] = {}
    for round_ in range(25):
        builder.now += 60
        # Mostly small changes (patched); now and then a flag flips on a parent of listed names,
        # which the nested formats take as a full rendering.
        evolve(rng, current, rng.choice([1, 3, 8, 20]))
        builder.publish(list(current.values()))

        follower = pull(builder, tmp_path / "follower")
        fresh = pull(builder, tmp_path / f"fresh-{round_}")

        assert follower.via == "delta" and fresh.via == "snapshot"
        for mine, theirs in zip(follower.outputs, fresh.outputs, strict=True):
            a, b = mine.spec.path.read_bytes(), theirs.spec.path.read_bytes()
            if mine.changed:
                assert a == b, (round_, mine.spec)
            else:  # not rewritten: only the header's "version that last changed it" differs
                assert a.split(b"\n", 5)[5] == b.split(b"\n", 5)[5] or a.endswith(b.split(b"\n", 6)[6]), mine.spec
            if mine.how == "patch":
                patched[mine.spec.path.name] = patched.get(mine.spec.path.name, 0) + 1
    # Every domain format was patched at least once (URL outputs are small and always rendered).
    assert set(patched) == {f"{i}.{fmt}" for i, (fmt, _) in enumerate(SPECS) if fmt != "urls"}, patched


def test_the_run_report_says_an_output_was_patched(tmp_path: Path) -> None:
    builder = FeedBuilder()
    records = [rec(f"site{i}.test", subdomains=i % 2 == 0) for i in range(50)]
    builder.publish(records)
    pull(builder, tmp_path)
    builder.publish([*records[1:], rec("new.test")])

    lines = describe(pull(builder, tmp_path))

    assert "applied version 2 (1 delta from version 1, 1 added and 1 removed; 50 entries)" in lines[0]
    assert any(line.startswith("  write rpz ") and line.endswith("(+1 -2 lines, patched)") for line in lines), lines


def test_an_output_edited_by_hand_is_rendered_again_not_patched(tmp_path: Path) -> None:
    builder = FeedBuilder()
    records = [rec(f"site{i}.test") for i in range(20)]
    builder.publish(records)
    pull(builder, tmp_path)
    zone = next((tmp_path / "out").glob("0.rpz"))
    zone.write_bytes(zone.read_bytes().replace(b"site3.test CNAME .\n", b""))  # someone removed a line
    builder.publish([*records, rec("new.test")])

    report = pull(builder, tmp_path)
    fresh = pull(builder, tmp_path / "fresh")

    rpz = next(o for o in report.outputs if o.spec.path == zone)
    assert rpz.changed and rpz.how == "render"
    assert zone.read_bytes() == fresh.outputs[0].spec.path.read_bytes()
    assert b"site3.test CNAME .\n" in zone.read_bytes()


@pytest.mark.parametrize("flip", ["parent gains subdomains", "parent loses subdomains"])
def test_a_parent_whose_subdomain_flag_changes_updates_the_names_listed_under_it(tmp_path: Path, flip: str) -> None:
    builder = FeedBuilder()
    wide = flip == "parent loses subdomains"
    records = [rec("host.test", subdomains=wide), rec("www.host.test"), rec("other.test")]
    builder.publish(records)
    pull(builder, tmp_path)
    builder.publish([rec("host.test", subdomains=not wide), *records[1:]])

    pull(builder, tmp_path)
    fresh = pull(builder, tmp_path / "fresh")

    unbound = (tmp_path / "out" / "1.unbound").read_bytes()
    assert unbound == fresh.outputs[1].spec.path.read_bytes()
    assert (b'"www.host.test." transparent' in unbound) == wide  # covered by its parent only when wide


def test_outputs_written_in_runs_equal_those_written_entry_by_entry(tmp_path: Path) -> None:
    from client.outputs import ListInfo, format_of, render

    # Long runs of one subdomains flag (as in real lists) take the run path; the flags
    # here flip every few hundred names.
    records = [rec(f"n{i:05d}.test", subdomains=(i // 300) % 2 == 0) for i in range(3000)]
    info = ListInfo("worst-of", 3, "2027-01-15T08:00:00Z", "blocklist.rpz.")
    for i, (fmt, opts) in enumerate(SPECS):
        if fmt == "urls":
            continue
        spec = OutputSpec(fmt, tmp_path / f"{i}", **opts)  # type: ignore[arg-type]
        writer = format_of(spec)
        one_by_one = b"".join(writer.chunk(r.value.encode(), r.subdomains) for r in records)
        assert render(spec, records, info).entries == one_by_one, spec


def test_a_held_list_damaged_on_disk_is_not_trusted_and_the_snapshot_is_taken(tmp_path: Path) -> None:
    import os

    builder = FeedBuilder()
    records = [rec(f"site{i}.test") for i in range(30)]
    builder.publish(records)
    pull(builder, tmp_path)
    held = tmp_path / "state" / "entries.jsonl"
    st = held.stat()
    # A flipped byte that keeps the size, with the modification time put back: the file
    # looks untouched, but the delta adds a name next to the damaged line, so the chunks
    # hashed again hold it and cannot give the digest the delta states. (Damage far from
    # any change is found once the file's stamp changes, or when a change reaches it.)
    data = bytearray(held.read_bytes())
    data[data.index(b'"site1.test"') + 1] = ord("S")
    with open(held, "r+b") as f:
        f.write(data)
    os.utime(held, ns=(st.st_atime_ns, st.st_mtime_ns))
    builder.publish([*records, rec("site1-a.test")])

    report = pull(builder, tmp_path)
    fresh = pull(builder, tmp_path / "fresh")

    assert report.via == "snapshot"
    assert held.read_bytes() == (tmp_path / "fresh" / "state" / "entries.jsonl").read_bytes()
    for mine, theirs in zip(report.outputs, fresh.outputs, strict=True):
        if mine.changed:  # (an output without change keeps the header of the version that wrote it)
            assert mine.spec.path.read_bytes() == theirs.spec.path.read_bytes()
    assert sum(o.changed for o in report.outputs) >= 8


def test_a_run_that_fails_on_an_output_leaves_the_held_list_as_it_was(tmp_path: Path) -> None:
    from dataclasses import replace

    from client.errors import LocalError

    builder = FeedBuilder()
    records = [rec(f"site{i}.test") for i in range(30)]
    builder.publish(records)
    pull(builder, tmp_path)
    held = (tmp_path / "state" / "entries.jsonl").read_bytes()
    builder.publish([*records, rec("new.test")])
    cfg = config(builder, tmp_path)
    broken = replace(cfg, outputs=(*cfg.outputs, OutputSpec("hosts", tmp_path / "gone" / "hosts")))

    with pytest.raises(LocalError, match="does not exist"):
        Updater(broken, builder, clock=lambda: builder.now).run()

    assert (tmp_path / "state" / "entries.jsonl").read_bytes() == held
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["entries.chunks", "entries.jsonl", "lock",
                                                                      "parents.json", "state.json"]
    assert pull(builder, tmp_path).via == "delta"  # and the next run goes on from it


def test_a_state_from_before_feed_schema_2_takes_the_snapshot_and_keeps_its_rollback_baseline(tmp_path: Path) -> None:
    import json

    from client.errors import RefusedError

    builder = FeedBuilder()
    records = [rec(f"site{i:02}.test") for i in range(30)]
    builder.publish(records)
    first = {k: builder.files[k] for k in ("manifest.json", "manifest.json.minisig")}
    builder.publish([*records, rec("second.test")])
    pull(builder, tmp_path)
    state_file = tmp_path / "state" / "state.json"
    doc = json.loads(state_file.read_text())
    doc["entries_sha256"] = doc.pop("entries_digest")  # what a pull tool of feed schema 1 wrote
    state_file.write_text(json.dumps(doc))

    current = {k: builder.files[k] for k in first}
    builder.files.update(first)  # an old manifest replayed: version 2 is still the baseline
    with pytest.raises(RefusedError, match="older than the version 2 held: refusing a rollback"):
        pull(builder, tmp_path)
    builder.files.update(current)
    builder.publish([*records, rec("second.test"), rec("third.test")])

    report = pull(builder, tmp_path)

    assert report.via == "snapshot" and report.previous == 2
    assert json.loads(state_file.read_text())["entries_digest"] == builder.versions[-1].entries_digest
    assert pull(builder, tmp_path).via == "held"


@pytest.mark.parametrize("fails", ["write", "copy", "sync"])
def test_a_patched_output_that_cannot_be_written_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 fails: str) -> None:
    import errno
    import os

    from client import files
    from client.errors import LocalError

    builder = FeedBuilder()
    records = [rec(f"site{i:02}.test", subdomains=i % 2 == 0) for i in range(40)]
    builder.publish(records)
    pull(builder, tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    state_before = (tmp_path / "state" / "state.json").read_bytes()
    builder.publish([*records[1:], rec("new.test")])
    write, fsync = files.StagedWriter.write, os.fsync

    def full_disk_write(self: files.StagedWriter, data: bytes | memoryview) -> None:
        if self.path.name == "5.hosts":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, data)

    def full_disk_sync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".5.hosts."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    def full_disk_copy(src: int, dst: int, offset: int, count: int) -> int:
        if os.readlink(f"/proc/self/fd/{dst}").split("/")[-1].startswith(".5.hosts."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return copy(src, dst, offset, count)

    copy = files._copy_range
    if fails == "write":
        monkeypatch.setattr(files.StagedWriter, "write", full_disk_write)
    elif fails == "copy":
        monkeypatch.setattr(files, "_copy_range", full_disk_copy)
    else:
        monkeypatch.setattr(os, "fsync", full_disk_sync)
    with pytest.raises(LocalError, match=r"cannot write .*5\.hosts: No space left on device; no output was changed"):
        pull(builder, tmp_path)
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # and no temp file is left
    assert json_of(tmp_path / "state" / "state.json")["version"] == json_of_bytes(state_before)["version"] == 1
    report = pull(builder, tmp_path)
    assert report.via == "delta" and any(o.how == "patch" for o in report.outputs)


def json_of(path: Path) -> dict[str, object]:
    return json_of_bytes(path.read_bytes())


def json_of_bytes(data: bytes) -> dict[str, object]:
    import json

    doc: dict[str, object] = json.loads(data)
    return doc


@pytest.mark.parametrize("kernel_copy", ["copy_file_range", "refused (EXDEV)", "absent"])
def test_a_patch_copies_the_unchanged_ranges_with_or_without_the_kernels_help(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: str) -> None:
    import errno
    import os

    from client import files

    if kernel_copy == "refused (EXDEV)":
        def refuse(*args: object) -> int:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    monkeypatch.setitem(files._kernel_copy, "works", kernel_copy != "absent" and hasattr(os, "copy_file_range"))
    rng = random.Random(7)
    builder = FeedBuilder()
    current: dict[str, Record] = {}
    evolve(rng, current, 2000)
    builder.publish(list(current.values()))
    pull(builder, tmp_path / "follower")
    for round_ in range(3):
        builder.now += 60
        evolve(rng, current, 10)
        builder.publish(list(current.values()))
        follower = pull(builder, tmp_path / "follower")
        fresh = pull(builder, tmp_path / f"fresh-{round_}")
        assert any(o.how == "patch" for o in follower.outputs)
        for mine, theirs in zip(follower.outputs, fresh.outputs, strict=True):
            if mine.changed:
                assert mine.spec.path.read_bytes() == theirs.spec.path.read_bytes(), mine.spec
    assert files._kernel_copy["works"] == (kernel_copy == "copy_file_range" and hasattr(os, "copy_file_range"))


@pytest.mark.parametrize("fails", ["write", "sync"])
def test_an_output_rendered_in_full_that_cannot_be_written_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    import errno
    import os

    from client import files
    from client.errors import LocalError

    builder = FeedBuilder()
    builder.publish([rec(f"site{i:02}.test", subdomains=i % 2 == 0) for i in range(40)])
    write, fsync = files.StagedWriter.write, os.fsync

    def full_disk_write(self: files.StagedWriter, data: bytes | memoryview) -> None:
        if self.path.name == "3.dnsmasq":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, data)

    def full_disk_sync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".3.dnsmasq."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    if fails == "write":
        monkeypatch.setattr(files.StagedWriter, "write", full_disk_write)
    else:
        monkeypatch.setattr(os, "fsync", full_disk_sync)
    with pytest.raises(LocalError, match=r"cannot write .*/3\.dnsmasq: No space left on device; no output was changed"):
        pull(builder, tmp_path)
    monkeypatch.undo()

    assert list((tmp_path / "out").iterdir()) == []  # no output, and no temp file left
    assert pull(builder, tmp_path).via == "snapshot"
    assert len(list((tmp_path / "out").iterdir())) == len(SPECS)
