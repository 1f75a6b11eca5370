"""When to poll a pending task: the policies the scheduler asks, and an offline evaluator.

A policy answers two questions for one task, from the task's own submit time (so the
polls of many tasks stay as spread out as their submits were): how long until the
first poll (:meth:`PollPolicy.first_delay`), and how long until the next one after a
``Pending`` reply (:meth:`PollPolicy.next_delay`). It learns from every completion the
scheduler reports (:meth:`PollPolicy.observe_completion`). All times are float seconds;
nothing here sleeps or reads a clock.

The default, :class:`~flux_async._polling._hazard.HazardPolicy`, lives in ``_hazard``. Here are
the baselines: :class:`FixedIntervalPolicy` (BFL's examples), :class:`ReferencePolicy`
(BFL's reference client) and :class:`BackoffPolicy`; and :func:`simulate_schedule`,
which runs any policy against given completion times.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._progress import progress_estimate

__all__ = [
    "BackoffPolicy",
    "FixedIntervalPolicy",
    "PollPolicy",
    "PollState",
    "ReferencePolicy",
    "ScheduleStats",
    "simulate_schedule",
]


@dataclass(slots=True)
class PollState:
    """Per-task state the scheduler keeps and the policy updates in ``next_delay``.

    ``submitted_at``, ``last_poll_at`` and ``progress_at`` are monotonic seconds;
    ``last_progress`` is the latest ``progress`` (0..1) a Pending reply carried, read at
    ``progress_at``; ``polls`` counts the Pending replies seen. ``estimate`` is the total
    time (seconds after submit) the first usable reading predicted, and
    ``estimate_progress`` that reading: kept so the completion can grade it.
    """

    key: str
    submitted_at: float
    polls: int = 0
    last_progress: float | None = None
    last_poll_at: float | None = None
    progress_at: float | None = None
    estimate: float | None = None
    estimate_progress: float | None = None

    def record(self, now: float, progress: float | None) -> None:
        """Note a Pending reply read at ``now`` (policies call this in ``next_delay``)."""
        self.polls += 1
        self.last_poll_at = now
        if progress is not None:
            self.last_progress = progress
            self.progress_at = now
            if self.estimate is None:
                self.estimate = progress_estimate(now - self.submitted_at, progress)
                if self.estimate is not None:
                    self.estimate_progress = min(progress, 1.0)


class PollPolicy(Protocol):
    """What the scheduler asks of a polling schedule."""

    def first_delay(self, state: PollState, now: float) -> float:
        """Return seconds from ``now`` until the task's first poll."""
        ...

    def next_delay(self, state: PollState, now: float, *, progress: float | None) -> float:
        """Record a Pending reply read at ``now`` and return seconds until the next poll."""
        ...

    def observe_completion(
        self,
        key: str,
        duration: float,
        *,
        censored_at: float | None = None,
        state: PollState | None = None,
    ) -> None:
        """Learn that a task of ``key`` was seen done ``duration`` s after its submit.

        ``censored_at`` is the elapsed time (since the same submit) of the last poll that
        still saw it pending, or ``0.0`` when the first poll already found it done: the
        task really finished in ``(censored_at, duration]``. ``None`` means ``duration``
        is exact (known from elsewhere, not from polling). ``state`` is the task's
        :class:`PollState`, for policies that grade its progress readings.
        """
        ...


class FixedIntervalPolicy:
    """Poll every ``interval`` seconds from submit: BFL's examples use 0.5 s."""

    def __init__(self, interval: float) -> None:
        if interval <= 0.0:
            raise ValueError("interval must be > 0")
        self.interval = interval

    def first_delay(self, state: PollState, now: float) -> float:
        """Return ``interval``."""
        return self.interval

    def next_delay(self, state: PollState, now: float, *, progress: float | None) -> float:
        """Return ``interval``."""
        state.record(now, progress)
        return self.interval

    def observe_completion(
        self,
        key: str,
        duration: float,
        *,
        censored_at: float | None = None,
        state: PollState | None = None,
    ) -> None:
        """Ignore: a fixed loop learns nothing."""

    def __repr__(self) -> str:
        return f"FixedIntervalPolicy({self.interval!r})"


