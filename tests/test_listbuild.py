"""Finding a line in a sorted list: the byte search for domains agrees with the key order."""

from __future__ import annotations

import bisect
import random

from app.listbuild import line_key, position


def test_position_agrees_with_a_search_by_key_for_domains_and_urls() -> None:
    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    values = {"".join(rng.choice(letters + "-.") for _ in range(rng.randrange(1, 6))).strip("-.") + "."
              + rng.choice(["com", "test", "a-b", "x"]) for _ in range(3000)}
    domains = sorted((f'{{"type":"domain","value":"{v}","subdomains":false,"category":"csam",'
                      f'"listed_since":"2026-01-01T00:00:00Z","verified_at":"2026-01-01T00:00:00Z"}}').encode()
                     for v in values)
    assert domains == sorted(domains, key=line_key)  # the publisher sorts domain lines as bytes
    urls = sorted((f'{{"type":"url","value":"{u}","subdomains":false}}'.encode()
                   for u in ["http://a.com/!x", "http://a.com/x", "http://a.com/", "http://b.com/a?b"]), key=line_key)
    lines = domains + urls
    keys = [line_key(x) for x in lines]
    probes = keys + [f"d:{v}z" for v in sorted(values)[:300]] + [f"d:{v[:-1]}" for v in sorted(values)[:300]] \
        + ["u:http://a.com/!", "u:zzz", "d:", "d:zzzz", "d:-"]
    for key in probes:
        assert position(lines, key) == bisect.bisect_left(keys, key), key
