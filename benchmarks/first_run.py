"""First-run figures: ``generate_many`` of 50 prompts against the loopback simulator.

Prints polls per task and the makespan beside the simulated generation times: the ideal
FIFO makespan under the same active-task cap (zero detection lag, zero round trip), and
the same client run with a fixed 0.5 s poll interval instead of its learned schedule
(the full set of baselines, naive clients included, is in ``polling.py``).

    .venv/bin/python benchmarks/first_run.py [--prompts 50] [--speed 3]

Times are in simulated seconds; the simulator and the client share one ScaledClock.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from flux_async import AsyncFlux, ScaledClock
from flux_async._polling._policy import FixedIntervalPolicy, PollPolicy
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig, serve

CAP = 24


def ideal_fifo(durations: list[float], cap: int) -> float:
    """Return the makespan of FIFO over ``cap`` slots with zero lag and zero round trip."""
    slots = [0.0] * cap
    for d in durations:
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + d)
    return max(slots)


async def one_run(
    n: int, speed: float, policy: PollPolicy | None, durations: list[float]
) -> dict[str, float]:
    clock = ScaledClock(speed)
    sim = Simulator(SimulatorConfig(image_bytes=64 * 1024), clock=clock)
    for d in durations:
        sim.plan_next(duration=d)
    async with serve(sim) as base_url:
        with tempfile.TemporaryDirectory() as out:
            async with AsyncFlux(
                api_key=FAKE_API_KEY, base_url=base_url, clock=clock, poll_policy=policy
            ) as flux:
                started = clock.monotonic()
                wall = time.perf_counter()
                ok = 0
                async for outcome in flux.generate_many(
                    [f"benchmark prompt {i}" for i in range(n)], output_dir=Path(out)
                ):
                    ok += outcome.ok
                makespan = clock.monotonic() - started
                real = time.perf_counter() - wall
    polls = [sim.records.polls_by_task.get(s.task_id or "", 0) for s in sim.records.submits]
    return {
        "ok": ok,
        "makespan": makespan,
        "real_seconds": real,
        "polls_per_task": statistics.fmean(polls),
    }


async def main(n: int, speed: float, seed: int) -> None:
    rng = random.Random(seed)
    # flux-2-pro in the simulator: lognormal, median 6 s, sigma 0.4.
    durations = [rng.lognormvariate(mu=1.791759, sigma=0.4) for _ in range(n)]
    ideal = ideal_fifo(durations, CAP)
    print(f"{n} prompts, flux-2-pro, cap {CAP}, loopback simulator at {speed:g}x")
    print(
        f"simulated generation: mean {statistics.fmean(durations):.2f} s, "
        f"sum {sum(durations):.1f} s, ideal FIFO makespan {ideal:.2f} s"
    )
    rows = [
        ("flux_async (default)", await one_run(n, speed, None, durations)),
        ("fixed 0.5 s interval", await one_run(n, speed, FixedIntervalPolicy(0.5), durations)),
    ]
    base = rows[1][1]
    print(f"{'client':<22}{'ok':>4}{'makespan':>10}{'/ideal':>8}{'polls/task':>12}{'vs 0.5 s':>10}")
    for name, r in rows:
        print(
            f"{name:<22}{int(r['ok']):>4}{r['makespan']:>9.2f}s{r['makespan'] / ideal:>8.3f}"
            f"{r['polls_per_task']:>12.2f}{r['polls_per_task'] / base['polls_per_task']:>10.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--speed", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    anyio.run(main, args.prompts, args.speed, args.seed)
