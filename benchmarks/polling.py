"""Polling: makespan, polls per task and detection lag, flux_async beside the usual loops.

    .venv/bin/python benchmarks/polling.py [--n 240] [--cap 24] [--speed 2] [--seed 1]

N prompts (flux-dev, whose catalog prior is a 4 s median) against the loopback simulator
in a child process, every task's duration planned from one seeded lognormal (median
3 s, sigma 0.5), so every client sees the same durations in acceptance order. Rows:

- flux_async, default settings (hazard-shaped polls learned per model, progress used);
- flux_async with the simulator's ``progress`` switched off (BFL does not promise it);
- the naive client: one loop per task polling every 0.5 s (BFL's examples);
- a fixed 1 s loop; BFL's reference schedule (1 s, then x1.5 up to 5 s).

Figures: makespan / ideal FIFO (zero lag, zero RTT, same durations and cap), polls per
task, mean and p95 detection lag (Ready seen minus the simulator's end), 429s per task,
client CPU per task (tiny images), client peak-RSS growth. Times are simulated seconds;
client and simulator share one clock running ``--speed`` times real time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from _clients import run_variant
from _clock import SharedClock
from _harness import ideal_fifo, lognormal_durations, simulator, table

from flux_async._polling._policy import FixedIntervalPolicy, ReferencePolicy

COLUMNS = [
    ("makespan / ideal", "ratio", ".3f"),
    ("polls / task", "polls", ".2f"),
    ("mean lag (s)", "lag_mean", ".3f"),
    ("p95 lag (s)", "lag_p95", ".3f"),
    ("429s / task", "r429", ".2f"),
    ("CPU / task (ms)", "cpu_ms", ".2f"),
    ("RSS growth (MiB)", "rss_mib", ".1f"),
]


async def loopback_rtt(base_url: str, samples: int = 100) -> tuple[float, float]:
    """Return the median real seconds of one poll round trip, and CPU seconds per poll.

    A bare ``httpx.AsyncClient`` polling one after another: the floor any client built
    on httpx pays per request on this machine.
    """
    times = []
    async with httpx.AsyncClient() as http:
        await http.get(f"{base_url}/v1/get_result", params={"id": "warm-up"})
        cpu = time.process_time()
        for _ in range(samples):
            start = time.perf_counter()
            await http.get(f"{base_url}/v1/get_result", params={"id": "rtt"})
            times.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu
    return statistics.median(times), cpu / samples


async def main(args: argparse.Namespace) -> dict[str, Any]:
    durations = lognormal_durations(args.n, args.seed)
    ideal = ideal_fifo(durations, args.cap)
    clock = SharedClock(args.speed)
    async with simulator(clock, []) as server:
        rtt, request_cpu = await loopback_rtt(server.base_url)
    print(
        f"N={args.n}, cap {args.cap}, durations lognormal(median 3 s, sigma 0.5) seed "
        f"{args.seed}: mean {statistics.fmean(durations):.2f} s, ideal FIFO makespan "
        f"{ideal:.2f} s; clock at {args.speed:g}x real time; loopback poll RTT "
        f"{rtt * 1000:.2f} ms real = {rtt * args.speed * 1000:.1f} ms simulated; a bare "
        f"httpx client spends {request_cpu * 1000:.2f} ms CPU per poll"
    )
    runs: list[tuple[str, bool, dict[str, Any]]] = [
        ("flux_async (default)", True, {}),
        ("flux_async, no progress", False, {}),
        ("naive 0.5 s loop", True, {"policy": FixedIntervalPolicy(0.5)}),
        ("fixed 1 s loop", True, {"policy": FixedIntervalPolicy(1.0)}),
        ("BFL reference (1 s x1.5 to 5 s)", True, {"policy": ReferencePolicy()}),
    ]
    sim = {"image_bytes": 0, "active_limit": args.cap}
    rows = []
    for name, progress, how in runs:
        wall = time.perf_counter()
        run = await run_variant(
            name, args.speed, durations, sim=sim, progress=progress, cap=args.cap, **how
        )
        figures = run.figures(ideal)
        rows.append((name, figures))
        print(
            f"  {name}: {figures['ok']:.0f} ok in {time.perf_counter() - wall:.1f} s real",
            flush=True,
        )
    print()
    print(table(rows, COLUMNS))
    naive = dict(rows)["naive 0.5 s loop"]
    best = dict(rows)["flux_async (default)"]
    print(
        f"\nflux_async polls / naive polls: {best['polls'] / naive['polls']:.2f} "
        f"(target <= 0.40); without progress: "
        f"{dict(rows)['flux_async, no progress']['polls'] / naive['polls']:.2f}"
    )
    return {
        "n": args.n,
        "cap": args.cap,
        "speed": args.speed,
        "seed": args.seed,
        "ideal": ideal,
        "rtt_real_s": rtt,
        "request_cpu_s": request_cpu,
        "rows": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--cap", type=int, default=24)
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    result = anyio.run(main, arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
