"""One task as the scheduler tracks it, and the scheduler's statistics.

A :class:`PollEntry` carries a task from registration to its one outcome: its polling
state, its deadline, the counters of failed and malformed polls, and the heap sequence
number that tells its live heap item from stale ones. It resolves exactly once and
calls its ``on_terminal`` callback then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio

from .._core._guard import unexpected
from .._errors import (
    APIError,
    FluxError,
    MalformedReplyError,
    RateLimitError,
    ServerError,
    TaskTimeoutError,
    TransportError,
)
from .._polling._policy import PollState
from .._request._models import PollReply, SampleResult, Task, TaskResult

__all__ = ["PollEntry", "PollVerdict", "SchedulerStatistics", "most_valuable_due"]

logger = logging.getLogger("flux_async")

# Malformed poll replies in a row before the task fails with the last one: a proxy's
# passing garbage gets another chance, a server that always sends it does not.
MAX_MALFORMED = 3

PollVerdict = Literal["retry", "fail", "not found"]


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A snapshot of the scheduler, for metrics and debugging."""

    pending: int  # tasks not yet terminal
    in_flight: int  # poll requests on the wire now
    polls: int  # poll requests made since start
    poll_errors: int  # polls that failed in transport or with a 5xx
    resolved: int  # tasks that reached an outcome
    next_due_in: float | None  # seconds until the earliest poll, None when idle
    throttled: int = 0  # times a due poll waited for the poll-rate budget


@dataclass(eq=False)
class PollEntry:
    """A registered task: what the scheduler knows of it until its outcome is set."""

    task: Task
    state: PollState
    deadline: float
    on_terminal: Callable[[TaskResult | FluxError], None] | None
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: TaskResult | FluxError | None = None
    first_unknown_at: float | None = None
    failures: int = 0
    malformed: int = 0
    last_reply: PollReply | None = None
    polls: int = 0
    seq: int = -1  # the seq of this entry's live heap item; older items are stale

    def resolve(self, outcome: TaskResult | FluxError) -> bool:
        """Set the outcome once; return whether this call set it."""
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.done.set()
        if self.on_terminal is not None:
            callback, self.on_terminal = self.on_terminal, None
            try:
                callback(outcome)
            except Exception as exc:  # noqa: BLE001 - the guard: logged, and the loop goes on
                unexpected(exc, task_id=self.task.id, where="the task's end callback")
        return True

    def judge_failure(self, exc: FluxError) -> PollVerdict:
        """Return what a poll that raised ``exc`` means: poll again later, fail, or a 404.

        Transport trouble, 429 and 5xx are retried; a 404 is "Task not found" (the
        scheduler's grace decides); a malformed reply is retried until the
        ``MAX_MALFORMED``-th in a row; anything else (401, 402, 400) fails the task.
        """
        if isinstance(exc, TransportError | RateLimitError | ServerError):
            return "retry"
        if isinstance(exc, APIError):
            if exc.status_code == 404:
                return "not found"
            return "retry" if exc.status_code >= 500 else "fail"
        if isinstance(exc, MalformedReplyError):
            self.malformed += 1
            if self.malformed < MAX_MALFORMED:
                return "retry"
            logger.warning("%s", exc)
        return "fail"

    def timed_out(self, task_timeout: float) -> TaskTimeoutError:
        """Return the error of a task with no terminal status ``task_timeout`` s after submit."""
        last = self.last_reply
        return TaskTimeoutError(
            f"no terminal status within {task_timeout:.0f} s of submit",
            task_id=self.task.id,
            status=last.status if last else None,
            reply=last,
        )

    def result(self, reply: PollReply, sample: SampleResult, now: float) -> TaskResult:
        """Return the task's result from its Ready ``reply`` (seen at ``now``)."""
        return TaskResult(
            task=self.task,
            sample_url=sample.sample,
            seed=sample.seed,
            prompt=sample.prompt,
            start_time=sample.start_time,
            end_time=sample.end_time,
            ready_at=now,
            reply=reply,
        )


# How far the scheduler looks for a more valuable due poll: at most this many live due
# entries, among at most ``CHOICE_SCAN`` heap slots (stale items of re-planned or chosen
# entries sit there too): a bounded cost per poll however many tasks are pending.
CHOICE_REACH = 64
CHOICE_SCAN = 512


def most_valuable_due(
    heap: Sequence[tuple[float, int, PollEntry]],
    now: float,
    value: Callable[[PollState, float], float],
    reach: int = CHOICE_REACH,
) -> PollEntry | None:
    """Return the entry whose poll is worth most among the live items of ``heap`` due by
    ``now`` (the first ``reach`` of them in heap order, within its first
    :data:`CHOICE_SCAN` slots): one past its deadline first, else the highest
    ``value(state, now)`` (the earlier heap slot on a tie). None when fewer than two are
    due: the heap's order stands.
    """
    due: list[PollEntry] = []
    for at, seq, entry in heap[:CHOICE_SCAN]:
        if at <= now and seq == entry.seq and entry.outcome is None:
            due.append(entry)
            if len(due) == reach:
                break
    if len(due) < 2:
        return None
    for entry in due:
        if now >= entry.deadline:
            return entry
    return max(due, key=lambda entry: value(entry.state, now))