class BackoffPolicy:
    """Poll first at ``first_fraction`` of the model's typical latency, then back off.

    After the n-th Pending reply the wait is ``min(cap, base * factor**(n-1))``, scaled
    by a uniform factor in ``[1 - jitter, 1 + jitter]`` so tasks drift apart (still at
    most ``cap``). Pass a seeded ``random.Random`` for a reproducible schedule.
    ``initial(key)`` gives the typical latency in seconds.
    """

    def __init__(
        self,
        initial: Callable[[str], float],
        factor: float = 1.5,
        cap: float = 10.0,
        jitter: float = 0.1,
        *,
        base: float = 1.0,
        first_fraction: float = 0.8,
        rng: random.Random | None = None,
    ) -> None:
        if factor < 1.0 or cap <= 0.0 or base <= 0.0 or not 0.0 <= jitter < 1.0:
            raise ValueError("need factor >= 1, cap > 0, base > 0 and 0 <= jitter < 1")
        self._initial = initial
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self.base = base
        self.first_fraction = first_fraction
        self._rng = rng if rng is not None else random.Random()

    def _jittered(self, delay: float) -> float:
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * self._rng.random() - 1.0)
        return min(delay, self.cap)

    def first_delay(self, state: PollState, now: float) -> float:
        """Return the wait until ``first_fraction`` of the typical latency after submit."""
        target = self.first_fraction * self._initial(state.key)
        return max(0.0, self._jittered(target) - (now - state.submitted_at))

    def next_delay(self, state: PollState, now: float, *, progress: float | None) -> float:
        """Return the capped, jittered exponential wait after this Pending reply."""
        state.record(now, progress)
        exponent = min(state.polls - 1, 64)  # beyond that the cap has long applied
        return self._jittered(min(self.cap, self.base * self.factor**exponent))

    def observe_completion(
        self,
        key: str,
        duration: float,
        *,
        censored_at: float | None = None,
        state: PollState | None = None,
    ) -> None:
        """Ignore: this schedule takes its latency from the catalog only."""

    def __repr__(self) -> str:
        return f"BackoffPolicy(factor={self.factor}, cap={self.cap}, jitter={self.jitter})"


class ReferencePolicy(BackoffPolicy):
    """BFL's reference client: first poll after 1 s, then x1.5 up to 5 s, no jitter."""

    def __init__(self) -> None:
        super().__init__(lambda _key: 1.0, 1.5, 5.0, 0.0, base=1.5, first_fraction=1.0)

    def __repr__(self) -> str:
        return "ReferencePolicy()"


@dataclass(frozen=True, slots=True)
class ScheduleStats:
    """What a schedule cost: polls per task, and seconds from completion to detection."""

    polls_per_task: float
    mean_lag: float
    p95_lag: float


def simulate_schedule(
    policy: PollPolicy,
    durations: Sequence[float],
    rtt: float = 0.0,
    *,
    key: str = "sim:model",
    progress: Callable[[float, float], float | None] | None = None,
) -> ScheduleStats:
    """Run ``policy`` against tasks that finish ``durations`` seconds after submit.

    Tasks run one after another, each from its own submit at 0, and the policy learns
    each completion before the next task starts. A poll sent at ``s`` sees the server's
    state at ``s + rtt/2`` and its reply arrives at ``s + rtt`` (detection time); the next
    poll is scheduled from the reply. ``progress(elapsed, duration)``, when given, is the
    ``progress`` a Pending reply reports. Lag is detection minus completion.
    """
    if not durations:
        raise ValueError("need at least one duration")
    total_polls = 0
    lags: list[float] = []
    for duration in durations:
        state = PollState(key=key, submitted_at=0.0)
        sent = policy.first_delay(state, 0.0)
        last_pending = 0.0  # no Pending seen yet: the task finished in (0, detection]
        while True:
            total_polls += 1
            seen, reply = sent + 0.5 * rtt, sent + rtt
            if seen >= duration:
                break
            last_pending = seen
            reported = progress(seen, duration) if progress is not None else None
            sent = reply + policy.next_delay(state, reply, progress=reported)
        lags.append(reply - duration)
        policy.observe_completion(key, reply, censored_at=last_pending, state=state)
    lags.sort()
    p95 = lags[max(0, math.ceil(0.95 * len(lags)) - 1)]
    return ScheduleStats(total_polls / len(durations), sum(lags) / len(lags), p95)
