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
import logging
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
    # What became of each task adopted from a dead process: its id -> "saved PATH",
    # "failed ERROR", or "adopted" (not ended when this process left).
    adoptions: dict[str, str] = {}

    class Adoptions(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            for task_id in getattr(record, "task_ids", ()):
                if record.getMessage().startswith("adopted"):
                    adoptions.setdefault(task_id, "adopted")

    logging.getLogger("flux_async").addHandler(Adoptions())

    def hook(event: Any) -> None:
        # What the analysis needs: when each task's end was seen, and in which regime
        # the polls were spent.
        kind = type(event).__name__
        if kind == "TaskSubmitted":
            # The id is known here, before its record is written (the kill's window).
            print(f"submitted {event.task_id} {clock.monotonic()!r}", flush=True)
        elif kind == "TaskReady":
            trace["seen"][event.task_id] = event.at
        elif kind == "ImageSaved" and event.task_id in adoptions:
            adoptions[event.task_id] = f"saved {event.path}"
        elif kind == "TaskFailed" and event.task_id in adoptions:
            adoptions[event.task_id] = f"failed {event.error}: {event.detail}"
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
        # When each task's fleet record reached Redis (the end of the kill's window).
        registry: Any = getattr(getattr(flux, "_fleet", None), "registry", None)
        if registry is not None:
            write_now = registry._write_now

            async def timed_write(record: dict[str, str]) -> None:
                await write_now(record)
                print(f"recorded {record['id']} {clock.monotonic()!r}", flush=True)

            registry._write_now = timed_write
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
    print(f"adoptions {json.dumps(adoptions)}", flush=True)


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
    name: str,
    speed: float,
    durations: list[float],
    folder: Path,
    *,
    redis: str | None,
    kill: bool,
    kill_on: str = "progress",
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
            if kill_on == "submit":
                # Aim at the window: kill the moment the victim learns a new task's id.
                seen = sum(line.startswith("submitted ") for line in procs[0].lines)
                while sum(line.startswith("submitted ") for line in procs[0].lines) == seen:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
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
                # A record stays in Redis until its image is saved: with none left, a
                # missing image was never recorded and is not coming.
                if redis and not await leftover_records(redis):
                    break
                await anyio.sleep(0.2)
        for proc in alive:
            assert proc.process.stdin is not None
            await proc.process.stdin.aclose()
            await proc.process.wait()
        adopted = sum(int((p.last("adopted") or "adopted 0").split()[1]) for p in alive)
        adoptions: dict[str, str] = {}
        for p in alive:
            adoptions |= json.loads((p.last("adoptions ") or "adoptions {}")[10:])
        known, recorded = times(procs[0], "submitted "), times(procs[0], "recorded ")
        window = record_window(
            stats, [times(p, "submitted ") for p in procs], [times(p, "recorded ") for p in procs]
        )
        records = await leftover_records(redis) if kill and redis else set()
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
    if redis:
        result |= window
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
            # Why each was lost: did the victim learn its id (and when, against the
            # kill), does Redis still hold its record, did a survivor adopt it (and what
            # became of it).
            "victim_unsaved": [
                {
                    "task": t,
                    "server_created_before_kill": round(killed_at - v["submitted_at"], 4),
                    "id_known_before_kill": (
                        round(killed_at - known[t], 4) if t in known else None
                    ),
                    "recorded_before_kill": (
                        round(killed_at - recorded[t], 4) if t in recorded else None
                    ),
                    "record_left_in_redis": t in records,
                    "adoption": adoptions.get(t),
                }
                for t, v in stats["tasks"].items()
                if stats["prompts"][t].startswith("w0-")
                and not saved_as(out / "w0", stats["prompts"][t])
            ],
            "adoptions": adoptions,
            "adopted_by_survivors": adopted,
        }
    return result


def times(proc: Proc, prefix: str) -> dict[str, float]:
    """Return ``{task id: moment}`` from a worker's ``PREFIX ID MOMENT`` lines."""
    return {
        line.split()[1]: float(line.split()[2]) for line in proc.lines if line.startswith(prefix)
    }


