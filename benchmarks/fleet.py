"""A fleet of 3 processes on one key: coordinated through Redis, beside uncoordinated.

    python benchmarks/fleet.py [--speed 5] [--json benchmarks/results/fleet.json]

3 processes x 40 prompts, cap 12 (the simulator's active-task limit), planned durations
lognormal with median 2 s (sigma 0.5, seed 13). Variants, in one run: the uncoordinated
fleet (each process believes it owns the cap; the adaptive window finds its share from
429s), the fleet on one redis-server, and the fleet with one process SIGKILLed once it
has finished a third of its prompts. Figures: 429s per task, makespan / ideal FIFO over
the fleet's tasks (``_harness.ideal_fifo``), the spread of the processes' finish times
((latest - earliest) / latest), and for the killed variant what became of its paid tasks.

Each worker is this file run as ``fleet.py worker JSON`` in its own process, on the
benchmark's :class:`_clock.SharedClock`; it waits for ``go`` on stdin so that process
start-up stays out of the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from _clock import SharedClock
from _harness import ideal_fifo, lognormal_durations, simulator, table

PROCESSES = 3
PROMPTS = 40
CAP = 12


async def worker(options: dict[str, Any]) -> None:
    """One process of the fleet (run by the benchmark, not by hand)."""
    from flux_async import AsyncFlux, Coordinator
    from flux_async.testing import FAKE_API_KEY

    clock = SharedClock(options["speed"], epoch=options["epoch"])
    coordinator = None
    if options["redis"]:
        coordinator = Coordinator(options["redis"], heartbeat=1.0, ttl=5.0, timeout=2.0)
    out = Path(options["out"])
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    trace: dict[str, Any] = {"seen": {}, "polls": 0, "throughput_polls": 0}
    regime: list[Any] = []

    def hook(event: Any) -> None:
        # What the analysis needs: when each task's end was seen, and in which regime
        # the polls were spent.
        kind = type(event).__name__
        if kind == "TaskReady":
            trace["seen"][event.task_id] = event.at
        elif kind == "TaskPolled" and regime:
            trace["polls"] += 1
            trace["throughput_polls"] += regime[0]() == "throughput"

    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=options["base_url"],
        clock=clock,
        max_active=CAP,
        coordinator=coordinator,
        orphan_dir=out.parent / "orphans",
        drain_timeout=120.0,
        event_hooks=[hook],
    ) as flux:
        # The regime each poll was planned in (a private door, for the analysis only).
        policy: Any = getattr(flux, "_policy", None)
        if policy is not None and hasattr(policy, "regime"):
            regime.append(policy.regime)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        done = 0
        async for outcome in flux.generate_many(
            [f"{options['name']}-{n}" for n in range(PROMPTS)], output_dir=out
        ):
            done += outcome.error is None
            print(f"progress {done}", flush=True)
        print(f"done {clock.monotonic()!r} {done}", flush=True)
        print(f"trace {json.dumps(trace)}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # stay to adopt, until told to go
        stats = flux.statistics()
        adopted = stats.orphans.saved if stats.orphans is not None else 0
        print(f"adopted {adopted}", flush=True)


class Proc:
    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in complete]

    def last(self, prefix: str) -> str | None:
        found = [line for line in self.lines if line.startswith(prefix)]
        return found[-1] if found else None

    async def wait_for(self, prefix: str) -> str:
        while (line := self.last(prefix)) is None:
            if self.process.returncode is not None:
                raise RuntimeError(f"worker exited early: {self.lines[-5:]}")
            await anyio.sleep(0.01)
        return line


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly"]
    args += ["no", "--dir", str(folder)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise SystemExit("redis-server did not start")


async def run_variant(
    name: str, speed: float, durations: list[float], folder: Path, *, redis: str | None, kill: bool
) -> dict[str, Any]:
    clock = SharedClock(speed)
    out = folder / name
    async with (
        simulator(clock, durations, active_limit=CAP, image_bytes=4096) as sim,
        anyio.create_task_group() as tg,
    ):
        procs: list[Proc] = []
        for index in range(PROCESSES):
            options = {
                "speed": speed,
                "epoch": clock.epoch,
                "redis": redis,
                "base_url": sim.base_url,
                "out": str(out / f"w{index}"),
                "name": f"w{index}",
            }
            command = [sys.executable, __file__, "worker", json.dumps(options)]
            proc = Proc(await anyio.open_process(command, stderr=None))
            procs.append(proc)
            tg.start_soon(proc.read)
        for proc in procs:
            await proc.wait_for("ready")
        start = clock.monotonic()
        for proc in procs:
            assert proc.process.stdin is not None
            await proc.process.stdin.send(b"go\n")
        victim_saved_at_kill, killed_at = 0, 0.0
        if kill:
            while int((procs[0].last("progress") or "progress 0").split()[1]) < PROMPTS // 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            killed_at = clock.monotonic()
            procs[0].process.send_signal(signal.SIGKILL)
            await procs[0].process.wait()
            victim_saved_at_kill = int((procs[0].last("progress") or "progress 0").split()[1])
        alive = procs[1:] if kill else procs
        finishes = []
        for proc in alive:
            finishes.append(float((await proc.wait_for("done")).split()[1]) - start)
        stats = await sim.stats()
        if kill:
            # Give the survivors time to adopt and save the victim's paid tasks.
            deadline = clock.monotonic() + 60.0 * speed
            while clock.monotonic() < deadline:
                stats = await sim.stats()
                paid = sum(1 for p in stats["prompts"].values() if p.startswith("w0-"))
                if len(list((out / "w0").glob("*.jpeg"))) >= paid:
                    break
                await anyio.sleep(0.2)
        for proc in alive:
            assert proc.process.stdin is not None
            await proc.process.stdin.aclose()
            await proc.process.wait()
        adopted = sum(int((p.last("adopted") or "adopted 0").split()[1]) for p in alive)
        traces = [json.loads((p.last("trace ") or "trace {}")[6:]) for p in alive]
        tg.cancel_scope.cancel()
    tasks = len(stats["tasks"])
    ideal = ideal_fifo(durations[:tasks], CAP)
    result: dict[str, Any] = {
        "variant": name,
        "tasks": tasks,
        "rejected_429": stats["rejected_429"],
        "429_per_task": stats["rejected_429"] / max(1, tasks),
        "max_active_seen": stats["max_active_seen"],
        "makespan": max(finishes),
        "ideal_fifo": ideal,
        "makespan_over_ideal": max(finishes) / ideal,
        "finish_spread": (max(finishes) - min(finishes)) / max(finishes),
        "finishes": finishes,
    }
    result |= lag_figures(stats, traces, start)
    if kill:
        result |= {
            "victim_saved_before_kill": victim_saved_at_kill,
            "victim_paid_tasks": sum(1 for p in stats["prompts"].values() if p.startswith("w0-")),
            "victim_images_saved": len(list((out / "w0").glob("*.jpeg"))),
            "victim_orphans_saved": len(list((out / "orphans").glob("*.jpeg"))),
            # A paid task with no image: when it was submitted, against the kill (a
            # submit answered in the last instant before the kill has no record).
            "victim_unsaved_submitted_before_kill": [
                round(killed_at - v["submitted_at"], 4)
                for t, v in stats["tasks"].items()
                if stats["prompts"][t].startswith("w0-")
                and not saved_as(out / "w0", stats["prompts"][t])
            ],
            "adopted_by_survivors": adopted,
        }
    return result


def saved_as(folder: Path, prompt: str) -> bool:
    """Whether ``folder`` holds the image of ``prompt`` (``NAME-i``: item ``i``), whether
    its worker saved it (``{i:05d}.jpeg``, ``generate_many``'s name) or an adopter did
    (the name the record gave)."""
    return (folder / f"{int(prompt.rsplit('-', 1)[1]):05d}.jpeg").exists()


def lag_figures(
    stats: dict[str, Any], traces: list[dict[str, Any]], start: float
) -> dict[str, Any]:
    """Where the makespan goes: detection lag, slot idle time, polls and their regime.

    ``detect_lag``: seconds from a task's end (the server's ``end_at``) to the client
    seeing it Ready (``_first``: over the first 12 endings, the cold start).
    ``idle_per_task``: slot-seconds the server had a free slot while
    work was left to submit (from the first submit to the last), per task; of which
    ``idle_unseen`` is a slot whose task had ended unseen, the rest ``idle_seen`` a slot
    seen free and not yet submitted again (the limiter, the fleet's queue, the submit).
    """
    tasks = stats["tasks"]
    seen: dict[str, float] = {}
    for trace in traces:
        seen |= trace.get("seen", {})
    lags = sorted(seen[t] - v["end_at"] for t, v in tasks.items() if t in seen)
    # The cold start: the first CAP endings, before any process has learned much.
    by_end = sorted((v["end_at"], t) for t, v in tasks.items() if t in seen)
    first = [seen[t] - end for end, t in by_end[:CAP]]
    last_submit = max(v["submitted_at"] for v in tasks.values())
    moments = sorted(
        [(v["submitted_at"], 1) for v in tasks.values()]
        + [(v["end_at"], -1) for v in tasks.values()]
    )
    idle, active, previous = 0.0, 0, start
    for moment, step in moments:
        if moment > last_submit:
            break
        idle += max(0, CAP - active) * (moment - max(previous, start))
        previous, active = max(moment, start), active + step
    unseen = sum(
        min(seen.get(t, v["end_at"]), last_submit) - v["end_at"]
        for t, v in tasks.items()
        if v["end_at"] < last_submit
    )
    polls = sum(t.get("polls", 0) for t in traces)
    return {
        "detect_lag_mean": sum(lags) / max(1, len(lags)),
        "detect_lag_p90": lags[int(0.9 * (len(lags) - 1))] if lags else 0.0,
        "detect_lag_first": sum(first) / max(1, len(first)),
        "idle_per_task": idle / len(tasks),
        "idle_unseen_per_task": unseen / len(tasks),
        "idle_seen_per_task": (idle - unseen) / len(tasks),
        "polls_per_task": sum(stats["polls_by_task"].values()) / len(tasks),
        "throughput_poll_share": sum(t.get("throughput_polls", 0) for t in traces) / max(1, polls),
    }


async def main(args: argparse.Namespace) -> None:
    durations = lognormal_durations(PROCESSES * PROMPTS, seed=13, median=2.0, sigma=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_process, url = start_redis(folder)
        try:
            results = [
                await run_variant(
                    "uncoordinated", args.speed, durations, folder, redis=None, kill=False
                ),
                await run_variant("redis", args.speed, durations, folder, redis=url, kill=False),
                await run_variant(
                    "redis, 1 killed", args.speed, durations, folder, redis=url, kill=True
                ),
            ]
        finally:
            redis_process.kill()
            redis_process.wait()
    columns = [
        ("429s per task", "429_per_task", ".3f"),
        ("makespan / ideal FIFO", "makespan_over_ideal", ".3f"),
        ("finish spread", "finish_spread", ".3f"),
        ("max active seen", "max_active_seen", "d"),
        ("detection lag (s)", "detect_lag_mean", ".3f"),
        ("lag p90 (s)", "detect_lag_p90", ".3f"),
        ("lag, first 12 (s)", "detect_lag_first", ".3f"),
        ("idle slot-s / task: unseen", "idle_unseen_per_task", ".3f"),
        ("seen, not resubmitted", "idle_seen_per_task", ".3f"),
        ("polls / task", "polls_per_task", ".2f"),
        ("throughput polls", "throughput_poll_share", ".2f"),
    ]
    print(table([(r["variant"], r) for r in results], columns))
    for result in results:
        if "victim_paid_tasks" in result:
            print({k: v for k, v in result.items() if k.startswith(("victim", "adopted"))})
    if args.json:
        text = json.dumps(results, indent=2) + "\n"
        await anyio.Path(args.json).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        anyio.run(worker, json.loads(sys.argv[2]))
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--speed", type=float, default=5.0)
        parser.add_argument("--json", help="write the figures to this file")
        anyio.run(main, parser.parse_args())
