"""The check of a list's domain lines in one pass (names taken on the way) accepts exactly the
lines the line-by-line pattern accepts, and refuses a list with the same sentence."""

from __future__ import annotations

import random
import re

import pytest

from client import listfile
from client.errors import RefusedError
from client.listfile import Lines

T = "2027-01-15T08:00:00Z"


def line(value: str, sub: str = "true", category: str = "csam", since: str = T, verified: str = T) -> bytes:
    return (f'{{"type":"domain","value":"{value}","subdomains":{sub},"category":"{category}",'
            f'"listed_since":"{since}","verified_at":"{verified}"}}\n').encode()


def label(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice(["", "-", "a-", "-a", "0x", "0x1f", "0xg", "123", "x" * 63, "x" * 64, "y" * 62 + "-"])
    alphabet = "abz09-" if roll < 0.9 else 'abz09-_A."\\ é'
    n = rng.choice([1, 1, 2, 3, 5, 8, 20, 61, 62, 63, 64, 65])
    return "".join(rng.choice(alphabet) for _ in range(n))


def value(rng: random.Random) -> str:
    labels = [label(rng) for _ in range(rng.choice([1, 2, 2, 3, 4, 5, 40]))]
    v = ".".join(labels)
    if rng.random() < 0.1:
        v = rng.choice([".", ""]) + v + rng.choice([".", "", ".."])
    if rng.random() < 0.1:  # around the 253-character limit
        while len(v) < 250:
            v = "abcdefghij." + v
        v = v[: rng.choice([252, 253, 254, 255])].strip(".")
    return v


def variant(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.8:
        return line(value(rng))
    if roll < 0.85:
        return line("good.test", sub=rng.choice(["true", "false", "True", "1", "tru"]))
    if roll < 0.9:
        return line("good.test", category=rng.choice(["a", "-a", "a" * 32, "a" * 33, "A", ""]))
    if roll < 0.95:
        return line("good.test", since=rng.choice([T, T[:-1], T + "Z", "2027-1-15T08:00:00Z"]))
    return line("good.test").replace(b'"subdomains"', rng.choice([b'"subdomains"', b'"subdomain"', b' "subdomains"']))


def test_one_pass_accepts_exactly_the_lines_the_line_pattern_accepts() -> None:
    rng = random.Random(11)
    seen = {True: 0, False: 0}
    for _ in range(40_000):
        text = variant(rng)
        old = listfile._DOMAIN_LINE.fullmatch(text) is not None
        m = listfile._DOMAIN_LINES.fullmatch(text)
        new = m is not None and len(listfile._NAME_OF(m.group(1))) <= listfile._NAME_MAX
        assert old == new, text
        seen[old] += 1
    assert min(seen.values()) > 2000, seen


def old_check(data: bytes, what: str) -> tuple[list[bytes], bytes]:
    """The domain-line checks as they were: every line matched by the line pattern; the names
    and subdomains flags as the renderer read them."""
    rest, n = listfile._DOMAIN_LINE.subn(b"", data)
    if rest:
        listfile._explain(rest.split(b"\n", 1)[0], what)
        raise RefusedError(f"{what} holds an entry that is not in canonical form")
    values: list[bytes] = listfile._VALUE.findall(data)
    if len(values) != n or not all(map(bytes.__lt__, values, values[1:])):
        raise RefusedError(f"{what} is not in canonical order or repeats an entry")
    return values, b"".join(re.findall(rb'"subdomains":([tf])', data))


@pytest.mark.parametrize(("seed", "window"), [(s, w) for s in range(6) for w in (1, 700, 1 << 22)])
def test_a_list_with_bad_lines_is_refused_with_the_same_sentence(seed: int, window: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listfile, "_CHECK_WINDOW", window)  # lines are checked a window at a time
    rng = random.Random(seed)
    good = sorted({f"n{rng.randrange(10**6)}.{rng.choice(['test', 'example', 'co.uk'])}" for _ in range(500)})
    for _ in range(150):
        lines = [line(v, sub=rng.choice(["true", "false"])) for v in good]
        for _ in range(rng.choice([0, 1, 1, 2, 5])):
            lines.insert(rng.randrange(len(lines) + 1), variant(rng))
        data = b"".join(lines)
        try:
            expected: object = old_check(data, "snapshots/9.json")
        except RefusedError as e:
            expected = e.message
        try:
            checked = Lines.check(data, "snapshots/9.json")
            got: object = (checked.cached_values(), checked.cached_flags())
        except RefusedError as e:
            got = e.message
        assert got == expected
