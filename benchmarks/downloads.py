"""Downloads: 24 x 20 MB images streaming, and deadline-first order under a squeeze.

    .venv/bin/python benchmarks/downloads.py [--n 24] [--mb 20] [--seed 1] [--repeat 3]

Part 1, streaming: ``--n`` tasks (cap 24, durations lognormal median 3 s, sigma 0.5)
whose images are ``--mb`` MB each, served by the loopback simulator in a child process,
in real time (speed 1: the figures are about real bytes and the real event loop).
Rows: flux_async with its default 8 concurrent downloads; flux_async with 24; the naive
client (``response.content``, then a blocking ``write_bytes``). Figures: download start
delay (the simulator's first request for the image minus the client's Ready; p50, p99),
event-loop lag p99 while images stream (a 5 ms ticker's oversleep, from the first image
request to the last file in place), client peak-RSS growth, seconds from the first Ready
to the last file in place. Each row is the median of ``--repeat`` runs.

Part 2, squeeze: 8 "old" results whose URLs have ~20 s left and 24 fresh ones with ~35 s
left are all handed to ``save()`` at once, fresh first, with 4 downloads allowed at a
time and each image taking 4 s to deliver (``slow_delivery_seconds``): 32 s of
downloading, so the old URLs lapse unless the nearest deadlines go first. Rows:
flux_async (its earliest-deadline-first gate), and the same client fed first come first
served (a FIFO semaphore of 4 in front, so its gate never has a choice). Figures: images
saved, URLs expired before their download started. Speed 4.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from _clients import MODEL, run_variant
from _clock import SharedClock
from _harness import Run, lognormal_durations, percentile, simulator, table

from flux_async import AsyncFlux, FluxError, TaskResult
from flux_async._polling._policy import FixedIntervalPolicy
from flux_async.testing import FAKE_API_KEY

STREAM_COLUMNS = [
    ("start delay p50 (s)", "start_p50", ".3f"),
    ("start delay p99 (s)", "start_p99", ".3f"),
    ("loop lag p99 (ms)", "loop_p99", ".1f"),
    ("RSS growth (MiB)", "rss_mib", ".1f"),
    ("first Ready to last saved (s)", "span", ".2f"),
]
SQUEEZE_COLUMNS = [
    ("saved", "saved", ".0f"),
    ("expired", "expired", ".0f"),
]


def stream_figures(run: Run) -> dict[str, float]:
    started = run.server["delivery_started"]
    delays = [started[tid] - at for tid, at in run.detected.items() if tid in started]
    first_request = min(started.values())
    last_saved = max(run.saved.values())
    if run.clock is None:
        raise RuntimeError("the run has no clock")
    # The ticker runs on real time: map the streaming window back onto it.
    since, until = run.clock.real(first_request), run.clock.real(last_saved)
    return {
        "start_p50": percentile(delays, 0.5),
        "start_p99": percentile(delays, 0.99),
        "loop_p99": 1000.0 * run.meter.lag_p99(since, until),
        "rss_mib": run.meter.rss_growth / 2**20,
        "span": last_saved - min(run.detected.values()),
        "ok": float(len(run.saved)),
    }


async def streaming(args: argparse.Namespace) -> list[tuple[str, dict[str, float]]]:
    durations = lognormal_durations(args.n, args.seed)
    sim = {"image_bytes": args.mb * 1_000_000, "active_limit": 24}
    runs: list[tuple[str, dict[str, Any]]] = [
        ("flux_async (8 downloads at a time)", {}),
        ("flux_async (24 at a time)", {"max_downloads": 24}),
        ("naive: response.content + write_bytes", {"policy": FixedIntervalPolicy(0.5)}),
    ]
    rows = []
    for name, how in runs:
        samples = []
        for _ in range(args.repeat):
            wall = time.perf_counter()
            run = await run_variant(name, 1.0, durations, sim=sim, **how)
            samples.append(stream_figures(run))
            print(f"  {name}: {len(run.saved)} saved in {time.perf_counter() - wall:.1f} s real")
        # The median of the repeats: the loop-lag tail is sensitive to whatever else the
        # machine runs at the time.
        rows.append((name, {key: statistics.median(f[key] for f in samples) for key in samples[0]}))
    return rows


async def squeeze_once(name: str, fifo: bool, speed: float) -> dict[str, float]:
    """Run the squeeze scenario once; ``fifo`` puts a FIFO semaphore before ``save()``."""
    clock = SharedClock(speed)
    old, fresh = 8, 24
    durations = [1.0] * old + [15.0] * fresh
    sim: dict[str, Any] = {
        # The simulator sleeps slow_delivery_seconds after each part of the body (8 parts
        # for a 60 kB JPEG, whatever its length says): 8 x 0.5 s = 4 s per image.
        "image_bytes": 60_000,
        "url_lifetime": 35.0,
        "slow_delivery_seconds": 0.5,
        "active_limit": 64,
    }
    saved = expired = 0
    async with simulator(clock, durations, **sim) as server:
        with tempfile.TemporaryDirectory() as out:
            async with AsyncFlux(
                api_key=FAKE_API_KEY,
                base_url=server.base_url,
                clock=clock,
                max_active=64,
                max_downloads=4,
            ) as flux:
                tasks = [await flux.submit(model=MODEL, prompt=f"squeeze {i}") for i in range(old)]
                await clock.sleep(0.5)
                tasks += [
                    await flux.submit(model=MODEL, prompt=f"squeeze {i}")
                    for i in range(old, old + fresh)
                ]
                results: list[TaskResult] = [await flux.wait(t) for t in tasks]
                gate = anyio.Semaphore(4) if fifo else None

                async def save(index: int, result: TaskResult) -> None:
                    nonlocal saved, expired
                    try:
                        if gate is None:
                            await flux.save(result, Path(out) / f"{index:03d}")
                        else:
                            async with gate:
                                await flux.save(result, Path(out) / f"{index:03d}")
                        saved += 1
                    except FluxError:
                        expired += 1

                async with anyio.create_task_group() as tg:
                    # Fresh first: the order in which a FIFO hurts the old ones most.
                    for index in [*range(old, old + fresh), *range(old)]:
                        tg.start_soon(save, index, results[index])
                        await anyio.lowlevel.checkpoint()
    print(f"  {name}: {saved} saved, {expired} expired")
    return {"saved": float(saved), "expired": float(expired)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"Part 1: {args.n} x {args.mb} MB images, cap 24, durations lognormal(median 3 s, "
        f"sigma 0.5) seed {args.seed}, real time"
    )
    stream_rows = await streaming(args)
    print()
    print(table(stream_rows, STREAM_COLUMNS))
    print("\nPart 2: 8 old + 24 fresh results, 4 downloads at a time, 4 s per image, speed 4")
    squeeze_rows = [
        ("flux_async (earliest deadline first)", await squeeze_once("EDF", False, 4.0)),
        ("flux_async fed first come first served", await squeeze_once("FIFO", True, 4.0)),
    ]
    print()
    print(table(squeeze_rows, SQUEEZE_COLUMNS))
    return {"n": args.n, "mb": args.mb, "stream": stream_rows, "squeeze": squeeze_rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--mb", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="part 1 runs per row (median)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    result = anyio.run(main, arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))
