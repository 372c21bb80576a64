"""The list held is read where it is (a mapped file, the lines of the changes since in pieces):
searches and slices give what they give on the same bytes joined, and a run with a delta does
not join or copy the list."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from client import listfile
from client.config import OutputSpec
from client.listfile import Spliced, spliced
from client.updater import Updater
from tests.feed_builder import FeedBuilder, rec
from tests.test_client_incremental import config


def pieces_of(rng: random.Random, lines: list[bytes]) -> tuple[Spliced, bytes]:
    """The lines cut into pieces of whole lines, some of them ranges of a larger buffer."""
    pieces: list[tuple[listfile.Buffer, int, int]] = []
    i = 0
    while i < len(lines):
        n = rng.randrange(1, 6)
        chunk = b"".join(lines[i : i + n])
        if rng.random() < 0.5:
            pad = b"x\n" * rng.randrange(3)
            pieces.append((pad + chunk + pad, len(pad), len(pad) + len(chunk)))
        else:
            pieces.append((chunk, 0, len(chunk)))
        i += n
    return Spliced(pieces), b"".join(lines)


def test_lines_in_pieces_read_like_the_same_bytes_joined() -> None:
    rng = random.Random(3)
    lines = [b"line %d %s\n" % (i, b"ab" * rng.randrange(5)) for i in range(300)]
    s, whole = pieces_of(rng, lines)
    assert len(s) == len(whole) and s.join() == whole
    for _ in range(2000):
        a, b = sorted(rng.randrange(-5, len(whole) + 5) for _ in range(2))
        assert s[a:b] == whole[a:b]
        assert s[a:] == whole[a:] and s[:b] == whole[:b]
        for sub in (b"\n", b"ab", b"line 1", b"7 ", b"zz", b"abab\n"):
            assert s.find(sub, a, b) == whole.find(sub, a, b), (sub, a, b)
            assert s.rfind(sub, a, b) == whole.rfind(sub, a, b), (sub, a, b)
            assert s.find(sub, a) == whole.find(sub, a)
    assert s.find(b"\n") == whole.find(b"\n") and s.rfind(b"\n") == whole.rfind(b"\n")
    with pytest.raises(ValueError):
        s.find(b"\nline")  # a search across lines is not what pieces can answer
    # Pieces of pieces name the first buffers, never the pieces.
    again = spliced(s, [(0, len(lines[0]))], [(len(whole), b"end\n")])
    assert again.join() == whole[len(lines[0]) :] + b"end\n"
    assert not any(isinstance(buf, Spliced) for buf, _, _ in again.pieces())


def test_a_run_with_a_delta_does_not_join_the_list_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builder = FeedBuilder()
    records = [rec(f"site{i:03}.test", subdomains=i % 2 == 0) for i in range(300)]
    builder.publish(records)
    cfg = config(builder, tmp_path)
    cfg = cfg.__class__(**{**cfg.__dict__, "outputs": tuple(
        OutputSpec(fmt, tmp_path / "out" / f"x.{fmt}") for fmt in ("rpz", "unbound", "hosts", "domains"))})

    def pull() -> str:
        return Updater(cfg, builder, clock=lambda: builder.now).run().via

    assert pull() == "snapshot"
    builder.publish([*records[1:], rec("new.test")])
    assert pull() == "delta"  # the journal now holds a change: the list held is in pieces

    def refuse(data: object) -> bytes:
        raise AssertionError("the list was joined")

    monkeypatch.setattr(listfile, "joined", refuse)
    builder.publish([*records[2:], rec("new.test"), rec("newer.test", subdomains=True)])
    assert pull() == "delta"
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    cfg = cfg.__class__(**{**cfg.__dict__, "state_dir": fresh / "state", "outputs": tuple(
        OutputSpec(o.format, fresh / o.path.name) for o in cfg.outputs)})
    fresh.mkdir()
    assert pull() == "snapshot"
    for o in cfg.outputs:
        assert (tmp_path / "out" / o.path.name).read_bytes() == o.path.read_bytes()
