"""Polling that knows its regime: the decision, the schedules it picks, the cold start."""

from __future__ import annotations

import math
import random

import anyio
import pytest

from flux_async import AsyncFlux, ManualClock
from flux_async._engine._scheduler import Scheduler
from flux_async._polling._budget import RateBudget
from flux_async._polling._hazard import HazardPolicy, catalog_prior
from flux_async._polling._latency import LatencyModel
from flux_async._polling._policy import (
    FixedIntervalPolicy,
    PollPolicy,
    PollState,
    simulate_schedule,
)
from flux_async._polling._regime import (
    FRUGAL,
    THROUGHPUT,
    PollingMode,
    Regime,
    RegimePolicy,
    choose_regime,
    regime_policy,
)
from flux_async._request._models import PollReply, Task
from flux_async.testing import FAKE_API_KEY

from .test_scheduler import FakeServer, Script, drive, ready, status

KEY = "bfl:flux-2-pro"


def known(median: float, sigma: float) -> LatencyModel:
    return LatencyModel(lambda _key: (median, sigma), prior_weight=1e12, window=1e12)


@pytest.mark.parametrize(
    ("mode", "waiting", "regime"),
    [
        ("auto", 0, "frugal"),
        ("auto", 1, "throughput"),
        ("auto", 500, "throughput"),
        ("throughput", 0, "throughput"),
        ("throughput", 3, "throughput"),
        ("frugal", 0, "frugal"),
        ("frugal", 3, "frugal"),
    ],
)
def test_the_regime_follows_the_backlog_in_auto(
    mode: PollingMode, waiting: int, regime: Regime
) -> None:
    assert choose_regime(mode, waiting) == regime


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, throughput, frugal"):
        choose_regime("fast", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="polling must be"):
        RegimePolicy(known(3.0, 0.5), mode="eager")  # type: ignore[arg-type]


def test_a_backlog_tightens_the_next_poll_and_its_end_relaxes_it() -> None:
    waiting = [0]
    model = known(3.0, 0.5)
    model.observe(KEY, 3.0)  # warm: no scouting
    policy = RegimePolicy(model, waiting=lambda: waiting[0])
    delays: dict[tuple[int, int], tuple[float, float]] = {}
    for backlog in (0, 5, 0):
        waiting[0] = backlog
        state = PollState(KEY, submitted_at=100.0)
        first = policy.first_delay(state, 100.0)
        delays[backlog, len(delays)] = (first, policy.next_delay(state, 102.5, progress=None))
    frugal, busy, frugal_again = delays.values()
    assert frugal == frugal_again
    # With a backlog both the first and the next poll come sooner.
    assert busy[0] < frugal[0]
    assert busy[1] < frugal[1]
    assert policy.regime() == "frugal"


@pytest.mark.anyio
@pytest.mark.parametrize(("median", "sigma"), [(3.0, 0.5), (2.0, 0.4), (6.0, 0.4)])
async def test_throughput_under_the_budget_sees_sooner_than_the_loop(
    median: float, sigma: float
) -> None:
    # Alone, the throughput regime asks for more polls than the loop; the budget (the
    # loop's rate per pending task) bounds them and the choice by value places them.
    rng = random.Random(7)
    times = [rng.lognormvariate(math.log(median), sigma) for _ in range(24)]
    alone = simulate_schedule(RegimePolicy(known(median, sigma), mode="throughput"), times)
    loop_lag, loop_polls = await one_round(FixedIntervalPolicy(0.5), times)
    assert alone.polls_per_task > loop_polls
    policy = RegimePolicy(known(median, sigma), mode="throughput")
    budget = RateBudget(per_task=2.0)  # the client's
    lag, polls = await one_round(policy, times, budget=budget)
    assert lag < loop_lag
    # No per-task pace any more: in one round, the loop's rate over each task's life
    # plus the budget's starting bucket (2 x 2 polls per task) at most.
    assert polls <= loop_polls + 2.0 * 2.0


def test_frugal_spends_under_half_the_loop_polls_on_the_mix() -> None:
    rng = random.Random(7)
    polls = lags = loop = 0.0
    for median in (1.0, 6.0):
        times = [rng.lognormvariate(math.log(median), 0.4) for _ in range(400)]
        frugal = simulate_schedule(RegimePolicy(known(median, 0.4), mode="frugal"), times, 0.005)
        naive = simulate_schedule(FixedIntervalPolicy(0.5), times, 0.005)
        polls += frugal.polls_per_task / 2
        lags += frugal.mean_lag / 2
        loop += naive.polls_per_task / 2
    assert polls <= 0.42 * loop
    assert lags <= 0.37


def test_the_settings_are_ordered() -> None:
    assert THROUGHPUT.rate > FRUGAL.rate > 0.0


