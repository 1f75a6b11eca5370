"""The poll-rate budget: one poll per in-flight task per second, bursts up to twice that."""

from __future__ import annotations

import pytest

from flux_async._polling._budget import RateBudget


def greedy(budget: RateBudget, start: float, end: float, in_flight: int) -> list[float]:
    """Poll as often as the budget allows from ``start`` to ``end``; return the send times."""
    now, sent = start, list[float]()
    while True:
        now += budget.delay_for(now, in_flight)
        if now > end:
            return sent
        budget.take(now, in_flight)
        sent.append(now)


@pytest.mark.parametrize("in_flight", [0, 1, 10, 24])
def test_a_fresh_budget_allows_one_burst_of_twice_the_rate(in_flight: int) -> None:
    budget = RateBudget()
    rate = max(1, in_flight)
    burst = greedy(budget, 0.0, 1e-9, in_flight)
    assert len(burst) == 2 * rate
    assert budget.delay_for(0.0, in_flight) == pytest.approx(1.0 / rate)


@pytest.mark.parametrize(("in_flight", "seconds"), [(1, 100.0), (10, 100.0), (24, 50.0)])
def test_the_average_rate_is_one_per_task_per_second(in_flight: int, seconds: float) -> None:
    sent = greedy(RateBudget(), 0.0, seconds, in_flight)
    # The opening burst plus the refill rate, nothing more.
    assert len(sent) == pytest.approx(2 * in_flight + in_flight * seconds, abs=1)


@pytest.mark.parametrize("in_flight", [1, 5, 24])
def test_no_window_of_one_second_holds_more_than_three_times_the_rate(in_flight: int) -> None:
    budget = RateBudget()
    sent = greedy(budget, 0.0, 20.0, in_flight)
    sent += greedy(budget, 60.0, 80.0, in_flight)  # an idle minute refills only to the cap
    worst = max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)
    assert worst <= 3 * in_flight + 1  # burst 2x, plus 1x refilled within that second


def test_debt_from_forced_polls_is_paid_back() -> None:
    budget = RateBudget()
    for _ in range(5):
        budget.take(0.0, 1)  # two tokens, then three polls of debt
    assert budget.tokens(0.0, 1) == pytest.approx(-3.0)
    assert budget.delay_for(0.0, 1) == pytest.approx(4.0)
    assert budget.delay_for(4.0, 1) == 0.0


def test_fewer_tasks_in_flight_shrink_the_bucket() -> None:
    budget = RateBudget()
    budget.take(0.0, 10)
    assert budget.tokens(0.0, 10) == pytest.approx(19.0)
    assert budget.tokens(0.0, 2) == pytest.approx(4.0)
    assert budget.tokens(100.0, 3) == pytest.approx(6.0)


def test_time_running_backwards_refills_nothing() -> None:
    budget = RateBudget()
    budget.take(10.0, 1)
    budget.take(10.0, 1)
    assert budget.delay_for(9.0, 1) == pytest.approx(1.0)


@pytest.mark.parametrize(("per_task", "burst"), [(0.0, 2.0), (1.0, 0.5)])
def test_bad_configuration_is_refused(per_task: float, burst: float) -> None:
    with pytest.raises(ValueError, match="need"):
        RateBudget(per_task=per_task, burst=burst)


def test_repr_shows_the_tokens() -> None:
    budget = RateBudget()
    budget.take(0.0, 1)
    assert repr(budget) == "RateBudget(per_task=1.0, burst=2.0, tokens=1.0)"


def test_a_hair_short_of_a_token_counts_as_one() -> None:
    budget = RateBudget()
    for _ in range(2):
        budget.take(0.0, 1)
    # Float rounding leaves the level a hair under one token after exactly one second.
    budget._tokens = -1e-12
    assert budget.delay_for(1.0, 1) == 0.0
    assert budget.delay_for(0.5, 1) == pytest.approx(0.5)
