"""The digest of a list after a change, worked out from the chunks around it, in the pull tool's
form of a list (one buffer of lines): the shortcuts it takes give what the definition gives."""

from __future__ import annotations

import random

import pytest

from client.digest import BlobView, Digest, _chunk_end_by_line, ends_chunk, update
from client.listfile import moved, splice


def blob(rng: random.Random, n: int, long_every: int = 0) -> bytes:
    lines = []
    for i in range(n):
        size = rng.randrange(5, 60) if not long_every or i % long_every else rng.randrange(9000, 20000)
        lines.append(f"{i:07d}".encode() + b"x" * size)
    return b"".join(line + b"\n" for line in lines)


def by_line_start(v: BlobView, pos: int) -> int:
    """Where the chunk holding the line at ``pos`` starts, stepping back one line at a time."""
    while pos > 0:
        p = v.prev(pos)
        if ends_chunk(v.line(p)):
            return pos
        pos = p
    return 0


@pytest.mark.parametrize("long_every", [0, 7])
def test_chunk_boundaries_read_a_window_at_a_time_are_those_read_line_by_line(long_every: int) -> None:
    rng = random.Random(5)
    data = blob(rng, 3000, long_every)
    v = BlobView(data)
    starts = [0] + [i + 1 for i in range(len(data)) if data[i] == 10]
    for pos in [*rng.sample(starts, 400), 0, len(data), starts[1], starts[-2]]:
        assert v.chunk_start(pos) == by_line_start(v, pos), pos
        assert v.chunk_end(pos) == _chunk_end_by_line(v, pos), pos


def test_chunk_end_of_data_without_a_final_newline_fails_as_line_by_line() -> None:
    v = BlobView(b"a\nbbb")
    with pytest.raises(ValueError):
        v.chunk_end(2)


def test_offsets_after_a_splice_are_worked_out_from_the_edits() -> None:
    rng = random.Random(9)
    data = blob(rng, 2000)
    starts = [0, *[i + 1 for i in range(len(data)) if data[i] == 10][:-1]]
    for _ in range(30):
        picked = sorted(rng.sample(range(len(starts)), rng.randrange(0, 40)))
        cuts = [(starts[i], data.index(b"\n", starts[i]) + 1) for i in picked if rng.random() < 0.6]
        cut_at = {a for a, _ in cuts}
        inserts = sorted((starts[i], b"new%d\n" % i) for i in picked if starts[i] not in cut_at or rng.random() < 0.5)
        inserts += [(len(data), b"last\n")] if rng.random() < 0.3 else []
        new = splice(data, cuts, inserts)
        offset = moved(cuts, inserts)
        kept = [s for s in starts if s not in cut_at]
        for s in kept:
            line = data[s : data.index(b"\n", s) + 1]
            assert new[offset(s) : offset(s) + len(line)] == line
        # And the digest worked out with them is the one computed from the whole list.
        old_digest = Digest.of_data(data)
        got = update(old_digest, BlobView(data), BlobView(new), [a for a, _ in cuts], [a for a, _ in inserts],
                     lambda line: -1, offset)  # (locate is not asked when the offsets are given)
        assert got.hexdigest() == Digest.of_data(new).hexdigest()
