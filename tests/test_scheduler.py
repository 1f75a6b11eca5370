"""The shared polling scheduler, driven by a ManualClock and a scripted poll function."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import pytest

from flux_async import (
    AuthenticationError,
    FluxError,
    GenerationError,
    ManualClock,
    ModerationError,
    TaskNotFoundError,
    TaskResult,
    TaskTimeoutError,
    UnknownStatusError,
)
from flux_async._engine._scheduler import Scheduler
from flux_async._errors import APIError, ConnectError, RateLimitError, ServerError
from flux_async._polling._policy import BackoffPolicy, FixedIntervalPolicy, PollState
from flux_async._request._models import PollReply, Task

from ._util import settle

pytestmark = pytest.mark.anyio

Script = Callable[[float], PollReply | FluxError]


def ready(task_id: str) -> PollReply:
    return PollReply.model_validate(
        {
            "id": task_id,
            "status": "Ready",
            "result": {
                "sample": f"https://delivery.sim.invalid/{task_id}.jpeg?se=x&sig=y",
                "seed": 7,
            },
        }
    )


def status(task_id: str, value: str, progress: float | None = None) -> PollReply:
    return PollReply(id=task_id, status=value, progress=progress)


@dataclass
class FakeServer:
    """Answer polls from per-task scripts of (elapsed since add) -> reply."""

    clock: ManualClock
    scripts: dict[str, Script] = field(default_factory=dict)
    added_at: dict[str, float] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    gate: anyio.Event | None = None

    def task(self, task_id: str, script: Script) -> Task:
        self.scripts[task_id] = script
        self.added_at[task_id] = self.clock.monotonic()
        return Task(
            id=task_id,
            polling_url=f"https://api.eu2.sim.invalid/v1/get_result?id={task_id}",
            model="flux-2-pro",
            provider="bfl",
            submitted_at=self.clock.monotonic(),
        )

    async def poll(self, task: Task) -> PollReply:
        self.polls[task.id] = self.polls.get(task.id, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            answer = self.scripts[task.id](self.clock.monotonic() - self.added_at[task.id])
        finally:
            self.in_flight -= 1
        if isinstance(answer, FluxError):
            raise answer
        return answer


def done_after(seconds: float, task_id: str, final: PollReply | None = None) -> Script:
    def script(elapsed: float) -> PollReply:
        if elapsed >= seconds:
            return final or ready(task_id)
        return status(task_id, "Pending", progress=min(elapsed / seconds, 0.99))

    return script


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> FakeServer:
    return FakeServer(clock)


@pytest.fixture
async def scheduler(clock: ManualClock, server: FakeServer) -> AsyncIterator[Scheduler]:
    sched = Scheduler(
        server.poll,
        clock=clock,
        policy=BackoffPolicy(lambda _key: 2.0, cap=4.0, jitter=0.0),
        max_concurrent_polls=4,
        task_timeout=120.0,
        not_found_grace=5.0,
        unknown_status_tolerance=20.0,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        yield sched
        tg.cancel_scope.cancel()


async def drive(clock: ManualClock, until: Callable[[], bool], limit: float = 600.0) -> None:
    """Jump the clock from one sleeper's deadline to the next until ``until()`` holds."""
    start = clock.monotonic()
    while not until():
        await settle()
        if until():
            return
        deadline = clock.next_deadline
        assert deadline is not None, "nothing is sleeping and the condition is not met"
        assert deadline - start <= limit, "time ran past the limit"
        clock.advance(max(0.0, deadline - clock.monotonic()))


async def outcome_of(sched: Scheduler, task: Task) -> TaskResult | FluxError:
    try:
        return await sched.wait(task)
    except FluxError as exc:
        return exc


