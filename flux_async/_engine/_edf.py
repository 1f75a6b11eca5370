"""An earliest-deadline-first gate: at most N holders, waiters admitted by deadline.

The downloader holds one slot per HTTP attempt. When a slot frees, it is handed straight
to the waiter whose deadline (wall-clock epoch seconds) is earliest, so the image whose
signed URL expires first is fetched first. Ties keep arrival order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel

__all__ = ["DeadlineGate"]


class DeadlineGate:
    """Admit at most ``capacity`` holders at once, earliest deadline first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._holders = 0
        self._seq = itertools.count()
        self._waiters: list[tuple[float, int, anyio.Event]] = []
        # Cancelled waiters stay in the heap and are skipped when popped: removing them
        # eagerly costs O(n) each, and a shutdown may cancel every queued download at once.
        self._abandoned: set[int] = set()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def holders(self) -> int:
        """Return how many slots are held now."""
        return self._holders

    @property
    def waiting(self) -> int:
        """Return how many callers wait for a slot."""
        return len(self._waiters) - len(self._abandoned)

    async def acquire(self, deadline: float) -> None:
        """Wait for a slot; callers with an earlier ``deadline`` (epoch seconds) go first."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._holders < self._capacity:
            # A free slot implies an empty queue: release() hands slots to waiters directly.
            self._holders += 1
            return
        seq = next(self._seq)
        event = anyio.Event()
        heapq.heappush(self._waiters, (deadline, seq, event))
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            else:
                self._abandoned.add(seq)
            raise

    def release(self) -> None:
        """Give a slot back, handing it to the earliest waiting deadline if any."""
        while self._waiters:
            _, seq, event = heapq.heappop(self._waiters)
            if seq in self._abandoned:
                self._abandoned.discard(seq)
                continue
            event.set()
            return
        if self._holders <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._holders -= 1

    @asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """Hold a slot for the body of an ``async with``."""
        await self.acquire(deadline)
        try:
            yield
        finally:
            self.release()

    def __repr__(self) -> str:
        return (
            f"DeadlineGate(capacity={self._capacity}, holders={self._holders}, "
            f"waiting={self.waiting})"
        )
