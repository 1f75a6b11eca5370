"""The overall poll-rate budget: a token bucket sized by the number of tasks in flight.

On average at most ``per_task`` status requests per in-flight task per second, with no
burst above ``burst`` times that: tokens refill at ``per_task * max(1, in_flight)`` per
second into a bucket holding at most ``burst`` times as many. The scheduler asks
:meth:`RateBudget.delay_for` before a poll and calls :meth:`RateBudget.take` when it
sends one. Pure arithmetic: the caller passes the time (monotonic seconds) and the
number of tasks in flight; the refill between two calls uses the rate given by the
later one, which is exact while ``in_flight`` is steady and errs by at most one
interval's worth when it changes.
"""

from __future__ import annotations

__all__ = ["RateBudget"]

_TOLERANCE = 1e-9


class RateBudget:
    """Allow ``per_task`` polls per in-flight task per second, bursts up to ``burst``x."""

    def __init__(self, *, per_task: float = 1.0, burst: float = 2.0) -> None:
        if per_task <= 0.0 or burst < 1.0:
            raise ValueError("need per_task > 0 and burst >= 1")
        self.per_task = per_task
        self.burst = burst
        # None until first use: a fresh budget starts full.
        self._tokens: float | None = None
        self._at = 0.0

    def _rate(self, in_flight: int) -> float:
        return self.per_task * max(1, in_flight)

    def _level(self, now: float, in_flight: int) -> float:
        rate = self._rate(in_flight)
        depth = self.burst * rate
        if self._tokens is None:
            return depth
        return min(depth, self._tokens + rate * max(0.0, now - self._at))

    def delay_for(self, now: float, in_flight: int) -> float:
        """Return seconds until a poll may be sent (0 when a token is available now)."""
        level = self._level(now, in_flight)
        # A hair short of a token counts as one: otherwise float rounding can ask for a
        # wait too small to move the clock, and the caller would spin on it.
        if level >= 1.0 - _TOLERANCE:
            return 0.0
        return (1.0 - level) / self._rate(in_flight)

    def take(self, now: float, in_flight: int) -> None:
        """Spend one token for a poll sent at ``now`` (going into debt if none is left)."""
        self._tokens = self._level(now, in_flight) - 1.0
        self._at = max(self._at, now)

    def tokens(self, now: float, in_flight: int) -> float:
        """Return the tokens available at ``now`` (negative while in debt)."""
        return self._level(now, in_flight)

    def __repr__(self) -> str:
        return f"RateBudget(per_task={self.per_task}, burst={self.burst}, tokens={self._tokens})"
