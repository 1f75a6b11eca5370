"""What happened to a task, as frozen records handed to the user's hooks and to the logger.

The shape follows stamina's instrumentation: one frozen, slotted record per kind of
moment, and a hook protocol. A hook is a plain synchronous callable
``hook(event) -> None``; it runs on the event loop, so it must not block (push to a
queue, bump a counter, write a metric). An exception in a hook is logged on the
``flux_async`` logger with its traceback and never reaches the client.

Every event is also logged at DEBUG on the ``flux_async`` logger with the event's fields
in ``extra=`` (``record.event``, ``record.task_id``...). No event holds a URL: result URLs
carry their signature in the query string, and the key never enters an event at all.

Times: ``at`` is wall-clock epoch seconds from the client's clock; ``elapsed`` is
seconds since the task's submit on the client's monotonic clock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from .._core._clock import Clock
from .._errors import FluxError
from .._request._models import PollReply, Task, TaskResult

__all__ = [
    "CoordinatorChanged",
    "Event",
    "EventEmitter",
    "EventHook",
    "ImageSaved",
    "TaskFailed",
    "TaskOrphaned",
    "TaskPolled",
    "TaskReady",
    "TaskSubmitted",
    "WebhookReceived",
    "flatten_statistics",
]

logger = logging.getLogger("flux_async")


@dataclass(frozen=True, slots=True)
class TaskSubmitted:
    """A task entered this client's scheduler: just submitted, or resumed by ``wait``."""

    task_id: str
    model: str
    cost: float | None
    webhook: bool  # whether a webhook is expected (polling runs at the fallback cadence)
    at: float


@dataclass(frozen=True, slots=True)
class TaskPolled:
    """One poll request for a task ended: ``status`` when it was answered, else ``error``."""

    task_id: str
    status: str | None
    error: str | None
    at: float


@dataclass(frozen=True, slots=True)
class TaskReady:
    """The scheduler saw ``Ready``; the slot is free and the download may start."""

    task_id: str
    model: str
    elapsed: float
    at: float


@dataclass(frozen=True, slots=True)
class ImageSaved:
    """An image is on disk under ``path``; ``orphan`` when its caller had left."""

    task_id: str
    model: str
    path: Path
    size: int
    elapsed: float
    orphan: bool
    at: float


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """A task ended without a saved image: ``error`` is the exception's class name."""

    task_id: str | None
    model: str | None
    error: str
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class TaskOrphaned:
    """A caller left while its (possibly billed) task was unfinished or unsaved.

    ``on_cancel`` says what happens next: ``"orphan"`` saves the image when it is ready
    (an :class:`ImageSaved` with ``orphan=True`` follows), ``"abandon"`` lets it go.
    """

    task_id: str
    model: str
    cost: float | None
    on_cancel: str
    at: float


@dataclass(frozen=True, slots=True)
class CoordinatorChanged:
    """This process lost or regained the fleet's coordinator (Redis), see docs/fleet.md.

    ``state`` is ``"lost"`` (running on ``local_share`` slots of the cap) or
    ``"rejoined"``; ``fleet_size`` is the last number of live processes seen.
    """

    state: str
    fleet_size: int
    local_share: int
    at: float


@dataclass(frozen=True, slots=True)
class WebhookReceived:
    """A webhook delivery was handled; ``action`` says what the client did with it.

    ``rejected`` (``reason`` says why), ``duplicate``, ``ignored`` (unknown or finished
    task), ``noted`` (a Pending claim), ``confirming`` (a terminal claim, checked by one
    poll), ``resolved`` (the confirming poll ended the task) or ``unconfirmed``.
    """

    task_id: str | None
    status: str | None
    action: str
    reason: str | None
    at: float


Event = (
    TaskSubmitted
    | TaskPolled
    | TaskReady
    | ImageSaved
    | TaskFailed
    | TaskOrphaned
    | WebhookReceived
    | CoordinatorChanged
)


class EventHook(Protocol):
    """A synchronous callable that receives every event; it must return quickly."""

    def __call__(self, event: Event) -> None: ...


_NAMES: Final[dict[type[Any], str]] = {
    TaskSubmitted: "submitted",
    TaskPolled: "polled",
    TaskReady: "ready",
    ImageSaved: "saved",
    TaskFailed: "failed",
    TaskOrphaned: "orphaned",
    WebhookReceived: "webhook",
    CoordinatorChanged: "coordinator",
}


