"""What every benchmark shares: the simulator process, planned durations, meters, figures.

Not a benchmark; imported by ``polling.py``, ``cap_discovery.py`` and ``downloads.py``.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import json
import math
import random
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
from _clock import SharedClock

HERE = Path(__file__).resolve().parent


def lognormal_durations(n: int, seed: int, median: float = 3.0, sigma: float = 0.5) -> list[float]:
    """Return ``n`` generation times (seconds) drawn from a seeded lognormal."""
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]


def ideal_fifo(durations: Sequence[float], cap: int) -> float:
    """Return the makespan of FIFO over ``cap`` slots with zero detection lag and zero RTT.

    The i-th accepted submit gets ``durations[i]`` (the simulator's plans are consumed in
    acceptance order), so this is the schedule every client's run is compared with.
    """
    slots = [0.0] * cap
    for d in durations:
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + d)
    return max(slots)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q`` (0..1) percentile by the nearest-rank rule (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class SimServer:
    """A simulator served on loopback by a child process."""

    base_url: str

    async def stats(self) -> dict[str, Any]:
        """Return the simulator's own figures (see ``_simserver.BenchSimulator.stats``)."""
        async with httpx.AsyncClient(timeout=30.0) as http:
            response = await http.get(f"{self.base_url}/bench/stats")
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result


@contextlib.asynccontextmanager
async def simulator(
    clock: SharedClock,
    durations: Sequence[float],
    *,
    progress: bool = True,
    models: Sequence[str] | None = None,
    delivery_mb_s: float = 0.0,
    **config: Any,
) -> AsyncIterator[SimServer]:
    """Serve a simulator planned with ``durations`` in a child process; yield its handle.

    ``models[i]``, when given, ties ``durations[i]`` to that model's submits (each model
    consumes its own durations in order); ``delivery_mb_s`` caps all image bodies
    together at that many MB per simulated second.
    """
    plans: list[dict[str, Any]] = [{"duration": d, "progress": progress} for d in durations]
    if models is not None:
        for plan, model in zip(plans, models, strict=True):
            plan["model"] = model
    spec = {
        "speed": clock.speed,
        "epoch": clock.epoch,
        "config": config,
        "plans": plans,
        "delivery_mb_s": delivery_mb_s,
    }
    command = [sys.executable, str(HERE / "_simserver.py"), json.dumps(spec)]
    process = await anyio.open_process(command, stdin=-1, stdout=-1, stderr=None)
    try:
        if process.stdout is None or process.stdin is None:
            raise RuntimeError("the simulator process has no pipes")
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        yield SimServer(line.decode().strip())
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


class Meter:
    """Client-process CPU seconds, peak RSS growth and event-loop lag over one run."""

    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        self.lags: list[tuple[float, float]] = []  # (real monotonic second, lag seconds)
        self.cpu = 0.0
        self.rss_growth = 0
        self._cpu0 = 0.0
        self._rss0 = 0

    @contextlib.asynccontextmanager
    async def measure(self) -> AsyncIterator[Meter]:
        gc.collect()
        _reset_peak_rss()
        self._rss0 = _status_kib("VmRSS")
        self._cpu0 = time.process_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._ticker)
            try:
                yield self
            finally:
                self.cpu = time.process_time() - self._cpu0
                self.rss_growth = (_status_kib("VmHWM") - self._rss0) * 1024
                tg.cancel_scope.cancel()

    async def _ticker(self) -> None:
        while True:
            start = time.monotonic()
            await anyio.sleep(self.tick)
            now = time.monotonic()
            self.lags.append((now, max(0.0, now - start - self.tick)))

    def lag_p99(self, since: float = -math.inf, until: float = math.inf) -> float:
        """Return the p99 event-loop lag in seconds between two real monotonic seconds."""
        return percentile([lag for at, lag in self.lags if since <= at <= until], 0.99)


def _status_kib(field_name: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak_rss() -> None:
    # Linux: writing 5 resets VmHWM to the current RSS, so each run measures its own peak.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@dataclass
class Run:
    """One client's run against one simulator: what it saw, and what the server saw."""

    name: str
    n: int
    started: float  # clock seconds
    detected: dict[str, float] = field(default_factory=dict)  # task id -> Ready seen
    saved: dict[str, float] = field(default_factory=dict)  # task id -> file in place
    failures: int = 0
    meter: Meter = field(default_factory=Meter)
    server: dict[str, Any] = field(default_factory=dict)
    clock: SharedClock | None = None  # the run's clock, to map its times to real ones

    def makespan(self) -> float:
        """Return seconds from the first submit to the last Ready seen."""
        return max(self.detected.values()) - self.started

    def saved_makespan(self) -> float:
        """Return seconds from the first submit to the last file in place."""
        return max(self.saved.values()) - self.started

    def lags(self) -> list[float]:
        """Return detection lag per task: Ready seen minus the simulator's end time."""
        tasks = self.server["tasks"]
        return [at - tasks[tid]["end_at"] for tid, at in self.detected.items() if tid in tasks]

    def lags_by_model(self) -> dict[str, list[float]]:
        """Return detection lags grouped by the model each task ran."""
        tasks = self.server["tasks"]
        grouped: dict[str, list[float]] = {}
        for tid, at in self.detected.items():
            if tid in tasks:
                grouped.setdefault(tasks[tid]["model"], []).append(at - tasks[tid]["end_at"])
        return grouped

    def polls_per_task(self) -> float:
        polls: dict[str, int] = self.server["polls_by_task"]
        return sum(polls.values()) / self.n

    def rate_limited_per_task(self) -> float:
        return float(self.server["rejected_429"]) / self.n

    def figures(self, ideal: float) -> dict[str, float]:
        lags = self.lags()
        return {
            "ok": float(len(self.detected) - self.failures),
            "makespan": self.makespan(),
            "ratio": self.makespan() / ideal,
            "polls": self.polls_per_task(),
            "lag_mean": statistics.fmean(lags),
            "lag_p95": percentile(lags, 0.95),
            "r429": self.rate_limited_per_task(),
            "cpu_ms": 1000.0 * self.meter.cpu / self.n,
            "rss_mib": self.meter.rss_growth / 2**20,
            "loop_p99_ms": 1000.0 * self.meter.lag_p99(),
        }


def table(
    rows: Sequence[tuple[str, dict[str, float]]], columns: Sequence[tuple[str, str, str]]
) -> str:
    """Return a Markdown table: ``columns`` are (header, figure key, format)."""
    head = "| client | " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in columns) + " |"
    lines = [head, rule]
    for name, figures in rows:
        cells = [format(figures[key], fmt) for _, key, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_group_errors_as_failures(exc: BaseException) -> int:
    """Count the leaf exceptions of a (possibly nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return sum(task_group_errors_as_failures(e) for e in exc.exceptions)
    return 1
