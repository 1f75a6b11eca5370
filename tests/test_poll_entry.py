"""Table tests for what a failed poll means to its task (``_engine/_poll_entry.py``)."""

from __future__ import annotations

import pytest

from flux_async._engine._poll_entry import (
    MAX_MALFORMED,
    PollEntry,
    PollVerdict,
    most_valuable_due,
)
from flux_async._errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    FluxError,
    InsufficientCreditsError,
    MalformedReplyError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from flux_async._polling._policy import PollState
from flux_async._request._models import Task


def entry(task_id: str = "t1", deadline: float = 900.0) -> PollEntry:
    task = Task(
        id=task_id,
        polling_url=f"https://api.eu2.sim.invalid/v1/get_result?id={task_id}",
        model="flux-2-pro",
        provider="bfl",
        submitted_at=0.0,
    )
    return PollEntry(
        task=task, state=PollState("bfl:flux-2-pro", 0.0), deadline=deadline, on_terminal=None
    )


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (TransportError("reset"), "retry"),
        (ConnectError("refused"), "retry"),
        (RequestTimeoutError("slow"), "retry"),
        (RateLimitError("429", status_code=429), "retry"),
        (ServerError("503", status_code=503), "retry"),
        (APIError("504 from a proxy", status_code=504), "retry"),
        (APIError("no such task", status_code=404), "not found"),
        (APIError("teapot", status_code=418), "fail"),
        (BadRequestError("bad", status_code=422), "fail"),
        (AuthenticationError("key", status_code=401), "fail"),
        (InsufficientCreditsError("credits", status_code=402), "fail"),
        (FluxError("anything else"), "fail"),
    ],
)
def test_a_failed_poll_is_retried_failed_or_read_as_not_found(
    error: FluxError, verdict: PollVerdict
) -> None:
    assert entry().judge_failure(error) == verdict


def test_malformed_replies_are_retried_until_too_many_in_a_row() -> None:
    tracked = entry()
    garbage = MalformedReplyError("not JSON", phase="poll")
    verdicts = [tracked.judge_failure(garbage) for _ in range(MAX_MALFORMED)]
    assert verdicts == ["retry"] * (MAX_MALFORMED - 1) + ["fail"]
    assert tracked.malformed == MAX_MALFORMED


# A value per task id, read from the entry's key-independent state by id below.
VALUES = {"a": 0.1, "b": 0.4, "c": 0.2, "d": 0.9}


@pytest.mark.parametrize(
    ("items", "chosen"),
    [
        # (task id, due, live?) in heap order; the clock reads 10.0
        ([("a", 9.0, True)], None),  # one due: the heap's order stands
        ([("a", 9.0, True), ("d", 11.0, True)], None),  # d is not due yet
        ([("a", 9.0, True), ("b", 9.5, True), ("c", 10.0, True)], "b"),
        ([("a", 9.0, True), ("d", 9.5, False), ("b", 9.8, True)], "b"),  # stale d skipped
        ([("a", 9.0, True), ("late", 9.9, True), ("d", 9.5, True)], "late"),  # deadline
        ([("b", 9.0, True), ("b2", 9.5, True)], "b"),  # a tie: the earlier slot
    ],
)
def test_the_most_valuable_due_poll_goes_first(
    items: list[tuple[str, float, bool]], chosen: str | None
) -> None:
    heap = []
    by_state: dict[int, str] = {}
    for seq, (task_id, due, live) in enumerate(items):
        item = entry(task_id, deadline=5.0 if task_id == "late" else 900.0)
        item.seq = seq if live else -1
        by_state[id(item.state)] = task_id
        heap.append((due, seq, item))

    def value(state: PollState, now: float) -> float:
        assert now == 10.0
        return VALUES.get(by_state[id(state)][0], 0.0)

    picked = most_valuable_due(heap, 10.0, value)
    assert (picked.task.id if picked else None) == chosen


def test_the_choice_looks_only_as_far_as_its_reach() -> None:
    heap = []
    for seq, task_id in enumerate(["a", "c", "d"]):
        item = entry(task_id)
        item.seq = seq
        heap.append((9.0, seq, item))
    names = {id(item.state): item.task.id for _, _, item in heap}
    picked = most_valuable_due(heap, 10.0, lambda state, _now: VALUES[names[id(state)]], reach=2)
    assert picked is not None
    assert picked.task.id == "c"  # d, the best, is beyond the first two due
