"""The no-progress regimes with no loop or HTTP cost: the real scheduler on a manual clock.

    .venv/bin/python benchmarks/regimes_model.py [--seeds 3] [--rtt 0.0]

The workloads of ``regimes.py`` (cap-bound: 240 x flux-2-pro, cap 24, lognormal median
3 s sigma 0.5; all in flight: 120 alternating flux-2-klein-4b 1 s / flux-2-max 6 s,
sigma 0.4), run through the library's own :class:`~flux_async._engine._scheduler.Scheduler`
and policies on a :class:`~flux_async.ManualClock`: a poll is answered ``--rtt``
seconds after it is sent, submissions wait FIFO for a slot, and the polling regime sees
those waiters exactly as the client's limiter reports them. No event loop delay, no
CPU contention: the figures are the schedule's own, the same on any machine, and the
floor the live benchmark approaches. Rows: the default client policy
(``polling="auto"``), the pre-regime default (hazard schedule, fixed rate 1.6), the
0.5 s loop, the 1 s loop, BFL's reference schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from _harness import ideal_fifo, table

from flux_async import ManualClock
from flux_async._engine._scheduler import Scheduler
from flux_async._polling._budget import RateBudget
from flux_async._polling._hazard import default_policy
from flux_async._polling._policy import FixedIntervalPolicy, PollPolicy, ReferencePolicy
from flux_async._polling._regime import regime_policy
from flux_async._request._models import PollReply, Task

Workload = tuple[list[str], list[float], int]
COLUMNS = [
    ("makespan / ideal", "ratio", ".3f"),
    ("polls / task", "polls", ".2f"),
    ("polls / naive's", "polls_x", ".2f"),
    ("mean lag (s)", "lag", ".3f"),
]


def capbound(seed: int) -> Workload:
    rng = random.Random(seed)
    return ["flux-2-pro"] * 240, [rng.lognormvariate(math.log(3.0), 0.5) for _ in range(240)], 24


def inflight(seed: int) -> Workload:
    rng = random.Random(seed)
    models = ["flux-2-klein-4b" if i % 2 == 0 else "flux-2-max" for i in range(120)]
    medians = {"flux-2-klein-4b": 1.0, "flux-2-max": 6.0}
    return models, [rng.lognormvariate(math.log(medians[m]), 0.4) for m in models], 120


def policies(waiting: Callable[[], int]) -> list[tuple[str, PollPolicy]]:
    return [
        ("flux_async (polling='auto')", regime_policy(waiting=waiting)),
        ("before: hazard, rate 1.6", default_policy()),
        ("naive 0.5 s loop", FixedIntervalPolicy(0.5)),
        ("fixed 1 s loop", FixedIntervalPolicy(1.0)),
        ("BFL reference (1 s x1.5 to 5 s)", ReferencePolicy()),
    ]


async def settle() -> None:
    """Return once every other task is blocked (yielding, not sleeping a real 0.1 s)."""
    this = asyncio.current_task()
    while True:
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not this and (waiter is None or waiter.done()):
                await asyncio.sleep(0)
                break
        else:
            return


async def run(index: int, workload: Workload, rtt: float) -> tuple[str, dict[str, float]]:
    """Run policy ``index`` of :func:`policies` over ``workload``; return its figures."""
    models, durations, cap = workload
    clock = ManualClock()
    waiting = 0
    name, policy = policies(lambda: waiting)[index]
    ends: dict[str, float] = {}
    polls = 0

    async def poll(task: Task) -> PollReply:
        nonlocal polls
        polls += 1
        sent = clock.monotonic()
        await clock.sleep(rtt)
        if sent + rtt / 2 >= ends[task.id]:
            sample = {"sample": f"https://delivery.sim.invalid/{task.id}.jpeg"}
            return PollReply.model_validate({"id": task.id, "status": "Ready", "result": sample})
        return PollReply(id=task.id, status="Pending")

    scheduler = Scheduler(
        poll, clock=clock, policy=policy, max_concurrent_polls=16, budget=RateBudget(per_task=2.0)
    )
    slots = anyio.Semaphore(cap)
    lags: list[float] = []
    last = 0.0

    async def one(i: int) -> None:
        nonlocal waiting, last
        if slots.value == 0:
            waiting += 1
            try:
                await slots.acquire()
            finally:
                waiting -= 1
        else:
            await slots.acquire()
        now = clock.monotonic()
        task = Task(id=f"t{i}", polling_url=None, model=models[i], provider="bfl", submitted_at=now)
        ends[task.id] = now + durations[i]
        scheduler.add(task)
        result = await scheduler.wait(task)
        lags.append(result.ready_at - ends[task.id])
        last = max(last, result.ready_at)
        slots.release()

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        async with anyio.create_task_group() as tasks:
            for i in range(len(durations)):
                tasks.start_soon(one, i)
            while len(lags) < len(durations):
                await settle()
                deadline = clock.next_deadline
                if deadline is None:
                    break
                clock.advance(max(0.0, deadline - clock.monotonic()))
        tg.cancel_scope.cancel()
    ideal = ideal_fifo(durations, cap)
    return name, {
        "ratio": last / ideal,
        "polls": polls / len(durations),
        "lag": statistics.fmean(lags),
    }


async def race(make: Callable[[int], Workload], seeds: Sequence[int], rtt: float) -> Any:
    rows = []
    for index in range(len(policies(lambda: 0))):
        samples = [await run(index, make(seed), rtt) for seed in seeds]
        name = samples[0][0]
        rows.append((name, {k: statistics.fmean(s[1][k] for s in samples) for k in samples[0][1]}))
    naive = dict(rows)["naive 0.5 s loop"]["polls"]
    for _, figures in rows:
        figures["polls_x"] = figures["polls"] / naive
    return rows


async def main(args: argparse.Namespace) -> None:
    seeds = list(range(1, args.seeds + 1))
    print(f"Model, no progress, round trip {args.rtt:g} s, mean over seeds {seeds}\n")
    print("Cap-bound: 240 x flux-2-pro (catalog guess 6 s), cap 24, lognormal(3 s, 0.5)\n")
    print(table(await race(capbound, seeds, args.rtt), COLUMNS))
    print("\nAll in flight: 120 klein 1 s / max 6 s (guesses 1 s / 10 s), sigma 0.4\n")
    print(table(await race(inflight, seeds, args.rtt), COLUMNS))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rtt", type=float, default=0.0, help="seconds per poll round trip")
    anyio.run(main, parser.parse_args())