class EventEmitter:
    """Hand each event to every hook, in order, and log it as a structured record."""

    def __init__(self, hooks: Iterable[EventHook] = (), *, clock: Clock) -> None:
        self._hooks = tuple(hooks)
        for hook in self._hooks:
            if not callable(hook):
                raise TypeError(f"event hooks must be callables, got {hook!r}")
        self.clock = clock
        self.emitted = 0
        self.hook_errors = 0

    def emit(self, event: Event) -> None:
        """Log ``event`` and call every hook; a failing hook is logged, never raised."""
        self.emitted += 1
        name = _NAMES[type(event)]
        if logger.isEnabledFor(logging.DEBUG):
            fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
            extra = {"event": name, **fields}
            logger.debug("event %s: task %s", name, fields.get("task_id"), extra=extra)
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:  # a user's hook must never break the client
                self.hook_errors += 1
                logger.exception("event hook %r failed on a %s event", hook, name)

    # -- the client's moments, as one-liners for it to call ---------------------------

    def submitted(self, task: Task, *, webhook: bool) -> None:
        """Emit :class:`TaskSubmitted` for ``task``."""
        if self._hooks or logger.isEnabledFor(logging.DEBUG):
            self.emit(TaskSubmitted(task.id, task.model, task.cost, webhook, self.clock.time()))

    def ended(self, task: Task, outcome: TaskResult | FluxError) -> None:
        """Emit :class:`TaskReady` or :class:`TaskFailed` for a task the scheduler resolved."""
        if not (self._hooks or logger.isEnabledFor(logging.DEBUG)):
            return
        now = self.clock.time()
        if isinstance(outcome, TaskResult):
            elapsed = self.clock.monotonic() - task.submitted_at
            self.emit(TaskReady(task.id, task.model, elapsed, now))
        else:
            self.failed(outcome, task)

    def failed(self, error: FluxError, task: Task | None = None) -> None:
        """Emit :class:`TaskFailed` for ``error`` (of ``task`` when known)."""
        if self._hooks or logger.isEnabledFor(logging.DEBUG):
            task_id = task.id if task is not None else error.task_id
            model = task.model if task is not None else None
            name = type(error).__name__
            self.emit(TaskFailed(task_id, model, name, error.message, self.clock.time()))

    def saved(self, task: Task, path: Path, size: int, *, orphan: bool = False) -> None:
        """Emit :class:`ImageSaved`."""
        if self._hooks or logger.isEnabledFor(logging.DEBUG):
            elapsed = self.clock.monotonic() - task.submitted_at
            event = ImageSaved(task.id, task.model, path, size, elapsed, orphan, self.clock.time())
            self.emit(event)

    def observe_poll(
        self, poll: Callable[[Task], Awaitable[PollReply]]
    ) -> Callable[[Task], Awaitable[PollReply]]:
        """Return ``poll`` wrapped to emit :class:`TaskPolled` after each request."""
        if not self._hooks:
            return poll

        async def observed(task: Task) -> PollReply:
            try:
                reply = await poll(task)
            except FluxError as exc:
                self.emit(TaskPolled(task.id, None, type(exc).__name__, self.clock.time()))
                raise
            self.emit(TaskPolled(task.id, reply.status, None, self.clock.time()))
            return reply

        return observed

    def __repr__(self) -> str:
        return f"EventEmitter(hooks={len(self._hooks)}, emitted={self.emitted})"


def flatten_statistics(snapshot: object, prefix: str = "") -> dict[str, float]:
    """Return the numbers in a statistics dataclass as ``{"limiter.in_flight": 3, ...}``.

    Nested dataclasses and mappings add a dotted level (spaces in keys become ``_``);
    ``None`` values are left out and booleans become 0/1, so every value suits a gauge.
    """
    flat: dict[str, float] = {}
    if dataclasses.is_dataclass(snapshot) and not isinstance(snapshot, type):
        items: Iterable[tuple[str, Any]] = (
            (f.name, getattr(snapshot, f.name)) for f in dataclasses.fields(snapshot)
        )
    elif isinstance(snapshot, Mapping):
        items = ((str(k), v) for k, v in snapshot.items())
    else:
        raise TypeError(f"cannot flatten {type(snapshot).__name__}")
    for name, value in items:
        key = f"{prefix}{name.replace(' ', '_')}"
        if value is None:
            continue
        if isinstance(value, bool):
            flat[key] = int(value)
        elif isinstance(value, (int, float)):
            flat[key] = value
        elif isinstance(value, Mapping) or dataclasses.is_dataclass(value):
            flat.update(flatten_statistics(value, f"{key}."))
    return flat
