"""Test helpers shared by several test modules."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread

from flux_async import ManualClock


class _ThreadWork:
    """Counts calls running in worker threads, so a manual clock waits for them.

    A task awaiting a worker thread (a ledger write, an aiofiles write, an fsync) looks
    blocked to the event loop, yet it is busy: moving the clock then lets simulated time
    run on while real work is still under way, by as much as the machine is slow. Both
    doors to threads are counted while :func:`move_time` runs: ``anyio.to_thread.run_sync``
    (the count drops only once the caller has its result back) and the loop's
    ``run_in_executor`` that aiofiles uses (the count drops in the future's own callback,
    which runs before the awaiting task's).
    """

    def __init__(self) -> None:
        self.busy = 0
        self._users = 0
        self._run_sync: Callable[..., Any] | None = None

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        if self._users == 0:
            self._install(loop)
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                self._uninstall(loop)

    def _install(self, loop: asyncio.AbstractEventLoop) -> None:
        original = anyio.to_thread.run_sync
        self._run_sync = original

        @functools.wraps(original)
        async def run_sync(*args: Any, **kwargs: Any) -> Any:
            self.busy += 1
            try:
                return await original(*args, **kwargs)
            finally:
                self.busy -= 1

        run_in_executor = loop.run_in_executor

        def counted_run_in_executor(*args: Any) -> asyncio.Future[Any]:
            future = run_in_executor(*args)
            self.busy += 1
            future.add_done_callback(self._one_done)
            return future

        anyio.to_thread.run_sync = run_sync  # type: ignore[assignment]
        loop.run_in_executor = counted_run_in_executor  # type: ignore[method-assign, assignment]

    def _one_done(self, _: asyncio.Future[Any]) -> None:
        self.busy -= 1

    def _uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._run_sync is not None:
            anyio.to_thread.run_sync = self._run_sync  # type: ignore[assignment]
        with contextlib.suppress(AttributeError):
            del loop.run_in_executor  # back to the class's method


_THREADS = _ThreadWork()


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

    Time moves only when every task is blocked and no worker thread is running for one
    (see :class:`_ThreadWork`), and never to ``below`` or past it: work that waits on real
    things (threads writing files) finishes at simulated time standing still, however slow
    the machine, and anything due at ``below`` or later never happens. Run it in a task
    group; set ``done`` to stop it.
    """
    with _THREADS.counting():
        while not done.is_set():
            await settle()
            due = clock.next_deadline
            if _THREADS.busy == 0 and due is not None and due < below:
                clock.advance(max(due - clock.monotonic(), 0.0))
            else:
                await anyio.sleep(0.001)  # a real pause: let worker threads finish
