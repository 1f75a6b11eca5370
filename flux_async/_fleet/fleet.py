"""A client's membership in a fleet: the parts ``AsyncFlux`` holds when given a coordinator.

:class:`Fleet` builds the session, the Redis-backed limiter, the task registry and the
heartbeat, starts the background loops in the client's task group, and leaves the fleet
when the client closes. The client calls four things: :attr:`limiter` (in place of its
own), :meth:`register` after a submit, :meth:`unregister` once an image is saved, and
the ``on_adopt`` callback it passes to :meth:`start`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import anyio
import anyio.abc

from .._core._clock import Clock
from .._core._paths import check_file_name, task_stem
from .._engine._limits import Slot
from .._errors import CoordinatorError, ValidationError
from .._request._models import Task
from .._web._events import CoordinatorChanged, EventEmitter
from .._web._webhook_app import WebhookReceiver
from .coordinator import Coordinator, FleetSession
from .heartbeat import AdoptFn, Heartbeat
from .limiter import FleetLimiter, FleetSlot
from .registry import TaskRecord, TaskRegistry
from .routing import WebhookRouter

__all__ = ["Fleet", "TaskRecord", "adoption_target"]

logger = logging.getLogger("flux_async")


class Fleet:
    """One process's share of a fleet: limiter, registry and heartbeat over one session."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        provider: str,
        api_key: str,
        limit: int,
        per_model: Mapping[str, int] | None,
        clock: Clock,
        quiet_period: float,
        task_timeout: float,
        events: EventEmitter,
    ) -> None:
        self.session = FleetSession(coordinator, provider=provider, api_key=api_key, clock=clock)
        self._events = events
        self._clock = clock
        self.limiter = FleetLimiter(
            limit,
            self.session,
            per_model=per_model,
            clock=clock,
            quiet_period=quiet_period,
            on_change=self._changed,
        )
        self.registry = TaskRegistry(
            self.session, self.limiter, clock=clock, task_timeout=task_timeout
        )
        self.heartbeat: Heartbeat | None = None
        self.router = WebhookRouter(self.session, retry=coordinator.heartbeat)

    def _changed(self, lost: bool, fleet_size: int, share: int) -> None:
        state = "lost" if lost else "rejoined"
        self._events.emit(CoordinatorChanged(state, fleet_size, share, self._clock.time()))

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        """Connect; ``stack`` leaves the fleet and closes the connection at the end.

        Enter it before the task group the loops run in, so the loops have stopped when
        this process leaves (the fleet then adopts what it leaves unfinished).
        """
        await self.session.open()
        stack.push_async_callback(self.session.aclose)
        stack.push_async_callback(self._leave)

    async def _leave(self) -> None:
        if self.heartbeat is None:
            return
        # Records of saved tasks whose delete the close overtook go first: the leave
        # hands what is still recorded to a survivor, which would download it again.
        with anyio.CancelScope(shield=True):
            try:
                await self.registry.flush()
            except CoordinatorError as exc:
                logger.info("could not drop saved tasks' records (%s)", exc)
        await self.heartbeat.leave()

    async def start(
        self,
        tg: anyio.abc.TaskGroup,
        on_adopt: AdoptFn,
        webhooks: WebhookReceiver | None = None,
    ) -> None:
        """Beat once, then run the heartbeat and the pump in ``tg``.

        With ``webhooks`` (a client that receives them), deliveries for other processes'
        tasks are forwarded to their owners, and ours are taken from the fleet.
        """
        heartbeat = Heartbeat(
            self.session, self.limiter, self.registry, clock=self._clock, on_adopt=on_adopt
        )
        self.heartbeat = heartbeat
        self.limiter.bind(tg)
        await tg.start(heartbeat.run)
        await tg.start(self.limiter.pump)
        if webhooks is not None:
            webhooks.forward = self.router.forward
            await tg.start(self.router.listen, webhooks.forwarded)

    def register(self, task: Task, slot: Slot, dest: Path | None) -> None:
        """Record a task just submitted (or adopted) under this process."""
        lease = slot.lease if isinstance(slot, FleetSlot) else None
        self.registry.register(task, lease, dest)

    async def registered(self, task_id: str) -> None:
        """Wait until a just-submitted task's record reached Redis (or failed to)."""
        await self.registry.written(task_id)

    def unregister(self, task_id: str) -> None:
        """Drop a task's record: its image is saved or it ended without one."""
        self.registry.unregister(task_id)

    def __repr__(self) -> str:
        return f"Fleet({self.session!r}, {self.limiter!r})"


async def adoption_target(record: TaskRecord, orphan_dir: Path | None) -> tuple[Path, bool]:
    """Return where an adopted task's image goes, and whether it is its recorded place.

    The recorded destination when its folder exists and is writable here (another
    machine's path usually is not); else ``orphan_dir`` (default ``./orphans``, created
    if needed) under the task id.
    """
    if record.dest:
        dest = Path(record.dest)
        folder = anyio.Path(dest.parent)
        # A record is a peer's word, not ours: its name must still be one plain name.
        if _plain(dest.name) and await folder.is_dir() and os.access(dest.parent, os.W_OK):
            return dest, True
    folder_path = orphan_dir if orphan_dir is not None else Path("orphans")
    await anyio.Path(folder_path).mkdir(parents=True, exist_ok=True)
    # The id is the server's string: only its sanitised form names a file.
    return folder_path / task_stem(record.id), False


def _plain(name: str) -> bool:
    """Whether ``name`` is one plain file name (``_paths.check_file_name``'s rules)."""
    try:
        check_file_name(name)
    except ValidationError:
        return False
    return True
