"""The limiter's cap-finding window: cut on 429, hold, probe up, no retry storms."""

from __future__ import annotations

import heapq
import math
import random

import pytest

from flux_async._polling._window import AdaptiveWindow

# (event, now, in_flight for a 429, window afterwards)
Event = tuple[str, float, int, int]


def run(window: AdaptiveWindow, events: list[Event]) -> None:
    for step, (kind, now, in_flight, expected) in enumerate(events):
        if kind == "429":
            window.on_rate_limited(now, in_flight)
        elif kind == "ok":
            window.on_success(now)
        else:
            window.on_completion(now)
        assert window.window == expected, f"after event {step}: {kind} at {now}"


@pytest.mark.parametrize(
    ("configured", "events"),
    [
        pytest.param(24, [("429", 0.0, 13, 12)], id="a 429 cuts to what was accepted"),
        pytest.param(
            24,
            [("429", 0.0, 13, 12), ("429", 1.0, 13, 12), ("429", 2.0, 13, 12)],
            id="the same submit refused again does not collapse it",
        ),
        pytest.param(
            24,
            [("429", 0.0, n, n - 1) for n in range(24, 12, -1)],
            id="a refused burst walks down as refused slots are released",
        ),
        pytest.param(
            24,
            [("429", 0.0, 13, 12), ("done", 1.0, 0, 12), ("429", 2.0, 12, 11)],
            id="a 429 in a new generation cuts again",
        ),
        pytest.param(
            24,
            [("429", 0.0, 13, 12), ("ok", 0.5, 0, 12), ("429", 1.0, 13, 12)],
            id="a 429 never raises the window",
        ),
        pytest.param(
            24,
            [("429", 0.0, 13, 12), ("429", 0.1, 30, 12)],
            id="more in flight than the window is no reason to grow",
        ),
        pytest.param(
            24,
            [
                ("429", 0.0, 13, 12),
                ("ok", 10.0, 0, 12),
                ("done", 29.9, 0, 12),
                ("ok", 30.0, 0, 13),
                ("ok", 31.0, 0, 13),
                ("done", 59.9, 0, 13),
                ("done", 60.0, 0, 14),
            ],
            id="probe up one per quiet period",
        ),
        pytest.param(
            24,
            [("429", 0.0, 13, 12), ("429", 20.0, 13, 12), ("ok", 35.0, 0, 12), ("ok", 50.0, 0, 13)],
            id="every 429 restarts the quiet period",
        ),
        pytest.param(
            24,
            [("429", 0.0, 13, 12), ("ok", 1000.0, 0, 13), ("ok", 1001.0, 0, 13)],
            id="a long idle spell probes once",
        ),
        pytest.param(
            3,
            [("429", 0.0, 3, 2), ("ok", 30.0, 0, 3), ("ok", 60.0, 0, 3), ("ok", 90.0, 0, 3)],
            id="never above the configured cap",
        ),
        pytest.param(
            4, [("ok", 100.0, 0, 4), ("done", 200.0, 0, 4)], id="no 429 ever: stays configured"
        ),
    ],
)
def test_window_state_machine(configured: int, events: list[Event]) -> None:
    run(AdaptiveWindow(configured, quiet_period=30.0), events)


def test_the_window_never_drops_below_its_minimum() -> None:
    window = AdaptiveWindow(4, min_window=2)
    run(window, [("429", 0.0, 1, 2), ("done", 1.0, 0, 2), ("429", 2.0, 2, 2)])
    assert window.rate_limited == 2


def test_counters_and_repr() -> None:
    window = AdaptiveWindow(24, quiet_period=1.0)
    run(window, [("429", 0.0, 13, 12), ("ok", 1.0, 0, 13), ("ok", 2.0, 0, 14)])
    assert (window.rate_limited, window.probes) == (1, 2)
    assert repr(window) == "AdaptiveWindow(window=14, configured=24, rate_limited=1, probes=2)"


@pytest.mark.parametrize(
    ("attempt", "retry_after", "low", "high"),
    [
        (0, 7.0, 7.0, 7.0),
        (5, 0.0, 0.0, 0.0),
        (3, -2.0, 0.0, 0.0),  # a bogus negative header waits not at all, not forever
        (0, None, 0.0, 0.5),
        (2, None, 0.0, 2.0),
        (10, None, 0.0, 10.0),
        (10_000, None, 0.0, 10.0),
    ],
)
def test_retry_delay(attempt: int, retry_after: float | None, low: float, high: float) -> None:
    window = AdaptiveWindow(24, rng=random.Random(attempt))
    delays = [window.retry_delay(0.0, attempt, retry_after) for _ in range(50)]
    assert all(low <= d <= high for d in delays)
    if retry_after is None:
        assert len(set(delays)) > 1  # full jitter spreads the retries


def test_retry_delay_is_reproducible_with_a_seeded_rng() -> None:
    a, b = AdaptiveWindow(24, rng=random.Random(3)), AdaptiveWindow(24, rng=random.Random(3))
    assert [a.retry_delay(0.0, n, None) for n in range(8)] == [
        b.retry_delay(0.0, n, None) for n in range(8)
    ]


@pytest.mark.parametrize(
    "kwargs",
    [{"min_window": 0}, {"min_window": 30}, {"quiet_period": 0.0}, {"backoff_cap": 0.1}],
)
def test_bad_configuration_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need"):
        AdaptiveWindow(24, **kwargs)  # type: ignore[arg-type]


def discover(configured: int, allowed: int, tasks: int, seed: int) -> tuple[int, int, float]:
    """Run ``tasks`` through a window against a server allowing ``allowed`` at once.

    Submits fill the window together and are answered in random order; a refused slot
    is released at once and its task waits for one of ours to finish (no timed retry).
    Returns (429s, final window, makespan in seconds).
    """
    rng = random.Random(seed)
    window = AdaptiveWindow(configured, rng=rng)
    queue = [math.exp(rng.gauss(math.log(3.0), 0.5)) for _ in range(tasks)]
    running: list[float] = []  # finish times on the server, a heap
    now = 0.0
    while queue or running:
        batch = queue[: max(0, window.window - len(running))]
        del queue[: len(batch)]
        held = len(running) + len(batch)
        rng.shuffle(batch)
        for duration in batch:
            if len(running) < allowed:
                heapq.heappush(running, now + duration)
                window.on_success(now)
            else:
                window.on_rate_limited(now, held)
                held -= 1
                queue.insert(0, duration)
        now = heapq.heappop(running)
        window.on_completion(now)
    return window.rate_limited, window.window, now


def test_discovering_a_smaller_cap_costs_few_429s() -> None:
    refused, final, makespan = discover(configured=24, allowed=12, tasks=240, seed=1)
    _, _, known_makespan = discover(configured=12, allowed=12, tasks=240, seed=1)
    assert refused / 240 <= 0.25
    assert final in (12, 13)  # at the cap, or mid-probe
    assert makespan <= 1.02 * known_makespan


def test_a_known_cap_sees_no_429() -> None:
    refused, final, _ = discover(configured=12, allowed=12, tasks=120, seed=2)
    assert (refused, final) == (0, 12)