def record_window(
    stats: dict[str, Any], known: list[dict[str, float]], recorded: list[dict[str, float]]
) -> dict[str, Any]:
    """The window in which a kill loses a paid task: created, not yet recorded in Redis.

    ``reply``: from the server creating the task to its process knowing the id (the
    submit's answer in flight; nobody can recover a task killed here). ``write``: from
    knowing the id to the record written (queued behind the process's other Redis work,
    then one MULTI/EXEC).
    """
    reply, write = [], []
    for index, (ids, writes) in enumerate(zip(known, recorded, strict=True)):
        for t, at in ids.items():
            # Only the worker's own submits: an adopted task is "known" at its adoption.
            if stats["prompts"].get(t, "").startswith(f"w{index}-") and t in writes:
                reply.append(at - stats["tasks"][t]["submitted_at"])
                write.append(writes[t] - at)
    reply.sort()
    write.sort()

    def p(values: list[float], q: float) -> float:
        return values[int(q * (len(values) - 1))] if values else 0.0

    return {
        "window_reply_mean": sum(reply) / max(1, len(reply)),
        "window_reply_p99": p(reply, 0.99),
        "window_write_mean": sum(write) / max(1, len(write)),
        "window_write_p99": p(write, 0.99),
        "window_write_max": p(write, 1.0),
    }


async def flush(url: str) -> None:
    """Empty Redis between runs: each run's fleet starts from nothing."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def summary(result: dict[str, Any]) -> str:
    """One line per run: the makespan ratio and, for the killed variant, its losses."""
    line = f"{result['variant']}: makespan/ideal {result['makespan_over_ideal']:.3f}"
    if "victim_unsaved" in result:
        line += (
            f", victim paid {result['victim_paid_tasks']}, adopted"
            f" {result['adopted_by_survivors']}, unsaved {json.dumps(result['victim_unsaved'])}"
        )
    return line


async def leftover_records(url: str) -> set[str]:
    """Return the ids of the task records Redis still holds (none once all are saved)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url, decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter(match="flux_async:*:task:*")]
    finally:
        await client.aclose()
    return {key.rsplit(":task:", 1)[1] for key in keys}


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


VARIANTS = ("uncoordinated", "redis", "kill")


async def main(args: argparse.Namespace) -> None:
    durations = lognormal_durations(PROCESSES * PROMPTS, seed=13, median=2.0, sigma=0.5)
    chosen = args.only or list(VARIANTS)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_process, url = start_redis(folder)
        try:
            for run in range(args.repeat):
                for variant in VARIANTS:
                    if variant not in chosen:
                        continue
                    await flush(url)
                    where = folder / f"run{run}"
                    result = await run_variant(
                        "redis, 1 killed" if variant == "kill" else variant,
                        args.speed,
                        durations,
                        where,
                        redis=None if variant == "uncoordinated" else url,
                        kill=variant == "kill",
                        kill_on=args.kill_on,
                    )
                    result["run"] = run
                    results.append(result)
                    if args.repeat > 1:
                        print(f"run {run}: {summary(result)}", flush=True)
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
    if any("window_write_mean" in r for r in results):
        columns += [
            ("id known after create (s)", "window_reply_mean", ".4f"),
            ("p99", "window_reply_p99", ".4f"),
            ("record written after id (s)", "window_write_mean", ".4f"),
            ("p99 ", "window_write_p99", ".4f"),
            ("max", "window_write_max", ".4f"),
        ]
    label = (
        (lambda r: f"{r['variant']} #{r['run']}") if args.repeat > 1 else (lambda r: r["variant"])
    )
    print(table([(label(r), r) for r in results], columns))
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
        parser.add_argument(
            "--only", action="append", choices=VARIANTS, help="run only this variant (repeatable)"
        )
        parser.add_argument("--repeat", type=int, default=1, help="run the variants N times")
        parser.add_argument(
            "--kill-on",
            choices=("progress", "submit"),
            default="progress",
            help="kill once a third is saved (progress), or then at the next task id (submit)",
        )
        anyio.run(main, parser.parse_args())
