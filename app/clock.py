"""Time as a dependency, so that expiry and freshness can be tested by moving a clock."""

from __future__ import annotations

import time
from collections.abc import Callable

#: A clock returns seconds since the epoch (UTC), like time.time.
Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()


class FakeClock:
    """A clock tests can move by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
