"""Clocks for control loops: wall-clock time on a robot, simulated time in simulation and tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    """Wall-clock time (``time.monotonic``)."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class SimulatedClock:
    """Time that moves only when slept on (or advanced): deterministic control loops."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def sleep_until(self, deadline: float) -> None:
        self._now = max(self._now, float(deadline))

    def advance(self, seconds: float) -> None:
        self._now += float(seconds)
