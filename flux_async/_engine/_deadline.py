"""Bounding a whole piece of I/O by the client's clock, not by each read alone.

httpx's timeouts bound each read; a server that sends one byte just before each would
expire holds a request for ever. :func:`within` runs ``work`` against a watchdog that
sleeps on the client's :class:`Clock` (so the simulator's scaled and manual clocks
apply), and cancels it when the time is up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import anyio

from .._core._clock import Clock

__all__ = ["within"]

T = TypeVar("T")


async def within(clock: Clock, seconds: float, work: Callable[[], Awaitable[T]]) -> T:
    """Return ``await work()``; raise TimeoutError if it takes more than ``seconds`` on ``clock``.

    Exceptions of ``work`` propagate as they are (not wrapped in an ExceptionGroup).
    """
    expired = False
    failure: Exception | None = None
    done = False
    value: T | None = None

    async with anyio.create_task_group() as tg:

        async def watchdog() -> None:
            nonlocal expired
            await clock.sleep(seconds)
            expired = True
            tg.cancel_scope.cancel()

        tg.start_soon(watchdog)
        try:
            value = await work()
            done = True
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if not done:
        raise TimeoutError(f"not done within {seconds:.1f} s (expired: {expired})")
    return cast(T, value)
