"""The active-task limiter: a slot from submit until a terminal status is seen.

BFL allows a number of *active* tasks per account (24; 6 for ``flux-kontext-max``): a task
counts from its submit until it is terminal, whether or not anyone downloads it. The
limiter mirrors that: :meth:`ActiveTaskLimiter.acquire` hands out a :class:`Slot` before
the submit, and the scheduler releases it when it sees the task end (not when the
download ends, which would waste slot time).

Waiters are served first come, first served. A waiter whose model-level limit is full does
not block waiters for other models behind it; among waiters that can proceed, order holds.

Finding the cap: given an :class:`~flux_async._polling._window.AdaptiveWindow`, the limiter lets
at most ``window`` tasks into flight and moves the window on evidence. A submit the
server refused with 429 calls :meth:`ActiveTaskLimiter.rate_limited` (the window is cut
to what the server accepted and the slot goes back), then waits in
:meth:`~ActiveTaskLimiter.acquire` with a ``fallback``: it gets the next slot one of our
own tasks frees, or, if the fallback timer runs out first, one slot above the window (a
probe; at most one at a time, so refused submits cannot storm). An accepted submit
(:meth:`Slot.accepted`) and a finished task (releasing an accepted slot) let the window
probe upward after a quiet period.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from .._core._backoff import compute_backoff
from .._core._clock import Clock, SystemClock
from .._polling._window import AdaptiveWindow
from .._request._catalog import DEFAULT_ACTIVE_LIMIT, MODELS

__all__ = ["ActiveTaskLimiter", "LimiterStatistics", "Slot"]

logger = logging.getLogger("flux_async")

# Seconds between looks while another probe is out (its answer takes one round trip).
_PROBE_RECHECK = 1.0


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
    probes: int = 0  # slots taken above the window after a fallback timer ran out
    window_raises: int = 0  # upward steps of the adaptive window


class Slot:
    """One active task's place under the account's limit. Release is idempotent.

    A slot is first held for a submit; :meth:`accepted` marks that the server took it, so
    its release counts as a task ending (the evidence the window probes on).
    """

    __slots__ = ("_accepted", "_limiter", "_probe", "_released", "model")

    def __init__(self, limiter: ActiveTaskLimiter, model: str, *, probe: bool = False) -> None:
        self._limiter = limiter
        self.model = model
        self._released = False
        self._accepted = False
        self._probe = probe

    @property
    def released(self) -> bool:
        return self._released

    @property
    def probe(self) -> bool:
        """Return whether this slot was taken above the window (and not yet accepted)."""
        return self._probe

    def accepted(self) -> None:
        """Note that the server accepted the submit this slot was held for."""
        if not self._accepted and not self._released:
            self._accepted = True
            self._limiter._accepted(self)

    def release(self) -> None:
        """Give the slot back; calling it again does nothing."""
        if not self._released:
            self._released = True
            self._limiter._release(self)

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"Slot(model={self.model!r}, {state})"


class _Waiter:
    __slots__ = ("epoch", "event", "granted", "model", "probe")

    def __init__(self, model: str, epoch: int | None = None) -> None:
        self.model = model
        self.event = anyio.Event()
        self.granted = False
        self.probe = False
        # A refused submit waits for a slot *released after* this epoch (None: any slot).
        self.epoch = epoch


class ActiveTaskLimiter:
    """Bound the tasks in flight per account and per model, first come first served.

    ``limit`` is the account-wide cap (default 24). ``per_model`` overrides or adds model
    caps; the catalog's model limits (``flux-kontext-max``: 6) apply unless overridden.
    ``window`` may shrink the account cap below ``limit`` while the server says 429 (see
    :meth:`set_window`); ``adaptive`` moves it on 429s and quiet periods (see the module
    docstring), timed by ``clock``.
    """

    def __init__(
        self,
        limit: int = DEFAULT_ACTIVE_LIMIT,
        *,
        per_model: Mapping[str, int] | None = None,
        adaptive: AdaptiveWindow | None = None,
        clock: Clock | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._adaptive = adaptive
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._window = limit if adaptive is None else max(1, min(limit, adaptive.window))
        self._probing = 0
        self._probes = 0
        self._epoch = 0  # counts slots freed by tasks ending and upward window steps
        # Probes above the window are paced limiter-wide: after a refused one, the next
        # waits a backoff that grows with each refusal until a submit is accepted.
        self._probe_refusals = 0
        self._probe_not_before = -math.inf
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

    @property
    def waiting(self) -> int:
        """Acquirers waiting for a slot now (the polling regime reads it)."""
        return len(self._waiters)

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
        return self._slot(model)

    async def acquire(self, model: str, *, fallback: float | None = None) -> Slot:
        """Wait for a free slot for ``model`` and take it, in arrival order.

        ``fallback`` marks a submit the server refused with 429 (seconds of the
        limiter's clock): it goes to the head of the queue, but only a slot freed *after*
        now (one of our own tasks ending, or the window probing up) can serve it, so a
        refusal is never retried into the same wall at once. If ``fallback`` seconds
        pass first, it takes a free slot if there is one, else one slot above the
        window (:attr:`Slot.probe`) when no other probe is out, else the next free one.
        """
        if fallback is None and not self._waiters and self._can_take(model):
            await anyio.lowlevel.checkpoint()
            if not self._waiters and self._can_take(model):
                return self._take(model)
        if fallback is None:
            waiter = _Waiter(model)
            self._waiters.append(waiter)
        else:
            waiter = _Waiter(model, epoch=self._epoch)
            self._waiters.appendleft(waiter)
        self._grant()
        try:
            if fallback is None or waiter.granted:
                await waiter.event.wait()
            else:
                async with anyio.create_task_group() as timer:
                    timer.start_soon(self._fallback_timer, waiter, fallback)
                    await waiter.event.wait()
                    timer.cancel_scope.cancel()
        except BaseException:
            if waiter.granted:
                # Granted and cancelled in the same instant: give the slot back.
                self._slot(model, probe=waiter.probe).release()
            else:
                self._waiters.remove(waiter)
                self._grant()
            raise
        return self._slot(model, probe=waiter.probe)

    def _slot(self, model: str, *, probe: bool = False) -> Slot:
        """Return a new slot object (a seam: the fleet limiter's slots carry a lease)."""
        return Slot(self, model, probe=probe)

    async def _fallback_timer(self, waiter: _Waiter, delay: float) -> None:
        await self._clock.sleep(delay)
        waiter.epoch = None  # no longer waiting for a release: any free slot will do
        while not waiter.granted:
            if self._can_take(waiter.model) or self._by_model[waiter.model] >= self.model_limit(
                waiter.model
            ):
                self._grant()
                return
            # One probe at a time, paced: meanwhile our own tasks may end and serve us.
            wait = self._probe_not_before - self._clock.monotonic()
            if not self._probing and wait <= 0.0:
                self._probe(waiter)
                return
            await self._clock.sleep(max(wait, _PROBE_RECHECK))

    def _probe(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        self._in_flight += 1
        self._by_model[waiter.model] += 1
        self._acquired_total += 1
        self._probing += 1
        self._probes += 1
        waiter.granted = waiter.probe = True
        waiter.event.set()

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

    def rate_limited(self, slot: Slot, *, attempt: int, retry_after: float | None) -> float:
        """Take a 429 for the submit ``slot`` was held for; return the wait in seconds.

        With an adaptive window, the window is cut to the tasks the server accepted and
        the slot goes back: the caller's next :meth:`acquire` waits (``fallback``: the
        returned seconds) for one of our own tasks to end. Without one, the caller keeps
        the slot and waits the returned seconds. The wait is ``retry_after`` when the
        server sent one, else a full-jitter backoff growing with ``attempt`` (from 0).
        """
        self._rate_limited_total += 1
        if self._adaptive is None:
            if retry_after is not None:
                return max(0.0, retry_after)
            return compute_backoff(attempt, base=1.0, cap=30.0)
        now = self._clock.monotonic()
        # in_flight still counts the refused submit, as AdaptiveWindow expects.
        self._adaptive.on_rate_limited(now, self._in_flight)
        self._window = max(1, min(self._limit, self._adaptive.window))
        if slot.probe:
            self._probe_not_before = now + self._adaptive.retry_delay(
                now, self._probe_refusals, retry_after
            )
            self._probe_refusals += 1
        slot.release()
        return self._adaptive.retry_delay(now, attempt, retry_after)

    def _accepted(self, slot: Slot) -> None:
        self._probe_refusals = 0
        if slot._probe:
            slot._probe = False
            self._probing -= 1
        if self._adaptive is not None:
            self._adaptive.on_success(self._clock.monotonic())
            self._follow_window()

    def _release(self, slot: Slot) -> None:
        model = slot.model
        if slot._probe:
            slot._probe = False
            self._probing -= 1
        self._in_flight -= 1
        self._by_model[model] -= 1
        if self._by_model[model] <= 0:
            del self._by_model[model]
        if slot._accepted:
            self._epoch += 1
            if self._adaptive is not None:
                self._adaptive.on_completion(self._clock.monotonic())
                self._follow_window()
        self._grant()

    def _follow_window(self) -> None:
        if self._adaptive is None:
            return
        window = max(1, min(self._limit, self._adaptive.window))
        if window > self._window:
            self._epoch += 1
        self._window = window
        self._grant()

    def _grant(self) -> None:
        # Serve waiters in order; skip (without reordering) those whose model is full and
        # refused submits still waiting for a slot to be freed.
        for waiter in list(self._waiters):
            if self._in_flight >= min(self._window, self._limit):
                break
            if waiter.epoch is not None and waiter.epoch >= self._epoch:
                continue
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
            probes=self._probes,
            window_raises=self._adaptive.probes if self._adaptive is not None else 0,
        )

    def __repr__(self) -> str:
        return (
            f"ActiveTaskLimiter(limit={self._limit}, window={self._window}, "
            f"in_flight={self._in_flight}, waiting={len(self._waiters)}, "
            f"adaptive={self._adaptive!r})"
        )
