"""Cap discovery: 24 tasks configured, 12 allowed; 429s per task and the makespan they cost.

    .venv/bin/python benchmarks/cap_discovery.py [--n 240] [--allowed 12] [--speed 3] [--seed 1]

The simulator allows ``--allowed`` active tasks (``SimulatorConfig(active_limit=12)``)
while the clients are configured for 24, as when another process shares the key or the
plan is smaller. Every run sees the same planned durations (lognormal, median 3 s,
sigma 0.5) in acceptance order. Rows:

- flux_async told the real cap (``max_active=12``): the yardstick, no 429 expected;
- flux_async configured for 24 (default adaptive window, 30 s quiet period);
- flux_async configured for 24 with ``adaptive_limit=False`` (each refused submit keeps
  its slot and backs off);
- the naive 0.5 s loop told the real cap, and configured for 24 (a refused submit keeps
  its place and retries after 1 s).

Figures: 429s per task (the simulator's count), makespan / ideal FIFO at the allowed
cap, makespan / the known-cap flux_async run, polls per task, mean detection lag.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import anyio
from _clients import run_variant
from _harness import ideal_fifo, lognormal_durations, table

from flux_async._polling._policy import FixedIntervalPolicy

COLUMNS = [
    ("429s / task", "r429", ".3f"),
    ("makespan / ideal", "ratio", ".3f"),
    ("makespan / known cap", "vs_known", ".3f"),
    ("polls / task", "polls", ".2f"),
    ("mean lag (s)", "lag_mean", ".3f"),
]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    durations = lognormal_durations(args.n, args.seed)
    ideal = ideal_fifo(durations, args.allowed)
    print(
        f"N={args.n}, {args.allowed} allowed, 24 configured; durations lognormal(median 3 s, "
        f"sigma 0.5) seed {args.seed}; ideal FIFO makespan {ideal:.2f} s at cap "
        f"{args.allowed}; clock at {args.speed:g}x real time"
    )
    sim = {"image_bytes": 0, "active_limit": args.allowed}
    naive = FixedIntervalPolicy(0.5)
    runs: list[tuple[str, dict[str, Any]]] = [
        (f"flux_async, cap known ({args.allowed})", {"cap": args.allowed}),
        ("flux_async, 24 configured (adaptive)", {"cap": 24}),
        ("flux_async, 24 configured, adaptive off", {"cap": 24, "adaptive_limit": False}),
        (f"naive 0.5 s loop, cap known ({args.allowed})", {"cap": args.allowed, "policy": naive}),
        ("naive 0.5 s loop, 24 configured", {"cap": 24, "policy": naive}),
    ]
    rows = []
    known = None
    for name, how in runs:
        wall = time.perf_counter()
        run = await run_variant(name, args.speed, durations, sim=sim, **how)
        figures = run.figures(ideal)
        if known is None:
            known = figures["makespan"]
        figures["vs_known"] = figures["makespan"] / known
        rows.append((name, figures))
        print(
            f"  {name}: {figures['ok']:.0f} ok in {time.perf_counter() - wall:.1f} s real",
            flush=True,
        )
    print()
    print(table(rows, COLUMNS))
    return {
        "n": args.n,
        "allowed": args.allowed,
        "speed": args.speed,
        "seed": args.seed,
        "ideal": ideal,
        "rows": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--allowed", type=int, default=12)
    parser.add_argument("--speed", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    result = anyio.run(main, arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