def test_replanning_follows_what_the_key_learned_and_stops_once_warm() -> None:
    model = LatencyModel(lambda _key: (10.0, 0.5))  # the catalog's guess: 10 s
    policy = RegimePolicy(model, mode="frugal", cold_count=3)
    fresh = PollState(KEY, submitted_at=0.0)
    planned = policy.replan_delay(fresh, 0.0)
    assert planned is not None
    # Three tasks seen done by 2 s: the queued first poll moves much earlier.
    for _ in range(2):
        model.observe(KEY, 2.0, censored_at=1.5)
    replanned = policy.replan_delay(fresh, 0.5)
    assert replanned is not None
    assert replanned + 0.5 < planned
    # A task polled at 1.2 s is not polled again before the floor has passed.
    polled = PollState(KEY, submitted_at=0.0)
    polled.record(1.2, None)
    again = policy.replan_delay(polled, 1.25)
    assert again is not None
    assert again >= policy.floor - 0.05 - 1e-9
    model.observe(KEY, 2.0, censored_at=1.5)
    assert not policy.cold(KEY)
    assert policy.replan_delay(fresh, 0.5) is None


def test_a_cold_key_starts_with_a_wider_prior_than_the_catalog() -> None:
    model = LatencyModel(lambda _key: (10.0, 0.3))
    policy = RegimePolicy(model, mode="frugal")
    cold = policy.replan_delay(PollState(KEY, submitted_at=0.0), 0.0)
    model.observe(KEY, 10.0)
    warm = policy.replan_delay(PollState(KEY, submitted_at=0.0), 0.0)
    assert cold is not None
    assert warm is not None
    assert cold < warm


def test_the_first_polls_of_a_cold_key_are_staggered() -> None:
    policy = RegimePolicy(LatencyModel(lambda _key: (10.0, 0.5)), mode="throughput")
    firsts = [policy.first_delay(PollState(KEY, submitted_at=0.0), 0.0) for _ in range(4)]
    assert firsts[0] < firsts[2] < firsts[1] == firsts[3]


@pytest.mark.parametrize(
    ("seen", "now", "value"),
    [
        # lognormal(median 3 s, sigma 0.5); value = 1 - S(now) / S(seen)
        (None, 0.0, 0.0),  # just submitted: nothing can have ended
        (None, 3.0, 0.5),  # never polled, at the median: a coin toss
        (3.0, 3.0, 0.0),  # seen pending this instant
        (1.0, 1.5, 0.0698),  # early in its life: unlikely
        (3.0, 3.5, 0.2421),  # around the median, the same half second: 3.5 x likelier
        (6.0, 6.5, 0.2635),  # past it, likelier still (sigma 0.5: the hazard still rises)
        (None, 1e6, 1.0),  # far past anything the model expects
    ],
)
def test_a_poll_is_worth_the_chance_the_task_ended_since_last_seen(
    seen: float | None, now: float, value: float
) -> None:
    policy = RegimePolicy(known(3.0, 0.5), mode="throughput")
    policy.model.observe(KEY, 3.0)  # warm: the known lognormal, not the cold one
    state = PollState(KEY, submitted_at=10.0)
    if seen is not None:
        state.record(10.0 + seen, None)
    assert policy.poll_value(state, 10.0 + now) == pytest.approx(value, abs=5e-4)


async def one_round(
    policy: PollPolicy, durations: list[float], budget: RateBudget | None = None
) -> tuple[float, float]:
    """Run tasks submitted together through a Scheduler; return (mean lag, polls per task)."""
    clock = ManualClock()
    server = FakeServer(clock)
    sched = Scheduler(
        server.poll, clock=clock, policy=policy, max_concurrent_polls=64, budget=budget
    )
    tasks = [server.task(f"t{i}", plain_after(d, f"t{i}")) for i, d in enumerate(durations)]
    lags: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        for task in tasks:
            sched.add(task)

        async def collect(task: Task, duration: float) -> None:
            result = await sched.wait(task)
            lags.append(result.ready_at - duration)

        for task, duration in zip(tasks, durations, strict=True):
            tg.start_soon(collect, task, duration)
        await drive(clock, lambda: len(lags) == len(tasks))
        tg.cancel_scope.cancel()
    return sum(lags) / len(lags), sum(server.polls.values()) / len(tasks)


def plain_after(seconds: float, task_id: str) -> Script:
    """Pending without progress until ``seconds``, then Ready."""

    def script(elapsed: float) -> PollReply:
        return ready(task_id) if elapsed >= seconds else status(task_id, "Pending")

    return script


@pytest.mark.anyio
async def test_a_cold_start_learns_within_the_round() -> None:
    # flux-2-pro's catalog guess is 6 s; these tasks, all submitted at once, take ~3 s.
    rng = random.Random(3)
    durations = [rng.lognormvariate(math.log(3.0), 0.5) for _ in range(48)]
    catalog = LatencyModel(catalog_prior)
    plain = HazardPolicy(catalog, rate=FRUGAL.rate, first_mass=FRUGAL.first_mass)
    learning = regime_policy(mode="frugal")
    plain_lag, _ = await one_round(plain, durations)
    lag, polls = await one_round(learning, durations)
    # Scouts and re-planning: the round pays for the guess once, not once per task.
    assert lag < 0.6 * plain_lag
    assert polls < 6.0
    assert learning.model.count("bfl:flux-2-pro") == len(durations)


@pytest.mark.anyio
async def test_the_client_takes_a_polling_mode() -> None:
    async with AsyncFlux(api_key=FAKE_API_KEY, polling="throughput") as flux:
        assert "throughput" in repr(flux._policy)
    with pytest.raises(ValueError, match="polling must be"):
        AsyncFlux(api_key=FAKE_API_KEY, polling="eager")  # type: ignore[arg-type]
