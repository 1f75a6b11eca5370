"""Polling without progress, in both regimes: slots the backlog waits for, and spare slots.

    .venv/bin/python benchmarks/regimes.py [--speed 2] [--inflight-speed 1] [--seed 1]
        [--only capbound|inflight] [--polling "" throughput frugal] [--repeat 1]

BFL does not promise ``progress`` in Pending replies; here the simulator sends none.
Two workloads, each with flux_async beside the naive 0.5 s loop, a fixed 1 s loop and
BFL's reference schedule (1 s, then x1.5 up to 5 s), measured in the same run:

- cap-bound: 240 x flux-2-pro (catalog prior: 6 s median), durations lognormal(median
  3 s, sigma 0.5), cap 24. Submissions wait for slots, so every second of detection lag
  is a slot-second lost. Figures: makespan / ideal FIFO, polls per task, lag.
- in flight: 120 prompts alternating flux-2-klein-4b (median 1 s) and flux-2-max
  (median 6 s; prior 10 s), sigma 0.4, cap 120: every task in flight at once, nothing
  waits for a slot. Figures: polls per task (and as a fraction of the 0.5 s loop's),
  mean and p95 lag, mean lag per model.

Times are simulated seconds; client and simulator share one clock at ``--speed`` (the
in-flight workload at ``--inflight-speed``, real time by default: 120 loops polling
every 0.5 s already make the naive client's timers run late on a busy 2-core machine).
``--repeat`` races every row that many times; the tables then show each figure's
median and the summary its range.
``--polling`` runs flux_async once per listed mode (``AsyncFlux(polling=...)``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
from _clients import run_variant
from _harness import ideal_fifo, lognormal_durations, table

from flux_async._polling._policy import FixedIntervalPolicy, ReferencePolicy

CAPBOUND_COLUMNS = [
    ("makespan / ideal", "ratio", ".3f"),
    ("polls / task", "polls", ".2f"),
    ("polls / naive's", "polls_x", ".2f"),
    ("mean lag (s)", "lag_mean", ".3f"),
    ("p95 lag (s)", "lag_p95", ".3f"),
    ("CPU / task (ms)", "cpu_ms", ".2f"),
]
INFLIGHT_COLUMNS = [
    ("polls / task", "polls", ".2f"),
    ("polls / naive's", "polls_x", ".2f"),
    ("mean lag (s)", "lag_mean", ".3f"),
    ("p95 lag (s)", "lag_p95", ".3f"),
    ("klein lag (s)", "lag_klein", ".3f"),
    ("max lag (s)", "lag_max", ".3f"),
    ("CPU / task (ms)", "cpu_ms", ".2f"),
]
BASELINES: list[tuple[str, dict[str, Any]]] = [
    ("naive 0.5 s loop", {"policy": FixedIntervalPolicy(0.5)}),
    ("fixed 1 s loop", {"policy": FixedIntervalPolicy(1.0)}),
    ("BFL reference (1 s x1.5 to 5 s)", {"policy": ReferencePolicy()}),
]


def flux_rows(modes: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Return one flux_async row per polling mode ("" is the client's default)."""
    return [
        (f"flux_async (polling={mode!r})" if mode else "flux_async (default)", _mode(mode))
        for mode in modes
    ]


def _mode(mode: str) -> dict[str, Any]:
    return {"polling": mode} if mode else {}


def with_ratio_to_naive(rows: list[tuple[str, dict[str, float]]]) -> None:
    """Add ``polls_x``: each row's polls per task over the naive loop's in the same run."""
    naive = dict(rows)["naive 0.5 s loop"]["polls"]
    for _, figures in rows:
        figures["polls_x"] = figures["polls"] / naive


