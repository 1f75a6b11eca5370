"""The simulator's tasks and accounts, all computed from the clock.

No background task moves a task along: its status is a function of the time since it was
submitted. Slots and refunds are settled lazily, in end-time order, from a heap, so each
request costs O(log n) however many tasks exist.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass

from .._request._models import Status

__all__ = ["Plan", "SimState", "SimTask"]

# Moderated tasks are not billed: their cost comes back when they end.
_REFUNDED = frozenset({Status.REQUEST_MODERATED, Status.CONTENT_MODERATED})


@dataclass(frozen=True, slots=True)
class Plan:
    """A script for the next submitted task (see ``Simulator.plan_next``)."""

    duration: float | None = None
    status: str = Status.READY
    progress: bool = True
    cost: float | None = None


@dataclass(slots=True)
class SimTask:
    """One submitted task.

    ``submitted_at`` is on the simulator clock's ``monotonic()``; ``start_time`` and
    ``end_time`` are wall-clock epoch seconds, as ``result`` reports them. ``outcome`` is
    the status answered once ``duration`` seconds have passed ("Task not found" is
    answered from the start). ``sample_expiry`` is the epoch second the result URL
    handed out expires at (None until the task is Ready and polled).
    """

    id: str
    model: str
    api_key: str
    prompt: str | None
    seed: int
    width: int
    height: int
    output_format: str
    cost: float
    duration: float
    outcome: str
    progress: bool
    submitted_at: float
    start_time: float
    sample_expiry: float | None = None

    @property
    def end_at(self) -> float:
        """Return the monotonic second the task stops being active."""
        return self.submitted_at + self.duration

    @property
    def end_time(self) -> float:
        """Return the wall-clock second the task finished (``result.end_time``)."""
        return self.start_time + self.duration

    def status_at(self, now: float) -> str:
        """Return the status a poll at monotonic second ``now`` answers."""
        if self.outcome == Status.NOT_FOUND:
            return Status.NOT_FOUND
        return Status.PENDING if now < self.end_at else self.outcome

    def progress_at(self, now: float) -> float | None:
        """Return Pending's ``progress`` (0..1, two decimals), or None when disabled."""
        if not self.progress:
            return None
        if self.duration <= 0:
            return 1.0
        return round(min(max(now - self.submitted_at, 0.0) / self.duration, 1.0), 2)

    def __repr__(self) -> str:
        return f"SimTask(id={self.id!r}, model={self.model!r}, outcome={self.outcome!r})"


class SimState:
    """Tasks by id, active slots per key (and per key and model), and the credit balance."""

    def __init__(self, credits: float, retention: float | None) -> None:
        self.tasks: dict[str, SimTask] = {}
        self.credits = credits
        self._retention = retention
        self._active: Counter[str] = Counter()
        self._active_model: Counter[tuple[str, str]] = Counter()
        self._seq = itertools.count()
        self._ends: list[tuple[float, int, str]] = []
        self._expiries: list[tuple[float, int, str]] = []

    def add(self, task: SimTask) -> None:
        """Store a new task, take its slots and charge its cost."""
        self.tasks[task.id] = task
        self._active[task.api_key] += 1
        self._active_model[task.api_key, task.model] += 1
        self.credits -= task.cost
        heapq.heappush(self._ends, (task.end_at, next(self._seq), task.id))
        if self._retention is not None:
            forget_at = task.end_at + self._retention
            heapq.heappush(self._expiries, (forget_at, next(self._seq), task.id))

    def settle(self, now: float) -> list[str]:
        """Free the slots of tasks ended by ``now``; return the ids of tasks forgotten."""
        while self._ends and self._ends[0][0] <= now:
            task = self.tasks[heapq.heappop(self._ends)[2]]
            self._active[task.api_key] -= 1
            self._active_model[task.api_key, task.model] -= 1
            if task.outcome in _REFUNDED:
                self.credits += task.cost
        forgotten: list[str] = []
        # Expiries come after their task's end, so the end above has been settled.
        while self._expiries and self._expiries[0][0] <= now:
            task_id = heapq.heappop(self._expiries)[2]
            del self.tasks[task_id]
            forgotten.append(task_id)
        return forgotten

    def active(self, api_key: str, model: str | None = None) -> int:
        """Return how many tasks ``api_key`` has active (of ``model``, when given)."""
        if model is None:
            return self._active[api_key]
        return self._active_model[api_key, model]

    def __repr__(self) -> str:
        return f"SimState(tasks={len(self.tasks)}, credits={self.credits:.2f})"
