"""The one polling loop that drives every pending task of a client.

A min-heap of ``(due, seq, entry)`` and one timer, re-armed for the earliest entry (the
shape of aiolimiter's ``_wake_next``): no sleeping coroutine per task. When an entry is
due, the loop takes a poll slot (at most ``max_concurrent_polls`` requests in flight) and
a token of the :class:`RateBudget` (on average one status request per pending task per
second, bursts up to twice that; when none is left the same timer is armed for the next
token; when several entries are due, the one the policy values most goes first), and
runs one short poll job in its own task group; the job reads the reply and
either resolves the entry or pushes it back with its next due time from the
:class:`PollPolicy`.

The scheduler is handed a poll function and never imports httpx. Each entry resolves
exactly once, to a :class:`TaskResult` or a :class:`FluxError`, and calls its
``on_terminal`` callback then (the limiter's slot is released there).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from .._core._backoff import compute_backoff
from .._core._clock import Clock
from .._core._guard import unexpected
from .._core._text import clean_text
from .._errors import (
    AuthenticationError,
    BadRequestError,
    FluxError,
    TaskError,
)
from .._polling._budget import RateBudget
from .._polling._policy import PollPolicy, PollState
from .._request._models import PollReply, Status, Task, TaskResult
from .._request._replies import failure_for, not_found, ready_without_sample, unknown_status
from ._poll_entry import PollEntry, SchedulerStatistics, most_valuable_due

__all__ = ["PollFn", "Scheduler", "SchedulerStatistics"]

logger = logging.getLogger("flux_async")

PollFn = Callable[[Task], Awaitable[PollReply]]

# Never wait less than this for a budget token: a shorter sleep may not move the clock.
_MIN_BUDGET_WAIT = 1e-3


class Scheduler:
    """Poll every registered task from one loop until each reaches a terminal status.

    Args:
        poll: fetch one task's status (raises FluxError subclasses on HTTP failures).
        clock: the time door.
        policy: decides when each task is polled.
        max_concurrent_polls: poll requests allowed on the wire at once.
        task_timeout: seconds from submit after which a task fails with TaskTimeoutError.
        not_found_grace: seconds after submit during which "Task not found" means "not
            replicated yet" rather than "unknown id".
        unknown_status_tolerance: seconds an unrecognised status is tolerated.
        error_backoff_cap: cap of the backoff after a failed poll request, in seconds.
        budget: the poll-rate budget (default: one poll per pending task per second,
            bursts up to twice that).
        result_retention: seconds a finished outcome is kept for a later ``wait`` before
            it is dropped (its result URL has expired by then anyway), so a long-lived
            client's memory does not grow with every task it ever ran.
    """

    def __init__(
        self,
        poll: PollFn,
        *,
        clock: Clock,
        policy: PollPolicy,
        max_concurrent_polls: int = 16,
        task_timeout: float = 900.0,
        not_found_grace: float = 10.0,
        unknown_status_tolerance: float = 60.0,
        error_backoff_cap: float = 10.0,
        budget: RateBudget | None = None,
        result_retention: float = 900.0,
    ) -> None:
        if max_concurrent_polls < 1:
            raise ValueError("max_concurrent_polls must be >= 1")
        self._poll = poll
        self._clock = clock
        self._policy = policy
        self._poll_limit = max_concurrent_polls
        self._task_timeout = task_timeout
        self._not_found_grace = not_found_grace
        self._unknown_tolerance = unknown_status_tolerance
        self._error_cap = error_backoff_cap
        self._budget = budget if budget is not None else RateBudget()
        self._heap: list[tuple[float, int, PollEntry]] = []
        self._entries: dict[str, PollEntry] = {}
        self._seq = itertools.count()
        self._timer: anyio.CancelScope | None = None
        self._armed_for = math.inf
        self._in_flight = 0
        self._polls = 0
        self._poll_errors = 0
        self._resolved = 0
        self._pending = 0
        self._throttled = 0
        self._running = False
        self._slot_free = anyio.Event()
        self._retention = result_retention
        self._finished: collections.deque[tuple[float, str]] = collections.deque()

    # -- registration -------------------------------------------------------------------

    def add(
        self,
        task: Task,
        *,
        on_terminal: Callable[[TaskResult | FluxError], None] | None = None,
        key: str | None = None,
    ) -> None:
        """Start polling ``task`` (no-op when it is already registered)."""
        if task.id in self._entries:
            return
        now = self._clock.monotonic()
        self._prune(now)
        submitted = task.submitted_at if task.submitted_at else now
        state = PollState(key=key or f"{task.provider}:{task.model}", submitted_at=submitted)
        entry = PollEntry(
            task=task,
            state=state,
            deadline=submitted + self._task_timeout,
            on_terminal=on_terminal,
        )
        self._entries[task.id] = entry
        self._pending += 1
        if task.immediate is not None:
            self._handle_guarded(entry, task.immediate, now)
            return
        self._push(entry, now + max(0.0, self._policy.first_delay(state, now)))

    def is_registered(self, task_id: str) -> bool:
        return task_id in self._entries

    async def wait(self, task: Task) -> TaskResult:
        """Wait for ``task``'s outcome; register it first if needed.

        Cancelling the wait does not stop the polling: the task keeps its slot until it
        ends, so the limiter never believes a running task is gone.
        """
        if task.id not in self._entries:
            self.add(task)
        entry = self._entries[task.id]
        await entry.done.wait()
        outcome = entry.outcome
        if isinstance(outcome, TaskResult):
            return outcome
        if outcome is None:  # pragma: no cover - done is set only together with outcome
            raise RuntimeError("scheduler entry finished without an outcome")
        raise outcome

    def forget(self, task_id: str) -> None:
        """Drop a finished entry so its memory is freed (outstanding waits keep theirs)."""
        entry = self._entries.get(task_id)
        if entry is not None and entry.outcome is not None:
            del self._entries[task_id]

    def _prune(self, now: float) -> None:
        # Outcomes nobody collected within the retention are dropped, oldest first.
        while self._finished and self._finished[0][0] + self._retention <= now:
            _, task_id = self._finished.popleft()
            self.forget(task_id)

    def abandon_all(self, reason: FluxError) -> None:
        """Resolve every pending entry with ``reason`` (used when the client closes)."""
        for entry in list(self._entries.values()):
            if entry.resolve(reason):
                self._pending -= 1
        self._heap.clear()

    # -- the loop -----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the loop until cancelled; start it with ``task_group.start(scheduler.run)``."""
        if self._running:
            raise RuntimeError("the scheduler loop is already running")
        self._running = True
        try:
            async with anyio.create_task_group() as jobs:
                task_status.started()
                while True:
                    entry = await self._next_due()
                    while self._in_flight >= self._poll_limit:
                        self._slot_free = anyio.Event()
                        await self._slot_free.wait()
                    # The heap may have changed while we waited for a poll slot.
                    if not self._heap or self._heap[0][2] is not entry:
                        continue
                    now = self._clock.monotonic()
                    wait = self._budget.delay_for(now, self._pending)
                    if wait > 0.0:
                        # Out of tokens: the one timer waits for the next; then look again,
                        # since an earlier entry may have been pushed meanwhile.
                        self._throttled += 1
                        await self._clock.sleep(max(wait, _MIN_BUDGET_WAIT))
                        continue
                    entry = self._take_due(entry, now)
                    entry.seq = -1  # not queued while its poll is out
                    self._budget.take(now, self._pending)
                    self._in_flight += 1
                    jobs.start_soon(self._poll_job, entry)
        finally:
            self._running = False

    def _take_due(self, root: PollEntry, now: float) -> PollEntry:
        # Several polls due (the budget holds them back): the token goes to the task most
        # likely ended since last seen (``poll_value``); a chosen item left queued is stale.
        value = getattr(self._policy, "poll_value", None)
        choice = most_valuable_due(self._heap, now, value) if value is not None else None
        if choice is None or choice is root:
            heapq.heappop(self._heap)
        return choice or root

    async def _next_due(self) -> PollEntry:
        while True:
            # Skip entries that were resolved while queued (a webhook, a shutdown).
            while self._heap and (
                self._heap[0][2].outcome is not None or self._heap[0][1] != self._heap[0][2].seq
            ):
                heapq.heappop(self._heap)
            now = self._clock.monotonic()
            if self._heap and self._heap[0][0] <= now:
                return self._heap[0][2]
            due = self._heap[0][0] if self._heap else math.inf
            with anyio.CancelScope() as scope:
                self._timer, self._armed_for = scope, due
                try:
                    if due == math.inf:
                        await anyio.sleep_forever()
                    else:
                        await self._clock.sleep(due - now)
                finally:
                    self._timer, self._armed_for = None, math.inf

    def _push(self, entry: PollEntry, due: float) -> None:
        due = min(due, entry.deadline)
        entry.seq = next(self._seq)
        heapq.heappush(self._heap, (due, entry.seq, entry))
        if due < self._armed_for and self._timer is not None:
            # An earlier poll than the timer was armed for: wake the loop to re-arm.
            self._timer.cancel()

    async def _poll_job(self, entry: PollEntry) -> None:
        try:
            now = self._clock.monotonic()
            if now >= entry.deadline:
                self._finish(entry, entry.timed_out(self._task_timeout))
                return
            self._polls += 1
            entry.polls += 1
            try:
                reply = await self._poll(entry.task)
            except FluxError as exc:
                verdict = entry.judge_failure(exc)
                if verdict == "not found":
                    reply = PollReply(id=entry.task.id, status=Status.NOT_FOUND)
                else:
                    if verdict == "retry":
                        self._retry_later(entry, exc)
                    else:
                        self._finish(entry, exc)
                    return
            entry.failures = entry.malformed = 0
            self._handle_guarded(entry, reply, self._clock.monotonic())
        except Exception as exc:  # noqa: BLE001 - the guard: this task fails, the loop goes on
            self._finish(entry, unexpected(exc, task_id=entry.task.id, where="a poll"))
        finally:
            self._in_flight -= 1
            self._slot_free.set()

    def _retry_later(self, entry: PollEntry, exc: FluxError) -> None:
        self._poll_errors += 1
        entry.failures += 1
        delay = compute_backoff(entry.failures - 1, base=0.5, cap=self._error_cap)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, retry_after)
        logger.debug("poll of task %s failed (%s); retrying in %.2f s", entry.task.id, exc, delay)
        self._push(entry, self._clock.monotonic() + delay)

    def _handle_guarded(self, entry: PollEntry, reply: PollReply, now: float) -> None:
        """Apply ``reply``; anything unforeseen fails this task alone (see ``_guard``)."""
        try:
            self._handle_reply(entry, reply, now)
        except Exception as exc:  # noqa: BLE001 - the guard: this task fails, the loop goes on
            self._finish(entry, unexpected(exc, task_id=entry.task.id, where="a reply"))

    def _handle_reply(self, entry: PollEntry, reply: PollReply, now: float) -> None:
        if entry.outcome is not None:
            return
        entry.last_reply = reply
        task_id = entry.task.id
        status = reply.status
        age = now - entry.state.submitted_at
        failure = failure_for(task_id, reply)
        if status == Status.PENDING:
            entry.first_unknown_at = None
            progress = reply.progress if isinstance(reply.progress, (int, float)) else None
            self._push(entry, now + self._policy.next_delay(entry.state, now, progress=progress))
        elif status == Status.READY:
            self._finish(entry, self._ready(entry, reply, now))
        elif failure is not None:
            self._finish(entry, failure)
        elif status == Status.NOT_FOUND:
            if age < self._not_found_grace:
                self._push(entry, now + min(1.0, self._not_found_grace - age))
            else:
                self._finish(entry, not_found(task_id, reply, age))
        else:
            if entry.first_unknown_at is None:
                entry.first_unknown_at = now
                shown = clean_text(status, 60)
                logger.warning("task %s has unknown status %r; tolerating it", task_id, shown)
            if now - entry.first_unknown_at >= self._unknown_tolerance:
                self._finish(entry, unknown_status(task_id, reply, now - entry.first_unknown_at))
            else:
                self._push(entry, now + self._policy.next_delay(entry.state, now, progress=None))

    def _ready(self, entry: PollEntry, reply: PollReply, now: float) -> TaskResult | FluxError:
        sample = reply.sample()
        if sample is None or not sample.sample:
            return ready_without_sample(entry.task.id, reply)
        state = entry.state
        if entry.task.immediate is None:
            # The task finished somewhere in (last Pending poll, now]: interval-censored.
            # No Pending poll seen means anywhere since submit, i.e. censored at 0.
            last = state.last_poll_at
            censored = 0.0 if last is None else max(0.0, last - state.submitted_at)
            self._policy.observe_completion(
                state.key, now - state.submitted_at, censored_at=censored, state=state
            )
            self._replan(state.key, now)
        return entry.result(reply, sample, now)

    def _replan(self, key: str, now: float) -> None:
        # A policy that learns fast (see ``_regime``) moves the queued polls of the key
        # it just learned about, so a cold start pays for its guess once, not per task.
        replan = getattr(self._policy, "replan_delay", None)
        if replan is None:
            return
        for entry in list(self._entries.values()):
            if entry.outcome is None and entry.seq >= 0 and entry.state.key == key:
                delay = replan(entry.state, now)
                if delay is None:
                    return  # the key is warm: every queued poll stands
                self._push(entry, now + delay)

    def _finish(self, entry: PollEntry, outcome: TaskResult | FluxError) -> None:
        if entry.outcome is None:
            self._resolved += 1
            self._pending -= 1
            now = self._clock.monotonic()
            self._finished.append((now, entry.task.id))
            self._prune(now)
        if isinstance(outcome, (TaskError, AuthenticationError, BadRequestError)):
            logger.info("task %s ended: %s", entry.task.id, outcome)
        entry.resolve(outcome)

    def resolve_from_outside(self, task_id: str, reply: PollReply) -> bool:
        """Apply a reply obtained elsewhere (a confirmed webhook); True if it was applied."""
        entry = self._entries.get(task_id)
        if entry is None or entry.outcome is not None:
            return False
        self._handle_guarded(entry, reply, self._clock.monotonic())
        return True

    def statistics(self) -> SchedulerStatistics:
        """Return a snapshot of the loop's state."""
        pending = self._pending
        live = [due for due, seq, e in self._heap if e.outcome is None and seq == e.seq]
        next_due = min(live) - self._clock.monotonic() if live else None
        return SchedulerStatistics(
            pending=pending,
            in_flight=self._in_flight,
            polls=self._polls,
            poll_errors=self._poll_errors,
            resolved=self._resolved,
            next_due_in=next_due,
            throttled=self._throttled,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"Scheduler(pending={s.pending}, in_flight={s.in_flight}, polls={s.polls})"
