"""The clients the benchmarks race: flux_async, and the per-task polling loops it replaces.

Both run N prompts against one simulator and record, per task, when Ready was seen and
when the image was on disk. The baselines are what existing clients do: one coroutine
per task that submits under a semaphore of the known cap (retrying a 429 after a fixed
second), sleeps its own schedule between polls, and downloads the whole body
(``response.content``) before writing it with a blocking ``write_bytes``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
from _clock import SharedClock
from _harness import Run, SimServer, simulator

from flux_async import AsyncFlux, FluxError
from flux_async._polling._policy import PollPolicy, PollState
from flux_async.testing import FAKE_API_KEY

MODEL = "flux-dev"  # catalog prior: median 4 s, sigma 0.5; the runs draw median 3 s


def model_of(models: Sequence[str] | None) -> Callable[[int], str]:
    """Return index -> model: ``models[index]``, or :data:`MODEL` for every index."""
    if models is None:
        return lambda _index: MODEL
    return lambda index: models[index]


async def run_flux(
    name: str,
    server: SimServer,
    clock: SharedClock,
    n: int,
    out: Path,
    *,
    models: Sequence[str] | None = None,
    **options: Any,
) -> Run:
    """Run ``n`` prompts through one AsyncFlux client (submit, wait, save per prompt).

    At most twice the active cap are in progress, as ``generate_many`` does; the explicit
    steps expose each task's ``ready_at``.
    """
    run = Run(name, n, started=clock.monotonic(), clock=clock)
    in_progress = anyio.Semaphore(2 * int(options.get("max_active", 24)))
    model = model_of(models)

    async def one(flux: AsyncFlux, index: int) -> None:
        try:
            task = await flux.submit(model=model(index), prompt=f"benchmark prompt {index}")
            result = await flux.wait(task)
            run.detected[task.id] = result.ready_at
            await flux.save(result, out / f"{index:05d}")
            run.saved[task.id] = clock.monotonic()
        except FluxError:
            run.failures += 1
        finally:
            in_progress.release()

    async with (
        run.meter.measure(),
        AsyncFlux(api_key=FAKE_API_KEY, base_url=server.base_url, clock=clock, **options) as flux,
    ):
        run.started = clock.monotonic()
        async with anyio.create_task_group() as tg:
            for index in range(n):
                await in_progress.acquire()
                tg.start_soon(one, flux, index)
    run.server = await server.stats()
    return run


async def run_generate_many(
    name: str,
    server: SimServer,
    clock: SharedClock,
    n: int,
    out: Path,
    *,
    models: Sequence[str] | None = None,
    **options: Any,
) -> Run:
    """Run ``n`` prompts through ``AsyncFlux.generate_many`` (its own concurrency).

    ``detected`` holds no Ready times here (generate_many does not expose them): read
    ``saved`` (the moment each outcome arrived, its file in place).
    """
    run = Run(name, n, started=clock.monotonic(), clock=clock)
    model = model_of(models)
    items = [{"prompt": f"benchmark prompt {i}", "model": model(i)} for i in range(n)]
    async with (
        run.meter.measure(),
        AsyncFlux(api_key=FAKE_API_KEY, base_url=server.base_url, clock=clock, **options) as flux,
    ):
        run.started = clock.monotonic()
        async for outcome in flux.generate_many(items, output_dir=out):
            if outcome.ok and outcome.task_id is not None:
                run.saved[outcome.task_id] = clock.monotonic()
            else:
                run.failures += 1
    run.server = await server.stats()
    return run


async def run_loop(
    name: str,
    server: SimServer,
    clock: SharedClock,
    n: int,
    out: Path,
    *,
    policy: PollPolicy,
    cap: int = 24,
    retry_429: float = 1.0,
    models: Sequence[str] | None = None,
) -> Run:
    """Run ``n`` prompts the naive way: one polling loop per task on ``policy``'s schedule."""
    run = Run(name, n, started=clock.monotonic(), clock=clock)
    headers = {"x-key": FAKE_API_KEY}
    slots = anyio.Semaphore(cap)
    model = model_of(models)

    async def one(http: httpx.AsyncClient, index: int) -> None:
        await slots.acquire()
        try:
            while True:
                reply = await http.post(
                    f"{server.base_url}/v1/{model(index)}",
                    json={"prompt": f"benchmark prompt {index}"},
                    headers=headers,
                )
                if reply.status_code != 429:
                    break
                await clock.sleep(retry_429)
            reply.raise_for_status()
            submitted = reply.json()
            state = PollState("naive", clock.monotonic())
            delay = policy.first_delay(state, state.submitted_at)
            while True:
                await clock.sleep(delay)
                body = (await http.get(submitted["polling_url"], headers=headers)).json()
                if body["status"] != "Pending":
                    break
                delay = policy.next_delay(state, clock.monotonic(), progress=None)
            if body["status"] != "Ready":
                run.failures += 1
                return
            run.detected[submitted["id"]] = clock.monotonic()
        finally:
            slots.release()
        image = await http.get(body["result"]["sample"])
        # The naive way: the whole body in memory, then a blocking write on the loop.
        (out / f"{index:05d}.jpeg").write_bytes(image.content)
        run.saved[submitted["id"]] = clock.monotonic()

    async with run.meter.measure(), httpx.AsyncClient(timeout=120.0) as http:
        run.started = clock.monotonic()
        async with anyio.create_task_group() as tg:
            for index in range(n):
                tg.start_soon(one, http, index)
    run.server = await server.stats()
    return run


async def run_variant(
    name: str,
    speed: float,
    durations: Sequence[float],
    *,
    sim: dict[str, Any],
    progress: bool = True,
    policy: PollPolicy | None = None,
    cap: int = 24,
    models: Sequence[str] | None = None,
    many: bool = False,
    **flux_options: Any,
) -> Run:
    """Serve a fresh simulator planned with ``durations`` and race one client against it.

    ``policy`` picks a baseline loop client on that schedule; otherwise flux_async runs
    with ``max_active=cap`` and ``flux_options`` (through ``generate_many`` if ``many``).
    ``sim`` configures the simulator (see :func:`_harness.simulator`); ``models[i]`` is
    the model of prompt ``i`` and of ``durations[i]``.
    """
    clock = SharedClock(speed)
    sim_options = dict(sim)
    if models is not None:
        sim_options["models"] = models
    async with simulator(clock, durations, progress=progress, **sim_options) as server:
        with tempfile.TemporaryDirectory() as out:
            n, where = len(durations), Path(out)
            if policy is not None:
                return await run_loop(
                    name, server, clock, n, where, policy=policy, cap=cap, models=models
                )
            run = run_generate_many if many else run_flux
            return await run(
                name, server, clock, n, where, models=models, max_active=cap, **flux_options
            )
