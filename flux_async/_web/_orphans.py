"""What happens to a task whose caller left, and how the client knows its work is done.

A web backend's caller goes away whenever its HTTP client does: the request handler is
cancelled in the middle of ``await flux.generate(...)``. By then the task may be
submitted and billed. BFL has no cancel endpoint, so the task runs on and keeps its
active-task slot until the scheduler sees it end, whoever waits for it.
``AsyncFlux(on_cancel=...)`` says what becomes of its image:

- ``"orphan"`` (the default): the image is saved when the task is ready, to
  ``orphan_dir`` (as ``<task id made safe>.<ext>``, see ``_paths.task_stem``; never
  replacing a file) or else where the caller asked for it, and
  ``on_orphan(image)`` is called with the :class:`GeneratedImage`. Never silently lost.
- ``"abandon"``: the image is not downloaded (a warning names the task).

Either way a :class:`~flux_async._web._events.TaskOrphaned` event is emitted when the caller
leaves, and the scheduler's memory of the task is freed once it ends.

:class:`WorkTracker` counts paid work in progress (callers past their submit, orphans
being saved) so that ``aclose(drain=...)`` can wait for it, for a bounded time.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import anyio
import anyio.abc

from .._core._clock import Clock
from .._core._guard import unexpected
from .._core._paths import task_stem
from .._errors import ConfigurationError, FluxError
from .._request._models import GeneratedImage, Task, TaskResult
from ._events import EventEmitter, TaskOrphaned

__all__ = ["OnCancel", "OrphanHook", "OrphanKeeper", "OrphanStatistics", "WorkTracker"]

logger = logging.getLogger("flux_async")

OnCancel = Literal["orphan", "abandon"]
OrphanHook = Callable[[GeneratedImage], Awaitable[None] | None]
WaitFn = Callable[[Task], Awaitable[TaskResult]]
SaveFn = Callable[[TaskResult, Path], Awaitable[Path]]


@dataclass(frozen=True, slots=True)
class OrphanStatistics:
    """Counters of tasks whose caller left, for export as metrics."""

    adopted: int  # callers that left a submitted task
    active: int  # orphans not yet saved or let go
    saved: int  # orphans whose image was saved
    abandoned: int  # orphans let go by on_cancel="abandon"
    failed: int  # orphans that ended without an image (task failed, save failed, close)


class WorkTracker:
    """Count paid work in progress and wake whoever waits for the count to change."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.active = 0
        self._changed = anyio.Event()

    def enter(self) -> None:
        self.active += 1

    def exit(self) -> None:
        self.active -= 1
        self.notify()

    def notify(self) -> None:
        """Wake :meth:`wait_idle` to check again (a task ended, a caller finished)."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_idle(self, seconds: float, idle: Callable[[], bool]) -> bool:
        """Wait up to ``seconds`` (client clock) until no work is active and ``idle()``."""
        if seconds <= 0:
            return self.active == 0 and idle()
        with anyio.CancelScope() as scope:

            async def alarm() -> None:
                await self._clock.sleep(seconds)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(alarm)
                while not (self.active == 0 and idle()):
                    await self._changed.wait()
                tg.cancel_scope.cancel()
        return self.active == 0 and idle()


class OrphanKeeper:
    """Take over tasks whose caller left, and see each to the end ``on_cancel`` names."""

    def __init__(
        self,
        on_cancel: OnCancel,
        *,
        orphan_dir: str | Path | None,
        on_orphan: OrphanHook | None,
        events: EventEmitter,
        work: WorkTracker,
    ) -> None:
        if on_cancel not in ("orphan", "abandon"):
            raise ConfigurationError(f"on_cancel must be 'orphan' or 'abandon', got {on_cancel!r}")
        if on_cancel == "abandon" and (orphan_dir is not None or on_orphan is not None):
            raise ConfigurationError("orphan_dir and on_orphan need on_cancel='orphan'")
        self.on_cancel: OnCancel = on_cancel
        self.orphan_dir = Path(orphan_dir) if orphan_dir is not None else None
        self._on_orphan = on_orphan
        self._events = events
        self._work = work
        self._tg: anyio.abc.TaskGroup | None = None
        self._wait: WaitFn | None = None
        self._save: SaveFn | None = None
        self._forget: Callable[[str], None] | None = None
        self._pending: set[str] = set()
        self._adopted = self._saved = self._abandoned = self._failed = 0

    def bind(
        self,
        tg: anyio.abc.TaskGroup,
        *,
        wait: WaitFn,
        save: SaveFn,
        forget: Callable[[str], None],
    ) -> None:
        """Attach to an opened client: its task group, and how to wait, save and forget."""
        self._tg, self._wait, self._save, self._forget = tg, wait, save, forget

    def guard(self, task: Task, dest: Path) -> CallerGuard:
        """Return the context a caller's wait-and-save runs in (see :class:`CallerGuard`)."""
        return CallerGuard(self, task, dest)

    def is_adopted(self, task_id: str) -> bool:
        """Return whether ``task_id`` is an orphan being seen to its end."""
        return task_id in self._pending

    def lost(self) -> list[str]:
        """Return the ids of orphans not yet saved (for the warning at a hard close)."""
        return sorted(self._pending)

    def _finish(self, task_id: str) -> None:
        if self._forget is not None:
            self._forget(task_id)
        self._work.exit()

    def adopt(
        self, task: Task, dest: Path, result: TaskResult | None, *, exact: bool = False
    ) -> None:
        """Take over ``task`` (its caller was cancelled); the caller's work unit comes along.

        ``exact``: save to ``dest`` even when ``orphan_dir`` is set (a task adopted from a
        dead process of the fleet, whose recorded destination is reachable).
        """
        self._adopted += 1
        self._events.emit(
            TaskOrphaned(task.id, task.model, task.cost, self.on_cancel, self._events.clock.time())
        )
        tg = self._tg
        if tg is None or tg.cancel_scope.cancel_called:
            # The client itself is stopping: nothing can outlive it.
            self._failed += 1
            logger.warning(
                "task %s (billed) lost its caller while the client closed; image not saved",
                task.id,
                extra={"task_id": task.id},
            )
            self._finish(task.id)
            return
        self._pending.add(task.id)
        tg.start_soon(self._keep, task, dest, result, exact)

    async def _keep(
        self, task: Task, dest: Path, result: TaskResult | None, exact: bool = False
    ) -> None:
        try:
            if result is None and self._wait is not None:
                result = await self._wait(task)
            if self.on_cancel == "abandon":
                self._abandoned += 1
                logger.warning(
                    "task %s ended after its caller left; its image was not saved "
                    "(on_cancel='abandon')",
                    task.id,
                    extra={"task_id": task.id},
                )
                return
            if result is None or self._save is None:
                return
            # The id is the server's string: only its sanitised form names a file.
            fallback = self.orphan_dir / task_stem(task.id) if self.orphan_dir else None
            target = dest if exact or fallback is None else fallback
            path = await self._save(result, target)
            self._saved += 1
            image = GeneratedImage(
                path=path,
                task_id=task.id,
                model=task.model,
                prompt=task.prompt,
                seed=result.seed,
                cost=task.cost,
                size=(await anyio.Path(path).stat()).st_size,
                prompt_used=result.prompt,
            )
            await self._hand_over(image)
        except Exception as exc:  # noqa: BLE001 - FluxError expected; anything else guarded
            if not isinstance(exc, FluxError):
                unexpected(exc, task_id=task.id, where="saving an orphan")
            self._failed += 1
            logger.warning(
                "orphaned task %s ended without a saved image: %s",
                task.id,
                type(exc).__name__,
                extra={"task_id": task.id},
            )
        except anyio.get_cancelled_exc_class():
            self._failed += 1
            logger.warning(
                "orphaned task %s not saved: the client closed first",
                task.id,
                extra={"task_id": task.id},
            )
            raise
        finally:
            self._pending.discard(task.id)
            self._finish(task.id)

    async def _hand_over(self, image: GeneratedImage) -> None:
        if self._on_orphan is None:
            return
        try:
            returned = self._on_orphan(image)
            if inspect.isawaitable(returned):
                await returned
        except Exception:  # the user's hook must not take the client down
            logger.exception("on_orphan hook failed for task %s", image.task_id)

    def statistics(self) -> OrphanStatistics:
        """Return the counters."""
        return OrphanStatistics(
            adopted=self._adopted,
            active=len(self._pending),
            saved=self._saved,
            abandoned=self._abandoned,
            failed=self._failed,
        )

    def __repr__(self) -> str:
        return f"OrphanKeeper(on_cancel={self.on_cancel!r}, active={len(self._pending)})"


class CallerGuard:
    """The span of one caller's paid work: from its submit to its saved image.

    On a normal exit, or an error, the scheduler forgets the task. When the caller is
    cancelled, the task and the result so far (set :attr:`result` once it is known) go
    to the :class:`OrphanKeeper` instead, which forgets the task when it is done.
    """

    __slots__ = ("_dest", "_keeper", "_task", "result")

    def __init__(self, keeper: OrphanKeeper, task: Task, dest: Path) -> None:
        self._keeper = keeper
        self._task = task
        self._dest = dest
        self.result: TaskResult | None = None

    def __enter__(self) -> CallerGuard:
        self._keeper._work.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, anyio.get_cancelled_exc_class()):
            self._keeper.adopt(self._task, self._dest, self.result)
        else:
            self._keeper._finish(self._task.id)
