"""Polling that knows its regime: what a second of detection lag costs right now.

When submissions wait for a slot (the limiter has waiters), a slot comes back only when
the client *sees* a task end: every second of lag is a lost slot-second, so polls are
worth spending (the ``"throughput"`` regime: Keller's rule at a high rate, which on
lognormal times spends no more polls per task than a 0.5 s loop and finds completions
sooner). When slots are spare, lag costs only the caller's wait, so polls are spent
sparingly (``"frugal"``). :func:`choose_regime` makes that call per moment;
:class:`RegimePolicy` asks it at every poll it schedules.

Pace: no per-task pace against BFL's 0.5 s loop (until issue 10's third pass a task's
k-th poll never came before ``(k - 1) * 0.5`` s after its submit). What bounds the
polls instead: the per-task ``floor`` (no two polls of one task closer than 0.15 s)
and the scheduler's budget, two polls per pending task per second (the same loop's
rate, so on average no more polls per task than the loop). The throughput regime asks
for polls at a rate above what that budget grants, and the scheduler spends each scarce
poll on the due task most likely to have ended since it was last seen
(:meth:`HazardPolicy.poll_value`): lag is lost throughput whichever of the slots' tasks
it delays, so polls move from tasks whose end is unlikely yet (early in their life) to
the ones around their likely end.

Cold start: a key with no completion yet runs on the catalog's guess, widened to
``cold_sigma``; its tasks' first polls are staggered (:data:`SCOUT_MASSES`), so a
few scouts look early and the rest wait. While a key is *cold* (fewer than
``cold_count`` completions), after each completion the scheduler asks
:meth:`RegimePolicy.replan_delay` for every queued task of that key, so what the first
completions taught moves the polls already planned in the same round. All times are
float seconds; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, get_args

from ._hazard import HazardPolicy, catalog_prior, next_poll_time
from ._latency import LatencyModel
from ._policy import PollState

__all__ = [
    "FRUGAL",
    "THROUGHPUT",
    "PollingMode",
    "Regime",
    "RegimePolicy",
    "RegimeSettings",
    "choose_regime",
    "regime_policy",
]

PollingMode = Literal["auto", "throughput", "frugal"]
Regime = Literal["throughput", "frugal"]
POLLING_MODES: Final = get_args(PollingMode)


@dataclass(frozen=True, slots=True)
class RegimeSettings:
    """Keller's ``rate`` (1/sqrt(s)) and the first poll's ``first_mass`` for one regime."""

    rate: float
    first_mass: float


# Above what the budget grants on lognormal(median 3 s, sigma 0.5) times (known and
# alone, about 9.7 polls per task at 0.13 s): the budget, not this rate, sets the spend,
# and the scheduler's choice by poll value where it goes (rates 6.5 to 50 give the same
# cap-bound makespan within 0.001, see docs/benchmarks.md).
THROUGHPUT: Final = RegimeSettings(rate=6.5, first_mass=1.2)
# About 0.39 x the 0.5 s loop's polls at 0.36 s mean lag on a klein 1 s / max 6 s mix
# (sigma 0.4), distributions known; learned from the catalog in one round, about 0.48 x
# at 0.33 s.
FRUGAL: Final = RegimeSettings(rate=2.0, first_mass=1.2)


# The first polls of a key with no completion: fractions of ``first_mass``, in turn.
SCOUT_MASSES: Final = (0.3, 1.0, 0.6, 1.0)


def choose_regime(mode: PollingMode, waiting: int) -> Regime:
    """Return the regime to poll in, for ``mode`` with ``waiting`` submissions queued.

    ``"auto"`` is ``"throughput"`` exactly while something waits for a slot (the limiter
    has waiters), else ``"frugal"``; the other modes are fixed.
    """
    if mode == "auto":
        return "throughput" if waiting > 0 else "frugal"
    if mode in ("throughput", "frugal"):
        return mode
    raise ValueError(f"polling must be one of {', '.join(POLLING_MODES)}; got {mode!r}")


class RegimePolicy(HazardPolicy):
    """The hazard-shaped schedule at the rate the current regime calls for.

    ``waiting()`` returns how many submissions wait for a slot now (the limiter's
    waiters). Once a key's progress readings are trusted, the informed settings of
    :class:`HazardPolicy` apply in both regimes (they are already cheap and sharp).
    """

    def __init__(
        self,
        model: LatencyModel,
        *,
        mode: PollingMode = "auto",
        waiting: Callable[[], int] = lambda: 0,
        throughput: RegimeSettings = THROUGHPUT,
        frugal: RegimeSettings = FRUGAL,
        cold_count: int = 8,
        cold_sigma: float = 0.5,
    ) -> None:
        choose_regime(mode, 0)  # validate early
        super().__init__(model, rate=frugal.rate, first_mass=frugal.first_mass)
        self.mode: PollingMode = mode
        self._waiting = waiting
        self._settings_by_regime = {"throughput": throughput, "frugal": frugal}
        self.cold_count = cold_count
        self.cold_sigma = cold_sigma
        self._scouts: dict[str, int] = {}

    def regime(self) -> Regime:
        """Return the regime now."""
        return choose_regime(self.mode, self._waiting())

    def _settings(self, key: str) -> tuple[float, float]:
        if self.progress.trusted(key, self.trust_sigma):
            return self.informed_rate, self.informed_first_mass
        settings = self._settings_by_regime[self.regime()]
        return settings.rate, settings.first_mass

    def cold(self, key: str) -> bool:
        """Return whether ``key`` has fewer than ``cold_count`` completions."""
        return self.model.count(key) < self.cold_count

    def _task_params(
        self, state: PollState, previous: tuple[float, float] | None
    ) -> tuple[float, float]:
        mu, sigma = super()._task_params(state, previous)
        if self.model.count(state.key) == 0:
            # Nothing learned yet: the catalog's guess may be far off either way.
            sigma = max(sigma, self.cold_sigma)
        return mu, sigma

    def first_delay(self, state: PollState, now: float) -> float:
        """Return the wait until the first poll: staggered while the key has no completion."""
        elapsed = now - state.submitted_at
        if state.polls or self.model.count(state.key):
            delay = super().first_delay(state, now)
        else:
            turn = self._scouts.get(state.key, 0)
            self._scouts[state.key] = turn + 1
            params = self._task_params(state, None)
            rate, first_mass = self._settings(state.key)
            mass = first_mass * SCOUT_MASSES[turn % len(SCOUT_MASSES)]
            delay = self._delay(elapsed, 0.0, params, self.first_cap, mass, rate)
        return delay

    def replan_delay(self, state: PollState, now: float) -> float | None:
        """Return seconds from ``now`` to this pending task's next poll, re-planned with
        what its key has learned since it was planned; None when the key is warm (the
        planned poll stands: re-planning every task costs CPU and gains little).
        """
        if not self.cold(state.key):
            return None
        params = self._task_params(state, None)
        rate, first_mass = self._settings(state.key)
        if state.last_poll_at is None:
            start, mass, cap = 0.0, first_mass, self.first_cap
        else:
            start, mass, cap = state.last_poll_at - state.submitted_at, 1.0, self.cap
        target = next_poll_time(start, params[0], params[1], rate, cap, mass)
        elapsed = now - state.submitted_at
        floor = self.floor
        if state.last_poll_at is not None:
            floor -= now - state.last_poll_at  # the floor counts from the last poll
        return max(target - elapsed, floor, 0.0)

    def __repr__(self) -> str:
        return f"RegimePolicy(mode={self.mode!r}, model={self.model!r})"


def regime_policy(
    latency_scale: float = 1.0,
    *,
    mode: PollingMode = "auto",
    waiting: Callable[[], int] = lambda: 0,
) -> RegimePolicy:
    """Return the client's default schedule: regime-aware, learning from the catalog prior."""
    return RegimePolicy(
        LatencyModel(lambda key: catalog_prior(key, latency_scale)), mode=mode, waiting=waiting
    )
