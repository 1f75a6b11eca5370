"""A fleet of real processes on one loopback simulator and one real redis-server.

Each worker is ``tests/_fleet_worker.py`` in its own Python process. The simulator runs
here, on loopback, with the account's cap as its active-task limit, so it counts the most
tasks the key ever had active and every submit it refused with 429.
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.text import TextReceiveStream
from redis import Redis

from flux_async._fleet import fleet_id
from flux_async.testing import FAKE_API_KEY, KNOWN_MODELS, Simulator, SimulatorConfig, serve
from tests._redis import RedisServer

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("_fleet_worker.py")
CAP = 4
PATIENCE = 90.0  # seconds a whole run may take on a loaded machine before the test fails


class Worker:
    """One worker process and the lines it printed."""

    def __init__(self, name: str, process: anyio.abc.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self._changed = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stdout):
            buffer += chunk
            *complete, buffer = buffer.split("\n")
            self.lines += complete
            self._changed.set()
            self._changed = anyio.Event()

    async def expect(self, prefix: str) -> str:
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            if self.process.returncode is not None:
                raise AssertionError(f"{self.name} exited without {prefix!r}: {self.lines}")
            await self._changed.wait()

    async def finish(self) -> int:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        return await self.process.wait()


def sim_config(median: float) -> SimulatorConfig:
    latency = dict.fromkeys(KNOWN_MODELS, (median, 0.3))
    return SimulatorConfig(latency=latency, image_bytes=1024, active_limit=CAP)


@asynccontextmanager
async def fleet(
    sim: Simulator, redis: RedisServer, out: Path, prompts: int, n: int = 3
) -> AsyncIterator[list[Worker]]:
    async with serve(sim) as base_url, anyio.create_task_group() as tg:
        workers: list[Worker] = []
        try:
            for index in range(n):
                options: dict[str, Any] = {
                    "base_url": base_url,
                    "redis": redis.url,
                    "out": str(out / f"w{index}"),
                    "name": f"w{index}",
                    "prompts": prompts,
                    "cap": CAP,
                }
                process = await anyio.open_process(
                    [sys.executable, str(WORKER), json.dumps(options)], stderr=None
                )
                worker = Worker(f"w{index}", process)
                workers.append(worker)
                tg.start_soon(worker.read)
            with anyio.fail_after(PATIENCE):
                for worker in workers:
                    await worker.expect("ready")
            yield workers
        finally:
            for worker in workers:
                if worker.process.returncode is None:
                    worker.process.kill()
                await worker.process.wait()
                await worker.process.aclose()
            tg.cancel_scope.cancel()


def accepted_prompts(sim: Simulator) -> Counter[str]:
    return Counter(r.body["prompt"] for r in sim.records.submits if r.task_id is not None)


async def test_three_processes_never_exceed_the_cap(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    sim = Simulator(sim_config(median=0.4))
    async with fleet(sim, redis_server, tmp_path, prompts=8) as workers:
        with anyio.fail_after(PATIENCE):
            for worker in workers:
                assert await worker.expect("done") == "done 8"
            for worker in workers:
                assert await worker.finish() == 0
    assert sim.records.max_active_seen == CAP  # the whole cap in use, never more
    assert sim.records.rejected_429 <= 1  # "near zero": none expected
    counts = accepted_prompts(sim)
    assert len(counts) == 24
    assert set(counts.values()) == {1}  # nothing submitted twice


def registered(redis: Redis, pid: int) -> set[str]:
    """Return the ids of the tasks Redis records for the worker with process id ``pid``."""
    prefix = f"flux_async:{{{fleet_id('bfl', FAKE_API_KEY)}}}:owned:"
    ids: set[str] = set()
    for key in redis.scan_iter(f"{prefix}*:{pid}:*"):
        ids |= {str(member) for member in redis.smembers(key)}
    return ids


def saved_ids(folder: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for log in folder.glob("*.saved.jsonl"):
        for line in log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            entries[entry["task_id"]] = entry
    return entries


async def test_a_killed_process_tasks_are_adopted_and_saved(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    sim = Simulator(sim_config(median=1.0))
    redis = Redis.from_url(redis_server.url, decode_responses=True)
    async with fleet(sim, redis_server, tmp_path, prompts=12) as workers:
        victim, survivors = workers[0], workers[1:]
        # Kill it while at least two of its paid tasks are recorded and unsaved.
        with anyio.fail_after(PATIENCE):
            while len(registered(redis, victim.process.pid)) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        victim.process.send_signal(signal.SIGKILL)
        assert await victim.process.wait() == -signal.SIGKILL
        orphaned = registered(redis, victim.process.pid)
        with anyio.fail_after(PATIENCE):
            for worker in survivors:
                assert await worker.expect("done") == "done 12"
            while not orphaned <= saved_ids(tmp_path).keys():  # noqa: ASYNC110
                await anyio.sleep(0.05)
            for worker in survivors:
                assert await worker.finish() == 0
    redis.close()
    counts = accepted_prompts(sim)
    assert set(counts.values()) == {1}  # nothing submitted twice
    assert sim.records.max_active_seen <= CAP
    saved = saved_ids(tmp_path)
    for task_id in orphaned:
        # Saved by a survivor, as an orphan, where the dead worker meant to put it.
        assert saved[task_id]["orphan"] is True
        assert Path(saved[task_id]["path"]).parent == tmp_path / "w0"
    # Paid tasks of the victim with no image: only one whose submit was answered in the
    # instant before it could be recorded (the gap docs/fleet.md names), if any.
    victim_tasks = {r.task_id for r in sim.records.submits if r.body["prompt"].startswith("w0-")}
    assert len(victim_tasks - saved.keys() - {None}) <= 1
