"""One AsyncFlux shared by many callers: fairness, cancellation, orphans and shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from flux_async import AsyncFlux, ClientClosedError, GeneratedImage, ManualClock, ScaledClock
from flux_async._web._events import Event, ImageSaved, TaskOrphaned, TaskReady, TaskSubmitted
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig, serve
from tests._util import move_time, settle

pytestmark = pytest.mark.anyio

MODEL = "flux-2-klein-4b"


def make_sim(speed: float = 100.0, median: float = 0.5, **config: Any) -> Simulator:
    cfg = SimulatorConfig(latency={MODEL: (median, 0.3)}, image_bytes=0, credits=1e6, **config)
    return Simulator(cfg, clock=ScaledClock(speed))


def manual_sim(clock: ManualClock, median: float) -> Simulator:
    """A simulator on ``clock`` whose tasks all take ``median`` seconds (no draw)."""
    cfg = SimulatorConfig(latency={MODEL: (median, 0.3)}, image_bytes=0, credits=1e6)
    sim = Simulator(cfg, clock=clock)
    for _ in range(8):
        sim.plan_next(duration=median)
    return sim


def client(sim: Simulator, **options: Any) -> AsyncFlux:
    return AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=sim.config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
        **options,
    )


def collect(events: list[Event]) -> Callable[[Event], None]:
    return events.append


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait (real time, bounded) until ``condition()``; the simulator's clock runs meanwhile."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - server time passes on a scaled clock
            await anyio.sleep(0.005)


async def test_a_thousand_callers_are_served_in_order_with_nothing_left_over(
    tmp_path: Path,
) -> None:
    # CPU-bound: on a loaded machine many simulated minutes may pass; keep URLs valid.
    sim = make_sim(speed=20.0, url_lifetime=1e6)
    before = set(asyncio.all_tasks())
    waiting_seen: list[int] = []
    images: dict[int, GeneratedImage] = {}
    async with client(sim, task_timeout=1e5) as flux:

        async def caller(i: int) -> None:
            images[i] = await flux.generate(f"caller {i:04d}", model=MODEL, output_dir=tmp_path)

        async def watch() -> None:
            while len(images) < 1000:
                waiting_seen.append(flux.statistics().limiter.waiting)
                await anyio.sleep(0.01)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                for i in range(1000):
                    tg.start_soon(caller, i)
        stats = flux.statistics()
        assert stats.limiter.in_flight == stats.limiter.waiting == 0
        assert stats.scheduler.pending == 0
        assert not flux._scheduler._entries  # type: ignore[union-attr]  # every task forgotten
        assert stats.downloader.completed == 1000
        api_http = flux._provider._http  # type: ignore[union-attr]
    assert len(images) == 1000
    assert len({img.task_id for img in images.values()}) == 1000
    assert all(img.path.exists() for img in images.values())
    # The account's limit was full nearly all along, and the queue was served in order.
    assert max(waiting_seen) >= 900
    prompts = [s.body["prompt"] for s in sim.records.submits]
    assert prompts == [f"caller {i:04d}" for i in range(1000)]
    assert sim.records.max_active_seen <= 24
    assert sim.records.rejected_429 == 0
    assert api_http.is_closed
    assert set(asyncio.all_tasks()) - before == set()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count sockets")
async def test_loopback_load_fits_the_pool_and_leaves_no_connection(tmp_path: Path) -> None:
    sim = make_sim(speed=20.0, url_lifetime=1e6)
    fds = _open_fds()
    results: list[GeneratedImage] = []
    async with (
        serve(sim) as base_url,
        AsyncFlux(api_key=FAKE_API_KEY, base_url=base_url, clock=sim.clock) as flux,
    ):

        async def caller(i: int) -> None:
            results.append(await flux.generate(f"p{i}", model=MODEL, output_dir=tmp_path))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(60):
                    tg.start_soon(caller, i)
        pool = flux._provider._http._transport._pool  # type: ignore[union-attr]
        assert len(pool.connections) <= pool._max_connections
    assert len(results) == 60
    assert _open_fds() == fds


async def test_a_cancelled_caller_leaves_its_paid_image_in_the_orphan_folder(
    tmp_path: Path,
) -> None:
    sim = make_sim(median=2.0)
    events: list[Event] = []
    handed: list[GeneratedImage] = []
    got_orphan = anyio.Event()

    async def on_orphan(image: GeneratedImage) -> None:
        handed.append(image)
        got_orphan.set()

    orphans = tmp_path / "orphans"
    async with client(
        sim, orphan_dir=orphans, on_orphan=on_orphan, event_hooks=[collect(events)]
    ) as flux:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:

                async def leaver() -> None:
                    await flux.generate("left early", model=MODEL, output_dir=tmp_path / "out")

                tg.start_soon(leaver)
                await until(lambda: any(isinstance(e, TaskSubmitted) for e in events))
                scope.cancel()  # the HTTP client went away
        # Others keep being served meanwhile, by the same client.
        other = await flux.generate("stayed", model=MODEL, output_dir=tmp_path / "out")
        with anyio.fail_after(10):
            await got_orphan.wait()
        await settle()
        stats = flux.statistics()
        assert stats.limiter.in_flight == 0
        assert stats.orphans is not None
        assert (stats.orphans.adopted, stats.orphans.saved, stats.orphans.active) == (1, 1, 0)
        assert not flux._scheduler._entries  # type: ignore[union-attr]
    orphan = handed[0]
    assert orphan.path == orphans / f"{orphan.task_id}.jpeg"
    assert orphan.path.stat().st_size == orphan.size > 0
    assert other.path.exists()
    assert not (tmp_path / "out" / orphan.task_id).with_suffix(".jpeg").exists()
    kinds = [type(e) for e in events if getattr(e, "task_id", None) == orphan.task_id]
    assert kinds.index(TaskOrphaned) < kinds.index(TaskReady) < kinds.index(ImageSaved)
    saved = [e for e in events if isinstance(e, ImageSaved) and e.task_id == orphan.task_id]
    assert saved[0].orphan


async def test_without_an_orphan_dir_the_image_lands_where_the_caller_asked(
    tmp_path: Path,
) -> None:
    sim = make_sim(median=2.0, slow_delivery_seconds=3.0)
    events: list[Event] = []
    async with client(sim, event_hooks=[collect(events)]) as flux:
        with anyio.move_on_after(10) as scope:
            async with anyio.create_task_group() as tg:
                # Cancelled in the middle of the download this time.
                tg.start_soon(
                    lambda: flux.generate("mid-download", model=MODEL, output_dir=tmp_path)
                )
                await until(lambda: flux.statistics().downloader.active > 0)
                scope.cancel()
        await until(lambda: any(isinstance(e, ImageSaved) for e in events))
        orphans = flux.statistics().orphans
        assert orphans is not None
        assert orphans.saved == 1
    files = [p.name for p in tmp_path.iterdir()]
    task_id = next(e.task_id for e in events if isinstance(e, TaskOrphaned))
    assert files == [f"{task_id}.jpeg"]  # one complete image, no temp file left behind


async def test_abandon_lets_the_image_go_but_keeps_the_slot_until_the_task_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Was flaky under load: on a ScaledClock(100) the 2 s task was 20 ms of real time and
    # could end before the cancel, so nothing was abandoned. On a ManualClock time stands
    # still until the cancel and the in-flight check, then moves (below a download's 600 s
    # limit) only when every task waits.
    clock = ManualClock()
    sim = manual_sim(clock, median=2.0)
    events: list[Event] = []
    done = anyio.Event()
    async with client(sim, on_cancel="abandon", max_active=1, event_hooks=[events.append]) as flux:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: flux.generate("abandoned", model=MODEL, output_dir=tmp_path))
                await until(lambda: any(isinstance(e, TaskSubmitted) for e in events))
                scope.cancel()
        # The server still counts the task: the slot is held until it ends.
        assert flux.statistics().limiter.in_flight == 1
        with caplog.at_level(logging.WARNING, logger="flux_async"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(move_time, clock, done, below=500.0))
                with anyio.fail_after(30):
                    img = await flux.generate("next in line", model=MODEL, output_dir=tmp_path)
                done.set()
            await settle()  # after move_time has stopped: two settle() loops never settle
        orphans = flux.statistics().orphans
        assert orphans is not None
        assert orphans.abandoned == 1
    assert [p.name for p in tmp_path.iterdir()] == [img.path.name]
    assert len(sim.records.delivery_headers) == 1
    assert any("on_cancel='abandon'" in r.getMessage() for r in caplog.records)


async def test_a_caller_cancelled_while_queued_never_submits(tmp_path: Path) -> None:
    sim = make_sim(median=1.0)
    # The first task holds the only slot for 0.3 s of real time: the queued caller is
    # surely still queued when cancelled, however slow the machine (with ~10 ms the
    # slot could free up between seeing the queue and cancelling).
    sim.plan_next(duration=30.0)
    async with client(sim, max_active=1) as flux:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: flux.generate("first", model=MODEL, output_dir=tmp_path))
            with anyio.move_on_after(5) as scope:
                async with anyio.create_task_group() as queued:
                    queued.start_soon(
                        lambda: flux.generate("queued", model=MODEL, output_dir=tmp_path)
                    )
                    await until(lambda: flux.statistics().limiter.waiting == 1)
                    scope.cancel()
            assert flux.statistics().limiter.waiting == 0
        stats = flux.statistics()
        assert stats.orphans is not None
        assert stats.orphans.adopted == 0
    assert [s.body["prompt"] for s in sim.records.submits] == ["first"]


async def test_aclose_with_drain_finishes_paid_work_and_refuses_the_rest(tmp_path: Path) -> None:
    # Was flaky under load: on a ScaledClock(100) the 1 s tasks were 10 ms of real time, so
    # "a" could end and "c" be submitted before aclose() ran. On a ManualClock time stands
    # still until aclose() has refused the queued callers, then moves below the 60 s drain.
    clock = ManualClock()
    sim = manual_sim(clock, median=1.0)
    outcomes: dict[str, object] = {}
    flux = client(sim, max_active=2)
    done = anyio.Event()

    async def caller(name: str) -> None:
        try:
            outcomes[name] = await flux.generate(name, model=MODEL, output_dir=tmp_path)
        except ClientClosedError as exc:
            outcomes[name] = exc

    # The callers live in the web server's task group; the client in the app's lifespan.
    async with anyio.create_task_group() as tg, flux:
        for name in ("a", "b", "c", "d", "e"):
            tg.start_soon(caller, name)
        await until(lambda: len(sim.records.submits) == 2)
        tg.start_soon(partial(move_time, clock, done, below=50.0))
        await flux.aclose(drain=60.0)  # no fail_after: aclose exits the client's task group
        done.set()
    images = {k for k, v in outcomes.items() if isinstance(v, GeneratedImage)}
    refused = {k for k, v in outcomes.items() if isinstance(v, ClientClosedError)}
    assert images == {"a", "b"}
    assert refused == {"c", "d", "e"}
    assert len(sim.records.submits) == 2  # nothing paid for the refused ones
    assert all(isinstance(outcomes[k], GeneratedImage) for k in images)


async def test_aclose_stops_at_once_by_default(tmp_path: Path) -> None:
    sim = make_sim(speed=20.0, median=30.0)
    errors: list[BaseException] = []
    flux = client(sim)

    async def caller() -> None:
        try:
            await flux.generate("long", model=MODEL, output_dir=tmp_path)
        except ClientClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, flux:
        tg.start_soon(caller)
        await until(lambda: len(sim.records.submits) == 1)
        started = sim.clock.monotonic()
        await flux.aclose()
        assert sim.clock.monotonic() - started < 5.0
    assert len(errors) == 1
    assert list(tmp_path.iterdir()) == []


async def test_a_drain_that_runs_out_stops_what_is_left(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_sim(speed=50.0, median=200.0)
    errors: list[BaseException] = []
    caplog.set_level(logging.WARNING, logger="flux_async")
    async with anyio.create_task_group() as tg:
        async with client(sim, drain_timeout=2.0) as flux:

            async def caller() -> None:
                try:
                    await flux.generate("too long", model=MODEL, output_dir=tmp_path)
                except ClientClosedError as exc:
                    errors.append(exc)

            tg.start_soon(caller)
            await until(lambda: len(sim.records.submits) == 1)
            started = sim.clock.monotonic()
            # Leaving the block drains for drain_timeout seconds, then stops.
        elapsed = sim.clock.monotonic() - started
    assert 2.0 <= elapsed < 20.0
    assert len(errors) == 1
    assert any("after draining 2.0 s" in r.getMessage() for r in caplog.records)
