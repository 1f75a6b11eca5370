"""The active-task limiter: caps, fairness, cancellation, windows."""

from __future__ import annotations

import anyio
import pytest

from flux_async._engine._limits import ActiveTaskLimiter, Slot

from ._util import settle

pytestmark = pytest.mark.anyio


async def test_default_caps_come_from_the_catalog() -> None:
    limiter = ActiveTaskLimiter()
    assert limiter.limit == 24
    assert limiter.model_limit("flux-2-pro") == 24
    assert limiter.model_limit("flux-kontext-max") == 6
    assert ActiveTaskLimiter(4).model_limit("flux-kontext-max") == 4
    assert ActiveTaskLimiter(per_model={"flux-kontext-max": 2}).model_limit("flux-kontext-max") == 2


@pytest.mark.parametrize("bad", [{"limit": 0}, {"per_model": {"flux-2-pro": 0}}])
def test_bad_limits_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        ActiveTaskLimiter(**bad)  # type: ignore[arg-type]


async def test_slots_are_held_until_released_and_waiters_served_in_order() -> None:
    limiter = ActiveTaskLimiter(2)
    a = await limiter.acquire("flux-2-pro")
    b = await limiter.acquire("flux-2-pro")
    order: list[int] = []
    slots: list[Slot] = []

    async def want(i: int) -> None:
        slot = await limiter.acquire("flux-2-pro")
        order.append(i)
        slots.append(slot)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(want, i)
            await settle()
        assert limiter.statistics().waiting == 4
        a.release()
        a.release()  # idempotent
        await settle()
        assert order == [0]
        b.release()
        await settle()
        assert order == [0, 1]
        for slot in list(slots):
            slot.release()
            await settle()
    assert order == [0, 1, 2, 3]
    for slot in slots:
        slot.release()
    assert limiter.in_flight == 0
    assert limiter.statistics().acquired_total == 6


async def test_a_full_model_does_not_block_other_models() -> None:
    limiter = ActiveTaskLimiter(10, per_model={"flux-kontext-max": 1})
    k = await limiter.acquire("flux-kontext-max")
    got: list[str] = []

    async def want(model: str) -> None:
        await limiter.acquire(model)
        got.append(model)

    async with anyio.create_task_group() as tg:
        tg.start_soon(want, "flux-kontext-max")
        await settle()
        tg.start_soon(want, "flux-2-pro")
        await settle()
        assert got == ["flux-2-pro"]
        assert limiter.statistics().in_flight_by_model == {"flux-kontext-max": 1, "flux-2-pro": 1}
        k.release()
    assert got == ["flux-2-pro", "flux-kontext-max"]


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_slot() -> None:
    limiter = ActiveTaskLimiter(1)
    held = await limiter.acquire("flux-2-pro")
    with anyio.move_on_after(0.01):
        await limiter.acquire("flux-2-pro")
    assert limiter.statistics().waiting == 0
    held.release()
    assert limiter.in_flight == 0
    again = await limiter.acquire("flux-2-pro")
    assert repr(again) == "Slot(model='flux-2-pro', held)"


async def test_window_shrinks_and_grows_the_effective_cap() -> None:
    limiter = ActiveTaskLimiter(3)
    slots = [await limiter.acquire("flux-2-pro") for _ in range(2)]
    limiter.set_window(2)
    got: list[Slot] = []

    async def want() -> None:
        got.append(await limiter.acquire("flux-2-pro"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(want)
        await settle()
        assert got == []
        limiter.set_window(3)
        await settle()
        assert len(got) == 1
    assert limiter.window == 3
    limiter.set_window(99)
    assert limiter.window == 3
    limiter.set_window(0)
    assert limiter.window == 1
    for slot in [*slots, *got]:
        slot.release()


async def test_occupy_takes_a_slot_above_the_cap_for_existing_tasks() -> None:
    limiter = ActiveTaskLimiter(1)
    first = await limiter.acquire("flux-2-pro")
    resumed = limiter.occupy("flux-2-pro")
    assert limiter.in_flight == 2
    limiter.note_rate_limited()
    stats = limiter.statistics()
    assert stats.rate_limited_total == 1
    assert "in_flight=2" in repr(limiter)
    first.release()
    resumed.release()
    assert resumed.released
    assert limiter.in_flight == 0
