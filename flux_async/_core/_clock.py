"""Time, behind one door.

Every component that waits or reads the time takes a :class:`Clock`. The library uses
:class:`SystemClock`; tests drive :class:`ManualClock` by hand, and benchmarks and the
simulator use :class:`ScaledClock` to run hours of protocol time in seconds.

Seconds are floats everywhere. ``monotonic()`` is for intervals and deadlines inside the
process; ``time()`` is wall-clock epoch seconds, for comparing with what servers say
(``end_time``, a URL's ``se`` expiry).
"""

from __future__ import annotations

import heapq
import itertools
import time as _time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "ManualClock", "ScaledClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What the scheduler, limiter, downloader and simulator need of time."""

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Return wall-clock seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (zero or less: just yield)."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return _time.monotonic()

    def time(self) -> float:
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class ScaledClock:
    """A clock that runs ``speed`` times faster than real time.

    Sleeping 60 s of scaled time takes ``60 / speed`` real seconds. Share one instance
    between the client and the simulator so both agree on the time.
    """

    def __init__(self, speed: float = 1.0, *, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._real0 = _time.monotonic()
        self._mono0 = self._real0
        self._wall0 = _time.time() if start is None else start

    def _elapsed(self) -> float:
        return (_time.monotonic() - self._real0) * self.speed

    def monotonic(self) -> float:
        return self._mono0 + self._elapsed()

    def time(self) -> float:
        return self._wall0 + self._elapsed()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.speed)

    def __repr__(self) -> str:
        return f"ScaledClock(speed={self.speed})"


class ManualClock:
    """A clock that moves only when a test calls :meth:`advance`.

    Sleepers wake, in deadline order, once the clock has been advanced past their
    deadline. Combine with ``anyio.wait_all_tasks_blocked()`` to let woken tasks run.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = 0.0
        self._wall0 = start
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, anyio.Event]] = []

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall0 + self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), event))
        try:
            await event.wait()
        finally:
            # A cancelled sleeper marks its entry done so next_deadline skips it.
            event.set()

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()

    @property
    def sleepers(self) -> int:
        """Return how many coroutines are sleeping on this clock now."""
        return sum(1 for _, _, event in self._sleepers if not event.is_set())

    @property
    def next_deadline(self) -> float | None:
        """Return the earliest sleeper's wake-up time, or None when nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].is_set():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:.3f}, sleepers={len(self._sleepers)})"
