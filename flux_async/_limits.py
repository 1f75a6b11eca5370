"""The active-task limiter: a slot from submit until a terminal status is seen.

BFL allows a number of *active* tasks per account (24; 6 for ``flux-kontext-max``): a task
counts from its submit until it is terminal, whether or not anyone downloads it. The
limiter mirrors that: :meth:`ActiveTaskLimiter.acquire` hands out a :class:`Slot` before
the submit, and the scheduler releases it when it sees the task end (not when the
download ends, which would waste slot time).

Waiters are served first come, first served. A waiter whose model-level limit is full does
not block waiters for other models behind it; among waiters that can proceed, order holds.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from ._catalog import DEFAULT_ACTIVE_LIMIT, MODELS

__all__ = ["ActiveTaskLimiter", "LimiterStatistics", "Slot"]

logger = logging.getLogger("flux_async")


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    """A snapshot of the limiter, for metrics and debugging."""

    limit: int
    window: int
    in_flight: int
    waiting: int
    in_flight_by_model: Mapping[str, int]
    acquired_total: int
    rate_limited_total: int


class Slot:
    """One active task's place under the account's limit. Release is idempotent."""

    __slots__ = ("_limiter", "_released", "model")

    def __init__(self, limiter: ActiveTaskLimiter, model: str) -> None:
        self._limiter = limiter
        self.model = model
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the slot back; calling it again does nothing."""
        if not self._released:
            self._released = True
            self._limiter._release(self.model)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Slot(model={self.model!r}, {state})"


class _Waiter:
    __slots__ = ("event", "granted", "model")

    def __init__(self, model: str) -> None:
        self.model = model
        self.event = anyio.Event()
        self.granted = False


class ActiveTaskLimiter:
    """Bound the tasks in flight per account and per model, first come first served.

    ``limit`` is the account-wide cap (default 24). ``per_model`` overrides or adds model
    caps; the catalog's model limits (``flux-kontext-max``: 6) apply unless overridden.
    ``window`` may shrink the account cap below ``limit`` while the server says 429 (see
    :meth:`set_window`).
    """

    def __init__(
        self, limit: int = DEFAULT_ACTIVE_LIMIT, *, per_model: Mapping[str, int] | None = None
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._window = limit
        self._model_limits = {
            name: spec.active_limit
            for name, spec in MODELS.items()
            if spec.active_limit < DEFAULT_ACTIVE_LIMIT
        }
        self._model_limits.update(per_model or {})
        for name, value in self._model_limits.items():
            if value < 1:
                raise ValueError(f"per_model[{name!r}] must be >= 1")
        self._in_flight = 0
        self._by_model: collections.Counter[str] = collections.Counter()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._acquired_total = 0
        self._rate_limited_total = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def window(self) -> int:
        return self._window

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def model_limit(self, model: str) -> int:
        """Return the cap for ``model`` (its own cap, else the account's)."""
        return min(self._model_limits.get(model, self._limit), self._limit)

    def _can_take(self, model: str) -> bool:
        return self._in_flight < min(self._window, self._limit) and self._by_model[
            model
        ] < self.model_limit(model)

    def _take(self, model: str) -> Slot:
        self._in_flight += 1
        self._by_model[model] += 1
        self._acquired_total += 1
        return Slot(self, model)

    async def acquire(self, model: str) -> Slot:
        """Wait for a free slot for ``model`` and take it, in arrival order."""
        if not self._waiters and self._can_take(model):
            await anyio.lowlevel.checkpoint()
            if not self._waiters and self._can_take(model):
                return self._take(model)
        waiter = _Waiter(model)
        self._waiters.append(waiter)
        self._grant()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:
                # Granted and cancelled in the same instant: give the slot back.
                self._release(model)
            else:
                self._waiters.remove(waiter)
                self._grant()
            raise
        return Slot(self, model)

    def occupy(self, model: str) -> Slot:
        """Take a slot now, even above the cap: for tasks that already exist (a resume)."""
        return self._take(model)

    def set_window(self, window: int) -> None:
        """Set the effective account cap (1..limit); raising it wakes waiters."""
        self._window = max(1, min(self._limit, window))
        self._grant()

    def note_rate_limited(self) -> None:
        """Count a 429 seen on submit (for statistics)."""
        self._rate_limited_total += 1

    def _release(self, model: str) -> None:
        self._in_flight -= 1
        self._by_model[model] -= 1
        if self._by_model[model] <= 0:
            del self._by_model[model]
        self._grant()

    def _grant(self) -> None:
        # Serve waiters in order; skip (without reordering) those whose model is full.
        for waiter in list(self._waiters):
            if self._in_flight >= min(self._window, self._limit):
                break
            if self._can_take(waiter.model):
                self._waiters.remove(waiter)
                self._in_flight += 1
                self._by_model[waiter.model] += 1
                self._acquired_total += 1
                waiter.granted = True
                waiter.event.set()

    def statistics(self) -> LimiterStatistics:
        """Return a snapshot of the limiter's state."""
        return LimiterStatistics(
            limit=self._limit,
            window=self._window,
            in_flight=self._in_flight,
            waiting=len(self._waiters),
            in_flight_by_model=dict(self._by_model),
            acquired_total=self._acquired_total,
            rate_limited_total=self._rate_limited_total,
        )

    def __repr__(self) -> str:
        return (
            f"ActiveTaskLimiter(limit={self._limit}, window={self._window}, "
            f"in_flight={self._in_flight}, waiting={len(self._waiters)})"
        )
