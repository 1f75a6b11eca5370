"""Pure retry decisions: backoff bounds, Retry-After parsing, submit verdicts."""

from __future__ import annotations

import pytest

from flux_async._core._backoff import (
    MAX_RETRY_AFTER,
    SubmitVerdict,
    compute_backoff,
    judge_submit_status,
    parse_retry_after,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (0, 1.0, 1.0),
        (0, 0.0, 0.1),
        (3, 1.0, 8.0),
        (10, 1.0, 30.0),
        (10_000, 1.0, 30.0),
        (2, 0.5, 4.0 * 0.55),
    ],
)
def test_compute_backoff_is_capped_full_jitter(
    attempt: int, jitter: float, expected: float
) -> None:
    delay = compute_backoff(attempt, base=1.0, cap=30.0, jitter=lambda: jitter)
    assert delay == pytest.approx(expected)


def test_compute_backoff_rejects_negative_attempts() -> None:
    with pytest.raises(ValueError, match="attempt"):
        compute_backoff(-1, base=1.0, cap=2.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "abc", "retry-after": "2"}, 2.0),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After": "100000"}, MAX_RETRY_AFTER),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}, 30.0),
        ({"Retry-After": "Fri, 15 Jan 2027 07:59:00 GMT"}, 0.0),
        ({"Retry-After": "not a date"}, None),
        ({"Retry-After": "Fri, 15 Jan 2027 08:00:30"}, 30.0),
        ({"Retry-After": ""}, None),
    ],
)
def test_parse_retry_after_table(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (429, SubmitVerdict.RETRY),
        (503, SubmitVerdict.RETRY),
        (500, SubmitVerdict.AMBIGUOUS),
        (502, SubmitVerdict.AMBIGUOUS),
        (504, SubmitVerdict.AMBIGUOUS),
        (400, SubmitVerdict.FATAL),
        (401, SubmitVerdict.FATAL),
        (402, SubmitVerdict.FATAL),
        (422, SubmitVerdict.FATAL),
    ],
)
def test_judge_submit_status(status: int, verdict: SubmitVerdict) -> None:
    assert judge_submit_status(status) is verdict
