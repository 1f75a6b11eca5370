"""When to poll a pending task: the policies the scheduler asks, and an offline evaluator.

A policy answers two questions for one task, from the task's own submit time (so the
polls of many tasks stay as spread out as their submits were): how long until the
first poll (:meth:`PollPolicy.first_delay`), and how long until the next one after a
``Pending`` reply (:meth:`PollPolicy.next_delay`). It learns from every completion the
scheduler reports (:meth:`PollPolicy.observe_completion`). All times are float seconds;
nothing here sleeps or reads a clock.

:class:`HazardPolicy` is the default. Inspection theory (Keller, 1974) says the poll
density that minimises ``k * E[polls] + lam * E[detection lag]`` is
``n(t) = c * sqrt(h(t))`` with ``c = sqrt(lam / 2k)`` and ``h = f / S`` the hazard rate of
the completion time: poll rarely while a task is unlikely to be done, densely where
completions cluster. Each poll sits one unit of the running integral of ``n`` after
the previous one (the first at ``first_mass`` units after submit). The others are
baselines: :class:`FixedIntervalPolicy` (BFL's examples), :class:`ReferencePolicy`
(BFL's reference client) and :class:`BackoffPolicy`.

:func:`simulate_schedule` runs any policy against given completion times.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ._latency import LatencyModel, lognormal_hazard

__all__ = [
    "BackoffPolicy",
    "FixedIntervalPolicy",
    "HazardPolicy",
    "PollPolicy",
    "PollState",
    "ReferencePolicy",
    "ScheduleStats",
    "next_poll_time",
    "simulate_schedule",
]


@dataclass(slots=True)
class PollState:
    """Per-task state the scheduler keeps and the policy updates in ``next_delay``.

    ``submitted_at``, ``last_poll_at`` and ``progress_at`` are monotonic seconds;
    ``last_progress`` is the latest ``progress`` (0..1) a Pending reply carried, read at
    ``progress_at``; ``polls`` counts the Pending replies seen.
    """

    key: str
    submitted_at: float
    polls: int = 0
    last_progress: float | None = None
    last_poll_at: float | None = None
    progress_at: float | None = None

    def record(self, now: float, progress: float | None) -> None:
        """Note a Pending reply read at ``now`` (policies call this in ``next_delay``)."""
        self.polls += 1
        self.last_poll_at = now
        if progress is not None:
            self.last_progress = progress
            self.progress_at = now


class PollPolicy(Protocol):
    """What the scheduler asks of a polling schedule."""

    def first_delay(self, state: PollState, now: float) -> float:
        """Return seconds from ``now`` until the task's first poll."""
        ...

    def next_delay(self, state: PollState, now: float, *, progress: float | None) -> float:
        """Record a Pending reply read at ``now`` and return seconds until the next poll."""
        ...

    def observe_completion(
        self, key: str, duration: float, *, censored_at: float | None = None
    ) -> None:
        """Learn that a task of ``key`` was seen done ``duration`` s after its submit.

        ``censored_at`` is the elapsed time (since the same submit) of the last poll that
        still saw it pending, or ``0.0`` when the first poll already found it done: the
        task really finished in ``(censored_at, duration]``. ``None`` means ``duration``
        is exact (known from elsewhere, not from polling).
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
        self, key: str, duration: float, *, censored_at: float | None = None
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
        self, key: str, duration: float, *, censored_at: float | None = None
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


def next_poll_time(
    start: float, mu: float, sigma: float, rate: float, max_gap: float, mass: float = 1.0
) -> float:
    """Return ``t`` with ``integral(start, t) rate*sqrt(h(u)) du == mass`` for a lognormal h.

    Stop at ``start + max_gap`` if the integral has not reached ``mass`` by then. Times are
    seconds since submit. The step tracks both the hazard's own time scale
    (``sigma * u``: it changes with ``log u``) and the poll spacing, so one call costs
    a few dozen hazard evaluations.
    """
    end = start + max_gap
    scale = 0.02 * math.exp(mu)
    u = max(start, 0.0)
    acc = 0.0
    density = rate * math.sqrt(lognormal_hazard(u, mu, sigma))
    while u < end:
        step = min(end - u, 0.25 * sigma * max(u, scale))
        if density > 0.0:
            step = min(step, 0.125 * mass / density)
        mid = rate * math.sqrt(lognormal_hazard(u + 0.5 * step, mu, sigma))
        if acc + mid * step >= mass:
            return u + (mass - acc) / mid
        acc += mid * step
        u += step
        density = mid
    return end


class HazardPolicy:
    """Poll where completions are likely: density ``rate * sqrt(hazard)`` (Keller's rule).

    ``rate`` is Keller's ``c = sqrt(lam / 2k)`` in 1/sqrt(s): one second of detection lag
    is worth ``2 * rate**2`` polls. Polls before completion scale with ``rate`` and the
    lag with ``1/rate``. The first poll falls where the integral from submit reaches
    ``first_mass`` (a phase: slightly more than one unit, since a fresh task is known
    not to be done at submit); each later one a whole unit further on. The defaults
    (rate 1.6, first_mass 1.2) give about 2.9 polls per task at 0.49 s mean lag on
    lognormal(median 3 s, sigma 0.5) times, within 1% of the optimal inspection
    schedule (Barlow and Proschan's recursion) at that lag. Intervals are clamped to
    ``[floor, cap]``; the first to ``[floor, first_cap]``, since waiting before a task
    can plausibly be done costs nothing.

    Progress: a Pending reply's ``progress`` p at elapsed t estimates the total time as
    ``t / p`` (or, given an earlier reading, by the progress rate since it, which is not
    fooled by time spent queued). That estimate's log-error is taken as
    ``progress_sigma * (1 - p)`` (the error of the remaining part, relative to the
    whole) and combined with the learned lognormal by precision weighting; the task is
    then scheduled by the hazard of the combined lognormal. Progress near 1 thus pulls
    the next poll to the estimated finish; a slow start pushes it out.

    Learning: completions reach the :class:`LatencyModel` interval-censored (see its
    module docstring), which keeps the estimate unbiased by the detection lag.
    """

    def __init__(
        self,
        model: LatencyModel,
        *,
        floor: float = 0.25,
        cap: float = 5.0,
        first_cap: float = 60.0,
        rate: float = 1.6,
        first_mass: float = 1.2,
        progress_sigma: float = 0.5,
    ) -> None:
        if not 0.0 < floor <= cap or first_cap < floor or rate <= 0.0 or first_mass <= 0.0:
            raise ValueError("need 0 < floor <= cap, first_cap >= floor, rate and first_mass > 0")
        self.model = model
        self.floor = floor
        self.cap = cap
        self.first_cap = first_cap
        self.rate = rate
        self.first_mass = first_mass
        self.progress_sigma = progress_sigma

    def _task_params(
        self, state: PollState, previous: tuple[float, float] | None
    ) -> tuple[float, float]:
        """Return ``(mu, sigma)`` for this task: the model, sharpened by its progress."""
        mu, sigma = self.model.params(state.key)
        p, at = state.last_progress, state.progress_at
        if p is None or at is None or not math.isfinite(p) or p < 0.01:
            return mu, sigma
        elapsed = at - state.submitted_at
        if elapsed <= 0.0:
            return mu, sigma
        p = min(p, 1.0)
        total = elapsed / p
        if previous is not None:
            p0, at0 = previous
            if p > p0 and at > at0:
                total = elapsed + (1.0 - p) * (at - at0) / (p - p0)
        obs_sigma = max(self.progress_sigma * (1.0 - p), 0.02)
        w_model, w_obs = 1.0 / (sigma * sigma), 1.0 / (obs_sigma * obs_sigma)
        weight = w_model + w_obs
        return (mu * w_model + math.log(total) * w_obs) / weight, math.sqrt(1.0 / weight)

    def _delay(
        self,
        elapsed: float,
        start: float,
        params: tuple[float, float],
        cap: float,
        mass: float,
    ) -> float:
        """Return seconds from ``elapsed`` to the poll ``mass`` units after ``start``."""
        target = next_poll_time(start, params[0], params[1], self.rate, cap, mass)
        return min(max(target - elapsed, self.floor), cap)

    def first_delay(self, state: PollState, now: float) -> float:
        """Return the wait until the running integral from submit reaches ``first_mass``."""
        params = self._task_params(state, None)
        elapsed = now - state.submitted_at
        if state.polls:  # a task resumed mid-flight: schedule as after any Pending reply
            return self._delay(elapsed, elapsed, params, self.cap, 1.0)
        return self._delay(elapsed, 0.0, params, self.first_cap, self.first_mass)

    def next_delay(self, state: PollState, now: float, *, progress: float | None) -> float:
        """Record the Pending reply and return the wait until the integral adds 1 more."""
        previous = None
        if state.last_progress is not None and state.progress_at is not None:
            previous = (state.last_progress, state.progress_at)
        state.record(now, progress)
        if progress is None:
            previous = None  # the latest reading is unchanged; no new rate to learn
        elapsed = now - state.submitted_at
        params = self._task_params(state, previous)
        return self._delay(elapsed, elapsed, params, self.cap, 1.0)

    def observe_completion(
        self, key: str, duration: float, *, censored_at: float | None = None
    ) -> None:
        """Feed the completion, interval-censored, to the latency model."""
        self.model.observe(key, duration, censored_at=censored_at)

    def __repr__(self) -> str:
        return (
            f"HazardPolicy(rate={self.rate}, floor={self.floor}, cap={self.cap}, "
            f"model={self.model!r})"
        )


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
        policy.observe_completion(key, reply, censored_at=last_pending)
    lags.sort()
    p95 = lags[max(0, math.ceil(0.95 * len(lags)) - 1)]
    return ScheduleStats(total_polls / len(durations), sum(lags) / len(lags), p95)
