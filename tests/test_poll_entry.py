"""Table tests for what a failed poll means to its task (``_engine/_poll_entry.py``)."""

from __future__ import annotations

import pytest

from flux_async._engine._poll_entry import MAX_MALFORMED, PollEntry, PollVerdict
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


def entry() -> PollEntry:
    task = Task(
        id="t1",
        polling_url="https://api.eu2.sim.invalid/v1/get_result?id=t1",
        model="flux-2-pro",
        provider="bfl",
        submitted_at=0.0,
    )
    return PollEntry(
        task=task, state=PollState("bfl:flux-2-pro", 0.0), deadline=900.0, on_terminal=None
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
