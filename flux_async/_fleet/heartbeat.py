"""The heartbeat: a process's proof of life, its repair of Redis, and its adoptions.

Every ``heartbeat`` seconds (``Coordinator``), one ``scripts.BEAT`` call renews this
process's expiry and makes Redis agree with the slots it holds (a lease lost in a Redis
restart comes back, one whose release never reached Redis goes). The reply says how many
processes are alive (the local share's divisor while Redis is away) and which owners
stopped heartbeating; this process then claims each dead owner's tasks (``ADOPT``: one
adopter wins) and hands them to ``on_adopt``.

When a beat fails, the limiter runs on its local share; the next beat that succeeds
re-publishes this process's task records and rejoins the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc

from .._core._clock import Clock
from .._errors import CoordinatorError
from . import scripts
from .coordinator import FleetSession
from .limiter import FleetLimiter, FleetSlot
from .registry import TaskRecord, TaskRegistry

__all__ = ["AdoptFn", "Heartbeat"]

logger = logging.getLogger("flux_async")

AdoptFn = Callable[[TaskRecord, FleetSlot], None]


class Heartbeat:
    """Beat, repair and adopt, every ``coordinator.heartbeat`` seconds, until cancelled."""

    def __init__(
        self,
        session: FleetSession,
        limiter: FleetLimiter,
        registry: TaskRegistry,
        *,
        clock: Clock,
        on_adopt: AdoptFn,
    ) -> None:
        self._session = session
        self._limiter = limiter
        self._registry = registry
        self._clock = clock
        self._on_adopt = on_adopt
        self.beats = 0
        self.adopted = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Beat once (so the process is known before its first submit), then keep beating."""
        await self.beat()
        task_status.started()
        while True:
            await self._clock.sleep(self._session.coordinator.heartbeat)
            await self.beat()

    async def beat(self) -> None:
        """One heartbeat; a Redis failure puts the limiter on its local share."""
        limiter = self._limiter
        try:
            async with limiter.lock:
                ttl_ms = int(self._session.coordinator.ttl * 1000)
                reply = await self._session.script(
                    scripts.BEAT, self._session.owner, ttl_ms, *limiter.lease_list()
                )
                known, live, queued, *dead = reply
                self.beats += 1
                limiter.fleet_queued = int(queued)
                if not int(known) or not limiter.connected:
                    # Rejoining (Redis restarted, or was away): put back what we hold.
                    leases = limiter.lease_list()
                    if leases:
                        await self._session.script(scripts.OCCUPY, self._session.owner, *leases)
                    await self._registry.republish()
                limiter.rejoined(int(live))
                for owner in dead:
                    await self._adopt(str(owner))
        except CoordinatorError as exc:
            limiter.lost(exc)

    async def _adopt(self, owner: str) -> None:
        for record in await self._registry.adopt(owner):
            if record.lease is not None and record.lease not in self._limiter.held:
                slot = self._limiter.adopted(record.lease, record.model)
            else:
                # Its lease is gone (the task ended before its owner died): hold a slot
                # until our first poll sees the end.
                taken = self._limiter.occupy(record.model)
                assert isinstance(taken, FleetSlot)
                slot = taken
            self.adopted += 1
            self._on_adopt(record, slot)

    async def leave(self) -> None:
        """Say goodbye: the fleet adopts what this process leaves unfinished at once."""
        try:
            with anyio.CancelScope(shield=True):
                await self._session.script(scripts.LEAVE, self._session.owner)
        except CoordinatorError as exc:
            logger.info("could not leave the fleet cleanly (%s); its heartbeat will expire", exc)

    def __repr__(self) -> str:
        return f"Heartbeat(owner={self._session.owner!r}, beats={self.beats})"