async def race(
    title: str,
    durations: list[float],
    ideal: float,
    cap: int,
    args: argparse.Namespace,
    models: list[str] | None = None,
    speed: float = 2.0,
) -> list[tuple[str, dict[str, float]]]:
    rows = []
    sim = {"image_bytes": 0, "active_limit": cap}
    for name, how in [*flux_rows(args.polling), *BASELINES]:
        wall = time.perf_counter()
        run = await run_variant(
            name, speed, durations, sim=sim, progress=False, cap=cap, models=models, **how
        )
        figures = run.figures(ideal)
        for model, lags in run.lags_by_model().items():
            short = "klein" if "klein" in model else "max" if model.endswith("max") else model
            figures[f"lag_{short}"] = statistics.fmean(lags)
        rows.append((name, figures))
        print(
            f"  {title} / {name}: {figures['ok']:.0f} ok in "
            f"{time.perf_counter() - wall:.1f} s real",
            flush=True,
        )
    with_ratio_to_naive(rows)
    return rows


def inflight_workload(n: int, seed: int) -> tuple[list[float], list[str]]:
    """Return durations and models: alternating klein (median 1 s) and max (6 s), sigma 0.4."""
    rng = random.Random(seed)
    models = ["flux-2-klein-4b" if i % 2 == 0 else "flux-2-max" for i in range(n)]
    medians = {"flux-2-klein-4b": 1.0, "flux-2-max": 6.0}
    durations = [rng.lognormvariate(math.log(medians[m]), 0.4) for m in models]
    return durations, models


def summarise(
    rounds: list[list[tuple[str, dict[str, float]]]], keys: list[str]
) -> list[tuple[str, dict[str, float]]]:
    """Return each row's median figures over the rounds; print each key's range per row."""
    rows = []
    for index, (name, _) in enumerate(rounds[0]):
        samples = [r[index][1] for r in rounds]
        rows.append((name, {k: statistics.median(s[k] for s in samples) for k in samples[0]}))
        if len(rounds) > 1:
            spans = ", ".join(
                f"{k} {min(s[k] for s in samples):.3f}-{max(s[k] for s in samples):.3f}"
                for k in keys
            )
            print(f"  range over {len(rounds)} rounds, {name}: {spans}")
    return rows


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"speed": args.speed, "seed": args.seed}
    if args.only in (None, "capbound"):
        durations = lognormal_durations(240, args.seed)
        ideal = ideal_fifo(durations, 24)
        print(
            f"Cap-bound, no progress: 240 x flux-2-pro, cap 24, lognormal(median 3 s, "
            f"sigma 0.5) seed {args.seed}, ideal FIFO {ideal:.2f} s, {args.speed:g}x"
        )
        rounds = [
            await race("cap-bound", durations, ideal, 24, args, ["flux-2-pro"] * 240, args.speed)
            for _ in range(args.repeat)
        ]
        rows = summarise(rounds, ["ratio", "polls_x", "lag_mean", "cpu_ms"])
        print()
        print(table(rows, CAPBOUND_COLUMNS))
        print()
        result["capbound"] = {"ideal": ideal, "rows": rows, "rounds": rounds}
    if args.only in (None, "inflight"):
        durations, models = inflight_workload(120, args.seed)
        print(
            f"All in flight, no progress: 120 alternating flux-2-klein-4b (median 1 s) / "
            f"flux-2-max (median 6 s), sigma 0.4, cap 120, {args.inflight_speed:g}x"
        )
        rounds = [
            await race(
                "in flight", durations, max(durations), 120, args, models, args.inflight_speed
            )
            for _ in range(args.repeat)
        ]
        rows = summarise(rounds, ["polls_x", "lag_mean", "cpu_ms"])
        print()
        print(table(rows, INFLIGHT_COLUMNS))
        result["inflight"] = {"rows": rows, "rounds": rounds}
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--inflight-speed", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", choices=("capbound", "inflight"))
    parser.add_argument(
        "--polling",
        nargs="*",
        default=[""],
        help='flux_async polling modes to run ("" = the default)',
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    outcome = anyio.run(main, arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(outcome, indent=2))
