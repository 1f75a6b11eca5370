"""Test helpers shared by several test modules."""

from __future__ import annotations

import asyncio

import anyio

from flux_async import ManualClock


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


async def move_time(clock: ManualClock, done: anyio.Event, *, below: float) -> None:
    """Jump ``clock`` from one sleeper's deadline to the next while they lie ``below``.

    Time moves only when every task is blocked, and never to ``below`` or past it: work
    that waits on real things (threads writing files) just finishes, however slow the
    machine, and anything due at ``below`` or later (a download's 600 s limit, a task's
    end) never happens. Run it in a task group; set ``done`` to stop it.
    """
    while not done.is_set():
        await settle()
        due = clock.next_deadline
        if due is not None and due < below:
            clock.advance(max(due - clock.monotonic(), 0.0))
        else:
            await anyio.sleep(0.001)  # a real pause: let worker threads finish
