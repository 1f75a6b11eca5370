"""A scaled clock two processes can share: the benchmark client and the simulator server."""

from __future__ import annotations

import time

import anyio

# A fixed wall-clock origin, so every run's timestamps (and URL expiries) look alike.
WALL_ORIGIN = 1_800_000_000.0


class SharedClock:
    """Run ``speed`` times faster than real time from the real monotonic second ``epoch``.

    ``time.monotonic()`` is one system-wide clock on Linux, so two processes built with
    the same ``epoch`` and ``speed`` read the same time. ``monotonic()`` and ``time()``
    return the same value, which makes the simulator's wall times (``end_time``) and the
    client's monotonic detection times directly comparable.
    """

    def __init__(self, speed: float, *, epoch: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self.epoch = time.monotonic() if epoch is None else epoch

    def monotonic(self) -> float:
        return WALL_ORIGIN + (time.monotonic() - self.epoch) * self.speed

    def time(self) -> float:
        return self.monotonic()

    def real(self, moment: float) -> float:
        """Return the real ``time.monotonic()`` second of this clock's ``moment``."""
        return self.epoch + (moment - WALL_ORIGIN) / self.speed

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.speed)

    def __repr__(self) -> str:
        return f"SharedClock(speed={self.speed})"
