"""Large images on a shared link: do downloads hold back submissions?

    .venv/bin/python benchmarks/pipeline.py [--n 120] [--mb 6] [--link 60] [--repeat 1]

``--n`` prompts (flux-dev, catalog prior 4 s) whose generations take about 1.5 s
(lognormal median 1.5 s, sigma 0.3), cap 24, images of ``--mb`` MB, every image body
sharing one ``--link`` MB/s delivery link (the simulator paces the bytes), in real time
(speed 1: the figures are about real bytes and the real event loop). Rows:
flux_async's ``generate_many`` with its defaults; the naive 0.5 s loop, a fixed 1 s
loop and BFL's reference schedule, each releasing its slot at Ready and then
downloading the whole body (``response.content`` + ``write_bytes``). Figures: makespan
(first submit to last file in place), its ratio to the naive loop's in the same round,
client peak-RSS growth, CPU per task. ``--repeat`` races all rows that many times.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import anyio
from _clients import run_variant
from _harness import Run, table

from flux_async._polling._policy import FixedIntervalPolicy, ReferencePolicy

COLUMNS = [
    ("makespan (s)", "makespan", ".2f"),
    ("makespan / naive's", "vs_naive", ".3f"),
    ("RSS growth (MiB)", "rss_mib", ".1f"),
    ("CPU / task (ms)", "cpu_ms", ".1f"),
    ("saved", "ok", ".0f"),
]
ROWS: list[tuple[str, dict[str, Any]]] = [
    ("flux_async generate_many", {"many": True}),
    ("naive 0.5 s loop", {"policy": FixedIntervalPolicy(0.5)}),
    ("fixed 1 s loop", {"policy": FixedIntervalPolicy(1.0)}),
    ("BFL reference (1 s x1.5 to 5 s)", {"policy": ReferencePolicy()}),
]


def figures(run: Run) -> dict[str, float]:
    return {
        "makespan": run.saved_makespan(),
        "rss_mib": run.meter.rss_growth / 2**20,
        "cpu_ms": 1000.0 * run.meter.cpu / run.n,
        "ok": float(len(run.saved)),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    durations = [rng.lognormvariate(math.log(1.5), 0.3) for _ in range(args.n)]
    floor = args.n * args.mb / args.link
    print(
        f"{args.n} x {args.mb} MB, cap 24, generations lognormal(median 1.5 s, sigma 0.3), "
        f"one {args.link:g} MB/s link for every image body (its floor: {floor:.1f} s), "
        "real time"
    )
    sim = {"image_bytes": args.mb * 1_000_000, "active_limit": 24, "delivery_mb_s": args.link}
    rounds = []
    for attempt in range(args.repeat):
        rows = []
        for name, how in ROWS:
            wall = time.perf_counter()
            run = await run_variant(name, 1.0, durations, sim=sim, **how)
            rows.append((name, figures(run)))
            print(
                f"  round {attempt + 1} / {name}: {len(run.saved)} saved in "
                f"{time.perf_counter() - wall:.1f} s real",
                flush=True,
            )
        naive = dict(rows)["naive 0.5 s loop"]["makespan"]
        for _, row in rows:
            row["vs_naive"] = row["makespan"] / naive
        print()
        print(table(rows, COLUMNS))
        print()
        rounds.append(rows)
    ratios = [dict(rows)["flux_async generate_many"]["vs_naive"] for rows in rounds]
    rss = [dict(rows)["flux_async generate_many"]["rss_mib"] for rows in rounds]
    print(
        f"flux_async makespan / naive's: {min(ratios):.3f}-{max(ratios):.3f} over "
        f"{len(ratios)} round(s) (target <= 1.05); RSS growth {min(rss):.1f}-{max(rss):.1f} "
        "MiB (target <= 100)"
    )
    return {"n": args.n, "mb": args.mb, "link": args.link, "rounds": rounds}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--mb", type=int, default=6)
    parser.add_argument("--link", type=float, default=60.0, help="MB/s shared by all images")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    result = anyio.run(main, arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