async def test_one_loop_and_one_timer_serve_many_tasks(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    tasks = [server.task(f"t{i}", done_after(1.0 + i * 0.37, f"t{i}")) for i in range(50)]
    for task in tasks:
        scheduler.add(task)
    results: dict[str, TaskResult | FluxError] = {}
    max_sleepers = 0

    async def collect(task: Task) -> None:
        results[task.id] = await outcome_of(scheduler, task)

    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(collect, task)

        def finished() -> bool:
            nonlocal max_sleepers
            max_sleepers = max(max_sleepers, clock.sleepers)
            return len(results) == len(tasks)

        await drive(clock, finished)

    assert all(isinstance(r, TaskResult) for r in results.values())
    # One timer for every pending task: never more than one sleeper on the clock.
    assert max_sleepers == 1
    stats = scheduler.statistics()
    assert stats.pending == 0
    assert stats.resolved == 50
    assert stats.polls == sum(server.polls.values())
    assert server.max_in_flight <= 4


@pytest.mark.parametrize(
    ("final", "error"),
    [
        ("Request Moderated", ModerationError),
        ("Content Moderated", ModerationError),
        ("Error", GenerationError),
        ("Failed", GenerationError),
    ],
)
async def test_terminal_failure_statuses_end_the_wait(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler, final: str, error: type[FluxError]
) -> None:
    task = server.task("t", done_after(3.0, "t", status("t", final)))
    terminal: list[object] = []
    scheduler.add(task, on_terminal=terminal.append)
    box: list[object] = []

    async def run() -> None:
        box.append(await outcome_of(scheduler, task))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await drive(clock, lambda: bool(box))
    assert isinstance(box[0], error)
    assert box[0].task_id == "t"
    assert final in str(box[0])
    assert len(terminal) == 1


async def test_ready_without_sample_is_a_generation_error(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", lambda _e: PollReply(id="t", status="Ready", result={"seed": 1}))
    box: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(box, outcome_of(scheduler, task)))
        await drive(clock, lambda: bool(box))
    assert isinstance(box[0], GenerationError)


async def _append(box: list[object], coro: object) -> None:
    box.append(await coro)  # type: ignore[misc]


async def test_task_not_found_right_after_submit_gets_a_grace(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    def script(elapsed: float) -> PollReply | FluxError:
        if elapsed < 3.0:
            return status("t", "Task not found")
        return done_after(4.0, "t")(elapsed)

    task = server.task("t", script)
    box: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(box, outcome_of(scheduler, task)))
        await drive(clock, lambda: bool(box))
    assert isinstance(box[0], TaskResult)


async def test_task_not_found_after_the_grace_fails(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", lambda _e: status("t", "Task not found"))
    box: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(box, outcome_of(scheduler, task)))
        await drive(clock, lambda: bool(box))
    assert isinstance(box[0], TaskNotFoundError)
    assert clock.monotonic() >= 5.0


async def test_http_404_on_poll_counts_as_task_not_found(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", lambda _e: APIError("gone", status_code=404, task_id="t"))
    box: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(box, outcome_of(scheduler, task)))
        await drive(clock, lambda: bool(box))
    assert isinstance(box[0], TaskNotFoundError)


async def test_unknown_status_is_tolerated_for_a_bounded_time(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    def recovering(elapsed: float) -> PollReply:
        return status("t", "Warming") if elapsed < 8.0 else ready("t")

    ok_task = server.task("ok", recovering)
    server.scripts["ok"] = lambda e: status("ok", "Warming") if e < 8.0 else ready("ok")
    bad_task = server.task("bad", lambda _e: status("bad", "Exploded"))
    box: dict[str, object] = {}

    async def run(task: Task) -> None:
        box[task.id] = await outcome_of(scheduler, task)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, ok_task)
        tg.start_soon(run, bad_task)
        await drive(clock, lambda: len(box) == 2)
    assert isinstance(box["ok"], TaskResult)
    assert isinstance(box["bad"], UnknownStatusError)
    assert "Exploded" in str(box["bad"])


async def test_each_task_has_an_overall_deadline(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", lambda e: status("t", "Pending", progress=0.1))
    box: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(box, outcome_of(scheduler, task)))
        await drive(clock, lambda: bool(box), limit=200.0)
    assert isinstance(box[0], TaskTimeoutError)
    assert isinstance(box[0], TimeoutError)
    assert 120.0 <= clock.monotonic() <= 125.0


async def test_transient_poll_failures_retry_and_retry_after_is_honoured(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    answers: list[PollReply | FluxError] = [
        ConnectError("refused", task_id="t"),
        ServerError("busy", status_code=503, task_id="t"),
        RateLimitError("slow down", status_code=429, retry_after=30.0, task_id="t"),
    ]
    poll_times: list[float] = []

    def script(_elapsed: float) -> PollReply | FluxError:
        poll_times.append(clock.monotonic())
        return answers.pop(0) if answers else ready("t")

    task = server.task("t", script)
    box: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(box, outcome_of(scheduler, task)))
        await drive(clock, lambda: bool(box))
    assert isinstance(box[0], TaskResult)
    assert len(poll_times) == 4
    assert poll_times[3] - poll_times[2] >= 30.0 - 1e-6
    assert scheduler.statistics().poll_errors == 3


async def test_auth_failure_on_poll_ends_the_task(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", lambda _e: AuthenticationError("no", status_code=403, task_id="t"))
    box: list[object] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _append(box, outcome_of(scheduler, task)))
        await drive(clock, lambda: bool(box))
    assert isinstance(box[0], AuthenticationError)


async def test_concurrent_polls_are_capped(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    server.gate = anyio.Event()
    tasks = [server.task(f"t{i}", done_after(0.5, f"t{i}")) for i in range(12)]
    for task in tasks:
        scheduler.add(task)
    clock.advance(5.0)
    await settle()
    assert server.in_flight == 4
    assert scheduler.statistics().in_flight == 4
    server.gate.set()
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(_append, results, outcome_of(scheduler, task))
        await drive(clock, lambda: len(results) == 12)
    assert server.max_in_flight == 4
    assert all(isinstance(r, TaskResult) for r in results)


async def test_cancelled_wait_keeps_polling_until_terminal(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", done_after(10.0, "t"))
    released: list[object] = []
    scheduler.add(task, on_terminal=released.append)
    with anyio.move_on_after(0):
        await scheduler.wait(task)
    await drive(clock, lambda: bool(released))
    assert isinstance(released[0], TaskResult)
    # The outcome is kept for a later wait, until forgotten.
    assert isinstance(await scheduler.wait(task), TaskResult)
    scheduler.forget("t")
    assert not scheduler.is_registered("t")


async def test_immediate_reply_resolves_without_polling(
    server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", done_after(1.0, "t")).model_copy(update={"immediate": ready("t")})
    result = await scheduler.wait(task)
    assert result.seed == 7
    assert server.polls.get("t", 0) == 0


async def test_resolve_from_outside_stops_polling(
    clock: ManualClock, server: FakeServer, scheduler: Scheduler
) -> None:
    task = server.task("t", lambda _e: status("t", "Pending"))
    scheduler.add(task)
    await drive(clock, lambda: server.polls.get("t", 0) >= 1)
    assert scheduler.resolve_from_outside("t", ready("t"))
    assert not scheduler.resolve_from_outside("t", ready("t"))
    assert not scheduler.resolve_from_outside("unknown", ready("unknown"))
    result = await scheduler.wait(task)
    polls = server.polls["t"]
    clock.advance(100.0)
    await settle()
    assert server.polls["t"] == polls
    assert result.task_id == "t"


async def test_abandon_all_resolves_waiters(server: FakeServer, scheduler: Scheduler) -> None:
    task = server.task("t", lambda _e: status("t", "Pending"))
    scheduler.add(task)
    scheduler.abandon_all(ServerError("closing", status_code=599))
    with pytest.raises(ServerError):
        await scheduler.wait(task)


async def test_an_earlier_task_rearms_the_timer(clock: ManualClock, server: FakeServer) -> None:
    sched = Scheduler(server.poll, clock=clock, policy=FixedIntervalPolicy(50.0))
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        slow = server.task("slow", done_after(0.0, "slow"))
        sched.add(slow)
        await settle()
        assert clock.next_deadline == pytest.approx(50.0)
        fast = server.task("fast", done_after(0.0, "fast")).model_copy(update={"immediate": None})
        sched._policy = FixedIntervalPolicy(1.0)  # the next task's first poll is sooner
        sched.add(fast)
        await settle()
        assert clock.next_deadline == pytest.approx(1.0)
        assert "pending=2" in repr(sched)
        tg.cancel_scope.cancel()


# --- the poll-rate budget --------------------------------------------------------------


async def run_for(clock: ManualClock, seconds: float, sleepers: list[int]) -> None:
    """Jump from deadline to deadline for ``seconds`` of clock time, noting sleepers."""
    end = clock.monotonic() + seconds
    while True:
        await settle()
        sleepers.append(clock.sleepers)
        deadline = clock.next_deadline
        if deadline is None or deadline > end:
            return
        clock.advance(max(0.0, deadline - clock.monotonic()))


@pytest.mark.parametrize("tasks", [1, 5])
async def test_the_budget_holds_polls_to_one_per_task_per_second(
    clock: ManualClock, server: FakeServer, tasks: int
) -> None:
    sched = Scheduler(server.poll, clock=clock, policy=FixedIntervalPolicy(0.05))
    sleepers: list[int] = []
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        for i in range(tasks):
            sched.add(server.task(f"t{i}", lambda _e: status("t", "Pending")))
        await run_for(clock, 20.0, sleepers)
        tg.cancel_scope.cancel()
    polls = sum(server.polls.values())
    # The opening burst (twice the rate), then the refill: 20 s at one per task per second.
    assert 20 * tasks <= polls <= (2 + 20) * tasks + 1
    assert sched.statistics().throttled > 0
    assert max(sleepers) == 1  # the budget waits on the same single timer


async def test_a_slow_schedule_is_not_throttled(clock: ManualClock, server: FakeServer) -> None:
    sched = Scheduler(server.poll, clock=clock, policy=FixedIntervalPolicy(2.0))
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        for i in range(10):
            sched.add(server.task(f"t{i}", lambda _e: status("t", "Pending")))
        await run_for(clock, 20.0, [])
        tg.cancel_scope.cancel()
    assert sum(server.polls.values()) == 10 * 10
    assert sched.statistics().throttled == 0


class RecordingPolicy(FixedIntervalPolicy):
    """A fixed schedule that notes what the scheduler hands it."""

    def __init__(self) -> None:
        super().__init__(1.0)
        self.seen_before: list[float | None] = []
        self.completions: list[tuple[float | None, object]] = []

    def next_delay(self, state: PollState, now: float, *, progress: float | None) -> float:
        self.seen_before.append(state.last_progress)
        return super().next_delay(state, now, progress=progress)

    def observe_completion(
        self,
        key: str,
        duration: float,
        *,
        censored_at: float | None = None,
        state: PollState | None = None,
    ) -> None:
        self.completions.append((censored_at, state))


async def test_the_policy_records_each_reading_itself(
    clock: ManualClock, server: FakeServer
) -> None:
    policy = RecordingPolicy()
    sched = Scheduler(server.poll, clock=clock, policy=policy)
    task = server.task("t", done_after(3.5, "t"))
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        sched.add(task)
        await drive(clock, lambda: bool(policy.completions))
        tg.cancel_scope.cancel()
    # Before each reading is recorded, the state still holds the previous one.
    assert policy.seen_before == [None, pytest.approx(1 / 3.5), pytest.approx(2 / 3.5)]
    censored_at, state = policy.completions[0]
    assert censored_at == pytest.approx(3.0)
    assert isinstance(state, PollState)
    assert state.polls == 3


async def test_uncollected_outcomes_are_dropped_after_the_retention(
    clock: ManualClock, server: FakeServer
) -> None:
    sched = Scheduler(
        server.poll, clock=clock, policy=FixedIntervalPolicy(1.0), result_retention=100.0
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sched.run)
        for i in range(5):
            sched.add(server.task(f"old{i}", done_after(0.0, f"old{i}")))
        await drive(clock, lambda: sched.statistics().pending == 0)
        assert all(sched.is_registered(f"old{i}") for i in range(5))
        clock.advance(150.0)
        fresh = server.task("fresh", done_after(0.0, "fresh"))
        sched.add(fresh)  # any later activity prunes what nobody collected
        assert not any(sched.is_registered(f"old{i}") for i in range(5))
        box: list[object] = []
        tg.start_soon(_append, box, outcome_of(sched, fresh))
        await drive(clock, lambda: bool(box))
        assert isinstance(box[0], TaskResult)
        tg.cancel_scope.cancel()
