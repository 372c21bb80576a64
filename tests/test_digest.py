"""The list digest (client.digest): updated at the cost of a change, always equal to a fresh one."""

from __future__ import annotations

import bisect
import hashlib
import random

import pytest

import client.digest as digest_mod
from client.digest import BlobView, Digest, ListView, update
from tests.feed_builder import entries_digest as reference


def _key(line: bytes) -> bytes:
    return line.split(b"|")[0]


def _offsets(lines: list[bytes]) -> list[int]:
    out, at = [], 0
    for line in lines:
        out.append(at)
        at += len(line) + 1
    return out


@pytest.mark.parametrize("seed", range(40))
def test_an_updated_digest_equals_the_digest_of_the_new_list(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest_mod, "_WINDOW", 97)  # many windows in a small buffer
    rng = random.Random(seed)
    n = rng.choice([0, 1, 2, 7, 40, 400, 3000])
    old_map = {k: k + b"|" + str(rng.randrange(3)).encode()
               for k in (f"k{rng.randrange(10**6):07d}".encode() for _ in range(n))}
    old = [old_map[k] for k in sorted(old_map)]
    d = Digest.of_lines(old)
    blob = b"".join(line + b"\n" for line in old)
    assert d.hexdigest() == reference(old) == Digest.of_data(blob).hexdigest()

    keys = sorted(old_map)
    gone = set(rng.sample(keys, min(n, rng.randrange(0, 30))))
    changed = set(rng.sample(keys, min(n, rng.randrange(0, 6)))) - gone
    added = {f"k{rng.randrange(10**6):07d}".encode() for _ in range(rng.randrange(0, 30))} - set(keys)
    new_map = {k: v for k, v in old_map.items() if k not in gone}
    new_map.update({k: k + b"|changed" for k in changed})
    new_map.update({k: k + b"|added" for k in added})
    new = [new_map[k] for k in sorted(new_map)]
    new_keys = sorted(new_map)
    removed = [keys.index(k) for k in gone | changed]
    inserted = [bisect.bisect_left(keys, k) for k in added | changed]

    listed = update(d, ListView(old), ListView(new), removed, inserted,
                    lambda line: bisect.bisect_left(new_keys, _key(line)))
    assert listed.hexdigest() == reference(new)

    old_at, new_at = _offsets(old), _offsets(new)
    blob_new = b"".join(line + b"\n" for line in new)

    def at(i: int) -> int:
        return old_at[i] if i < len(old_at) else len(blob)

    patched = update(d, BlobView(blob), BlobView(blob_new), [at(i) for i in removed], [at(i) for i in inserted],
                     lambda line: new_at[bisect.bisect_left(new_keys, _key(line))])
    assert patched.hexdigest() == reference(new)
    assert Digest.from_bytes(patched.to_bytes()).hexdigest() == patched.hexdigest()


def test_a_digest_tells_lists_apart_that_differ_by_one_byte_or_one_line() -> None:
    lines = [f"line {i:05d}".encode() for i in range(2000)]
    base = Digest.of_lines(lines).hexdigest()
    assert Digest.of_lines(lines[:-1]).hexdigest() != base
    assert Digest.of_lines([*lines[:500], b"line 00500x", *lines[501:]]).hexdigest() != base
    assert Digest.of_lines([]).hexdigest() == hashlib.sha256(b"").hexdigest()


def test_a_damaged_chunk_file_is_refused() -> None:
    d = Digest.of_lines([f"line {i}".encode() for i in range(100)])
    with pytest.raises(ValueError):
        Digest.from_bytes(d.to_bytes()[:-1])
    raw = d.to_bytes()
    assert len(d) > 1
    with pytest.raises(ValueError):
        Digest.from_bytes(raw[32:64] + raw[:32] + raw[64:])  # out of order
