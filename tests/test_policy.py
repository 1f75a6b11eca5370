"""Polling policies: schedule shape, phase, progress, learning, and the simulated figures."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from flux_async._polling._hazard import HazardPolicy, next_poll_time
from flux_async._polling._latency import LatencyModel, lognormal_hazard
from flux_async._polling._policy import (
    BackoffPolicy,
    FixedIntervalPolicy,
    PollPolicy,
    PollState,
    ReferencePolicy,
    ScheduleStats,
    simulate_schedule,
)

MU3 = math.log(3.0)


def known(median: float = 3.0, sigma: float = 0.5) -> LatencyModel:
    """Return a model that stays at its prior (the distribution is known)."""
    return LatencyModel(lambda _key: (median, sigma), prior_weight=1e12, window=1e12)


def lognormal_durations(seed: int = 7, n: int = 2000) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(rng.gauss(MU3, 0.5)) for _ in range(n)]


def schedule(policy: PollPolicy, polls: int, submitted_at: float = 0.0) -> list[float]:
    """Return the first ``polls`` poll times (seconds after submit) of a never-done task."""
    state = PollState("k", submitted_at)
    now = submitted_at + policy.first_delay(state, submitted_at)
    times = [now - submitted_at]
    while len(times) < polls:
        now += policy.next_delay(state, now, progress=None)
        times.append(now - submitted_at)
    return times


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# --- baselines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (FixedIntervalPolicy(0.5), [0.5, 1.0, 1.5, 2.0]),
        (ReferencePolicy(), [1.0, 2.5, 4.75, 8.125, 13.125, 18.125]),
    ],
)
def test_baseline_schedules(policy: PollPolicy, expected: list[float]) -> None:
    assert schedule(policy, len(expected)) == pytest.approx(expected)


def test_backoff_starts_near_the_typical_latency_and_caps() -> None:
    policy = BackoffPolicy(lambda _key: 5.0, rng=random.Random(1))
    times = schedule(policy, 12)
    assert 0.8 * 5.0 * 0.9 <= times[0] <= 0.8 * 5.0 * 1.1
    steps = gaps(times)
    for n, step in enumerate(steps):
        nominal = min(10.0, 1.5**n)
        assert nominal * 0.9 <= step <= min(10.0, nominal * 1.1)
    assert max(steps) <= 10.0


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    def make() -> BackoffPolicy:
        return BackoffPolicy(lambda _key: 3.0, jitter=0.3, rng=random.Random(42))

    first, second = schedule(make(), 10), schedule(make(), 10)
    assert first == second
    assert len(set(gaps(first))) == len(gaps(first))  # jittered: no two waits alike


def test_backoff_first_delay_counts_from_submit() -> None:
    policy = BackoffPolicy(lambda _key: 5.0, jitter=0.0)
    state = PollState("k", submitted_at=100.0)
    assert policy.first_delay(state, 100.0) == pytest.approx(4.0)
    assert policy.first_delay(state, 101.5) == pytest.approx(2.5)
    assert policy.first_delay(state, 110.0) == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedIntervalPolicy(0.0),
        lambda: BackoffPolicy(lambda _key: 1.0, factor=0.5),
        lambda: HazardPolicy(known(), floor=2.0, cap=1.0),
    ],
)
def test_bad_policy_configuration_is_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=r"need|must"):
        make()


# --- the hazard-shaped schedule --------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "mu", "sigma", "rate", "mass"),
    [(0.0, MU3, 0.5, 1.6, 1.2), (2.0, MU3, 0.5, 1.6, 1.0), (5.0, MU3, 0.3, 3.0, 1.0)],
)
def test_next_poll_time_spends_one_unit_of_density(
    start: float, mu: float, sigma: float, rate: float, mass: float
) -> None:
    end = next_poll_time(start, mu, sigma, rate, 60.0, mass)
    n = 20000
    width = (end - start) / n
    integral = sum(
        rate * math.sqrt(lognormal_hazard(start + (i + 0.5) * width, mu, sigma)) * width
        for i in range(n)
    )
    assert integral == pytest.approx(mass, rel=0.03)


def test_first_poll_comes_shortly_before_the_median() -> None:
    first = schedule(HazardPolicy(known(3.0)), 1)[0]
    assert 0.6 * 3.0 <= first <= 1.0 * 3.0


def test_intervals_shrink_while_the_hazard_rises() -> None:
    policy = HazardPolicy(known(3.0))
    elapsed = [1.0, 2.0, 3.0, 3.5]
    hazards = [lognormal_hazard(t, MU3, 0.5) for t in elapsed]
    assert hazards == sorted(hazards)
    delays = [policy.next_delay(PollState("k", 0.0), t, progress=None) for t in elapsed]
    assert delays == sorted(delays, reverse=True)
    assert len(set(delays)) == len(delays)


@pytest.mark.parametrize(
    ("median", "sigma", "elapsed", "expected"),
    [
        (3.0, 0.5, 3.0e4, 5.0),  # far tail: the hazard has decayed, the cap holds
        (3.0, 0.05, 3.0, 0.25),  # a narrow peak: the floor holds
        (0.3, 0.3, 0.3, 0.25),  # a sub-second model at its median
    ],
)
def test_intervals_are_clamped(
    median: float, sigma: float, elapsed: float, expected: float
) -> None:
    policy = HazardPolicy(known(median, sigma), floor=0.25, cap=5.0)
    assert policy.next_delay(PollState("k", 0.0), elapsed, progress=None) == expected


def test_first_delay_may_exceed_the_interval_cap() -> None:
    policy = HazardPolicy(known(60.0), cap=5.0, first_cap=60.0)
    first = policy.first_delay(PollState("k", 0.0), 0.0)
    assert 5.0 < first < 60.0


def test_each_task_runs_from_its_own_submit_time() -> None:
    policy = HazardPolicy(known(3.0))
    a, b = schedule(policy, 4, submitted_at=10.0), schedule(policy, 4, submitted_at=10.37)
    assert a == pytest.approx(b)  # same shape relative to each submit...
    late = PollState("k", submitted_at=10.0)
    # ...and asking later than the submit does not shift the first poll.
    assert 11.0 + policy.first_delay(late, 11.0) == pytest.approx(10.0 + a[0])


def test_a_resumed_task_is_scheduled_like_any_pending_one() -> None:
    policy = HazardPolicy(known(3.0))
    state = PollState("k", 0.0, polls=3)
    fresh = PollState("k", 0.0)
    assert policy.first_delay(state, 4.0) == pytest.approx(
        policy.next_delay(fresh, 4.0, progress=None)
    )


# --- progress --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("progress", "relation"),
    [
        (None, "same"),
        (0.0, "same"),  # no information
        (0.9, "sooner"),
        (1.0, "floor"),
        (0.2, "later"),  # at this pace the task takes ~10 s
    ],
)
def test_progress_moves_the_next_poll(progress: float | None, relation: str) -> None:
    policy = HazardPolicy(known(3.0))
    baseline = policy.next_delay(PollState("k", 0.0), 2.0, progress=None)
    delay = policy.next_delay(PollState("k", 0.0), 2.0, progress=progress)
    if relation == "same":
        assert delay == pytest.approx(baseline)
    elif relation == "sooner":
        assert delay < 0.5 * baseline
    elif relation == "floor":
        assert delay == policy.floor
    else:
        assert delay > 2.0 * baseline


def test_a_progress_rate_sees_through_queueing() -> None:
    policy = HazardPolicy(known(3.0))
    single = policy.next_delay(PollState("k", 0.0), 2.0, progress=0.6)
    queued = PollState("k", 0.0)
    policy.next_delay(queued, 1.0, progress=0.1)  # it only started running at ~0.8 s
    assert queued.last_progress == 0.1
    rated = policy.next_delay(queued, 2.0, progress=0.6)
    # t/p says ~3.3 s in all; the rate since the last reading says ~2.8 s.
    assert rated < single
    assert queued.polls == 2
    assert queued.last_progress == 0.6
    assert queued.progress_at == 2.0


def test_a_reply_without_progress_keeps_the_last_reading() -> None:
    state = PollState("k", 0.0)
    state.record(1.0, 0.4)
    state.record(2.0, None)
    assert (state.polls, state.last_progress, state.progress_at, state.last_poll_at) == (
        2,
        0.4,
        1.0,
        2.0,
    )


def test_progress_cuts_lag_in_simulation() -> None:
    durations = lognormal_durations(n=500)
    plain = simulate_schedule(HazardPolicy(known()), durations)
    informed = simulate_schedule(
        HazardPolicy(known()), durations, progress=lambda elapsed, total: elapsed / total
    )
    assert informed.mean_lag < 0.7 * plain.mean_lag
    assert informed.polls_per_task < plain.polls_per_task


# --- the simulated figures (issue 3) ---------------------------------------------------


@pytest.fixture(scope="module")
def figures() -> dict[str, ScheduleStats]:
    durations = lognormal_durations()
    stats = {
        "fixed 0.5 s": simulate_schedule(FixedIntervalPolicy(0.5), durations),
        "fixed 1 s": simulate_schedule(FixedIntervalPolicy(1.0), durations),
        "reference 1 s x1.5 to 5 s": simulate_schedule(ReferencePolicy(), durations),
        "hazard, known": simulate_schedule(HazardPolicy(known()), durations),
        "hazard, learned from (6 s, 0.8)": simulate_schedule(
            HazardPolicy(LatencyModel(lambda _key: (6.0, 0.8))), durations
        ),
    }
    for name, s in stats.items():
        print(f"{name:34} {s.polls_per_task:5.2f} polls  lag {s.mean_lag:.3f} / {s.p95_lag:.3f}")
    return stats


@pytest.mark.parametrize(
    ("name", "polls", "lag"), [("fixed 0.5 s", 7.3, 0.25), ("fixed 1 s", 3.9, 0.5)]
)
def test_fixed_loops_match_the_issue(
    figures: dict[str, ScheduleStats], name: str, polls: float, lag: float
) -> None:
    assert figures[name].polls_per_task == pytest.approx(polls, abs=0.1)
    assert figures[name].mean_lag == pytest.approx(lag, abs=0.02)


@pytest.mark.parametrize("name", ["hazard, known", "hazard, learned from (6 s, 0.8)"])
def test_hazard_schedule_beats_the_fast_loop(figures: dict[str, ScheduleStats], name: str) -> None:
    assert figures[name].polls_per_task <= 0.4 * figures["fixed 0.5 s"].polls_per_task
    assert figures[name].mean_lag <= 0.5


def test_hazard_schedule_dominates_the_reference_client(figures: dict[str, ScheduleStats]) -> None:
    reference, hazard = figures["reference 1 s x1.5 to 5 s"], figures["hazard, known"]
    assert hazard.mean_lag < 0.5 * reference.mean_lag
    assert hazard.p95_lag < reference.p95_lag


def test_learning_through_censored_detections_finds_the_distribution() -> None:
    model = LatencyModel(lambda _key: (6.0, 0.8))
    simulate_schedule(HazardPolicy(model), lognormal_durations(seed=8, n=800))
    mu, sigma = model.params("sim:model")
    assert model.count("sim:model") == 800
    assert mu == pytest.approx(MU3, abs=0.12)
    assert sigma == pytest.approx(0.5, abs=0.12)


def test_round_trip_adds_to_the_lag() -> None:
    durations = lognormal_durations(n=300)
    still = simulate_schedule(FixedIntervalPolicy(0.5), durations)
    slow = simulate_schedule(FixedIntervalPolicy(0.5), durations, rtt=0.2)
    # Polls now come every 0.7 s and each answer takes 0.1 s more to come back.
    assert slow.mean_lag == pytest.approx(0.7 / 2 + 0.1, abs=0.03)
    assert slow.mean_lag > still.mean_lag


def test_simulate_needs_durations() -> None:
    with pytest.raises(ValueError, match="duration"):
        simulate_schedule(FixedIntervalPolicy(0.5), [])


def test_reprs_name_the_policy() -> None:
    assert "HazardPolicy(rate=1.6" in repr(HazardPolicy(known()))
    assert repr(ReferencePolicy()) == "ReferencePolicy()"
    assert repr(FixedIntervalPolicy(0.5)) == "FixedIntervalPolicy(0.5)"
    assert "factor=1.5" in repr(BackoffPolicy(lambda _key: 1.0))
