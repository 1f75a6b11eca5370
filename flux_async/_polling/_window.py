"""Finding the account's real active-task cap: an adaptive window for the limiter.

The configured cap (24 by default) may be more than the server allows: another process
shares the key, or the plan is smaller. :class:`AdaptiveWindow` holds the number of
tasks the limiter lets into flight and moves it on evidence::

                    429 in a new generation
      +--------+  window = max(min, in_flight - 1)  +---------+
      | probe  | ---------------------------------> |  hold   | <--+ 429, same generation:
      | window |                                    | window  | ---+ no cut, timer restarts
      +--------+ <--------------------------------- +---------+
          ^        quiet_period since the last 429       |
          |        or probe, on a success/completion:    |
          +------  window += 1 (never above configured) -+

- ``on_rate_limited(now, in_flight)``: ``in_flight`` counts the slots held *including*
  the submit that was refused, so ``in_flight - 1`` is how many the server accepted.
  The window drops to that (never below ``min_window``, never upward) and the quiet timer
  restarts. A generation ends with every accepted submit or finished task, or with a
  change in ``in_flight``; within one generation only the first 429 cuts, so a submit
  retried into the same wall, or a burst answered all at once, cannot collapse the
  window (no retry storm). When several submits go out together and are refused, the
  limiter gives each refused slot back: the next 429 then carries a smaller
  ``in_flight`` and the window walks down to exactly what the server accepted.
- ``on_success(now)`` / ``on_completion(now)``: a submit was accepted / a task ended.
  When ``quiet_period`` seconds have passed since the last 429 or probe, the window
  grows by one (at most one step per event, so a long idle spell probes once) and the
  timer restarts: one more step per further quiet period, up to ``configured``.
- ``retry_delay(now, attempt, retry_after)``: ``Retry-After`` when the server sent one,
  else a full-jitter fallback ``uniform(0, min(backoff_cap, backoff_base * 2**attempt))``.
  The limiter normally retries sooner, as soon as one of our own tasks finishes and a
  slot under the window opens; the fallback bounds the wait when none does.

Pure state: the caller passes the time (monotonic seconds); nothing sleeps.
"""

from __future__ import annotations

import random

__all__ = ["AdaptiveWindow"]


class AdaptiveWindow:
    """Tasks allowed in flight: cut on 429, hold, probe up after quiet periods."""

    def __init__(
        self,
        configured: int,
        *,
        quiet_period: float = 30.0,
        min_window: int = 1,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if min_window < 1 or configured < min_window:
            raise ValueError("need 1 <= min_window <= configured")
        if quiet_period <= 0.0 or backoff_base <= 0.0 or backoff_cap < backoff_base:
            raise ValueError("need quiet_period > 0 and 0 < backoff_base <= backoff_cap")
        self.configured = configured
        self.quiet_period = quiet_period
        self.min_window = min_window
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._rng = rng if rng is not None else random.Random()
        self._window = configured
        self._quiet_since: float | None = None  # last 429 or probe; None: never limited
        self._generation = 0
        self._cut_generation = -1
        self._cut_in_flight = -1
        self.rate_limited = 0  # 429s seen
        self.probes = 0  # upward steps taken

    @property
    def window(self) -> int:
        """Return how many tasks may be in flight now."""
        return self._window

    def on_rate_limited(self, now: float, in_flight: int) -> None:
        """Take a 429 on submit; ``in_flight`` includes the refused submit's slot."""
        self.rate_limited += 1
        self._quiet_since = now
        if self._cut_generation == self._generation and self._cut_in_flight == in_flight:
            return
        self._cut_generation = self._generation
        self._cut_in_flight = in_flight
        self._window = min(self._window, max(self.min_window, in_flight - 1))

    def on_success(self, now: float) -> None:
        """Take an accepted submit; probe upward if the quiet period has passed."""
        self._new_generation(now)

    def on_completion(self, now: float) -> None:
        """Take a task's terminal status; probe upward if the quiet period has passed."""
        self._new_generation(now)

    def _new_generation(self, now: float) -> None:
        self._generation += 1
        if self._quiet_since is None or self._window >= self.configured:
            return
        if now - self._quiet_since >= self.quiet_period:
            self._window += 1
            self.probes += 1
            self._quiet_since = now

    def retry_delay(self, now: float, attempt: int, retry_after: float | None) -> float:
        """Return seconds a refused submit waits before trying again (attempt from 0).

        ``retry_after`` (seconds, already parsed) wins when given; otherwise the
        full-jitter fallback, used only if no slot opens sooner.
        """
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt, 62))
        return self._rng.uniform(0.0, ceiling)

    def __repr__(self) -> str:
        return (
            f"AdaptiveWindow(window={self._window}, configured={self.configured}, "
            f"rate_limited={self.rate_limited}, probes={self.probes})"
        )
