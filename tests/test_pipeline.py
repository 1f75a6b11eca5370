"""A pipeline, not workers: an item's download never holds back the next submit."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from flux_async._batching._batch import run_batch
from flux_async._batching._batch_progress import BatchProgress
from flux_async._engine._pipeline import Stages
from flux_async._polling._regime import RegimePolicy
from flux_async.testing import Simulator

from .test_client import client, make_sim

pytestmark = pytest.mark.anyio


async def test_a_ready_item_makes_room_for_the_next_submit_but_not_beyond_the_backlog() -> None:
    stages = Stages(2, backlog=1)
    first, second = await stages.admit(), await stages.admit()
    with anyio.move_on_after(0.05) as blocked:
        await stages.admit()
    assert blocked.cancelled_caught  # two before Ready: the third waits
    first.ready()
    first.ready()  # idempotent: gives back one place only
    third = await stages.admit()
    assert not first.submitting
    assert third.submitting
    second.ready()
    with anyio.move_on_after(0.05) as full:
        await stages.admit()
    assert full.cancelled_caught  # 3 alive = limit + backlog: the fourth waits for a close
    first.close()
    fourth = await stages.admit()
    for ticket in (second, third, fourth):
        ticket.close()
        ticket.close()
    # Everything given back: limit + backlog tickets can be taken again at once.
    with anyio.fail_after(1):
        again = [await stages.admit(), await stages.admit()]
    for ticket in again:
        ticket.close()


def test_stages_refuse_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        Stages(0, backlog=1)
    with pytest.raises(ValueError, match="backlog >= 0"):
        Stages(1, backlog=-1)


async def test_generate_many_submits_the_next_items_while_images_download(
    tmp_path: Path,
) -> None:
    # Generations take ~0.4 s, each image 8 s to deliver (simulated).
    sim: Simulator = make_sim(slow_delivery_seconds=8.0)
    before_first_save: list[int] = []
    async with client(sim) as flux, anyio.create_task_group() as tg:

        async def watch() -> None:
            # The submits made while no image is saved yet (7 s of simulated time).
            while flux.statistics().downloader.completed == 0:
                before_first_save.append(len(sim.records.submits))
                await anyio.sleep(0.002)

        tg.start_soon(watch)
        items = [f"p{i}" for i in range(6)]
        outcomes = [o async for o in flux.generate_many(items, output_dir=tmp_path, concurrency=2)]
    assert all(outcome.ok for outcome in outcomes)
    assert sorted(o.index for o in outcomes) == list(range(6))
    # Workers holding their item through the download would have submitted 2 before
    # the first save; the pipeline submitted 2 more during the first downloads, and no
    # more (2 before Ready + a backlog of 2 downloading).
    assert max(before_first_save) == 4


async def test_batch_workers_hand_downloads_off_and_take_the_next_item(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"fox {i}" for i in range(6)) + "\n", encoding="utf-8")
    sim: Simulator = make_sim(slow_delivery_seconds=8.0)
    before_first_save: list[int] = []

    def notify(message: str) -> None:  # pragma: no cover - nothing to say in this run
        raise AssertionError(message)

    progress = BatchProgress()
    async with client(sim) as flux, anyio.create_task_group() as tg:

        async def watch() -> None:
            while progress.saved == 0:
                before_first_save.append(len(sim.records.submits))
                await anyio.sleep(0.002)

        tg.start_soon(watch)
        summary = await run_batch(
            flux, prompts, tmp_path / "out", concurrency=2, progress=progress, notify=notify
        )
    assert summary.ok == 6
    # Two workers that kept their items through an 8 s download would have submitted 2
    # by the first save; handing saves off, they submitted 2 more (a backlog of 2 saves).
    assert max(before_first_save) == 4


async def test_a_batch_held_back_at_its_own_gate_polls_in_the_throughput_regime(
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"fox {i}" for i in range(8)) + "\n", encoding="utf-8")
    sim: Simulator = make_sim()
    regimes: set[str] = set()
    async with client(sim, max_active=2) as flux, anyio.create_task_group() as tg:
        policy = flux._policy
        assert isinstance(policy, RegimePolicy)

        async def watch() -> None:
            while True:
                regimes.add(policy.regime())
                await anyio.sleep(0.001)

        tg.start_soon(watch)
        summary = await run_batch(flux, prompts, tmp_path / "out", concurrency=8)
        tg.cancel_scope.cancel()
        # Everything done: nothing waits, so the regime is frugal again.
        assert policy.regime() == "frugal"
    assert summary.ok == 8
    # Items wait at the batch's own gate (2 slots for 8 items), not in the limiter, and
    # still count as a backlog.
    assert "throughput" in regimes
