"""Test helpers shared by several test modules."""

from __future__ import annotations

import asyncio


async def settle(max_rounds: int = 10_000) -> None:
    """Return once every other task on the loop is blocked on something.

    anyio's ``wait_all_tasks_blocked`` sleeps a real 0.1 s between checks; this yields with
    ``sleep(0)`` instead, so clock-driven tests run at full speed.
    """
    this = asyncio.current_task()
    for _ in range(max_rounds):
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                await asyncio.sleep(0)
                break
        else:
            return
    raise RuntimeError("tasks never settled")
