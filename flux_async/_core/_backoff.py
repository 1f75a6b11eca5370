"""Pure retry decisions: delays, ``Retry-After`` parsing, and what a failed submit means.

Nothing here sleeps or does I/O; callers pass the time and the random source in, so the
tests can pin both.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = [
    "SubmitVerdict",
    "compute_backoff",
    "judge_submit_status",
    "parse_retry_after",
]

# Servers sometimes send absurd Retry-After values; waiting an hour is never what a
# user of a paid, 10-minute-URL API wants, so anything above this is clamped.
MAX_RETRY_AFTER = 120.0


def compute_backoff(
    attempt: int,
    *,
    base: float,
    factor: float = 2.0,
    cap: float,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Return the delay in seconds before retry number ``attempt`` (0-based).

    Capped exponential backoff with full jitter: uniform in ``[0, min(cap, base·factor^n)]``,
    never below a tenth of that bound so a retry is never instantaneous.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # Exponent clamp avoids float overflow for very long retry sequences.
    bound = min(cap, base * factor ** min(attempt, 64))
    return bound * (0.1 + 0.9 * jitter())


def parse_retry_after(
    headers: dict[str, str] | None = None,
    *,
    retry_after: str | None = None,
    retry_after_ms: str | None = None,
    now: float,
) -> float | None:
    """Return the server's requested wait in seconds, or None when it gave none usable.

    Accepts ``retry-after-ms`` (milliseconds), ``Retry-After`` as seconds (int or float) or
    as an HTTP date (compared with ``now``, wall-clock epoch seconds). Negative waits become
    0; waits above :data:`MAX_RETRY_AFTER` are clamped.
    """
    if headers is not None:
        lowered = {k.lower(): v for k, v in headers.items()}
        retry_after = retry_after or lowered.get("retry-after")
        retry_after_ms = retry_after_ms or lowered.get("retry-after-ms")
    seconds: float | None = None
    if retry_after_ms:
        try:
            seconds = float(retry_after_ms) / 1000.0
        except ValueError:
            seconds = None
    if seconds is None and retry_after:
        text = retry_after.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                # HTTP dates are GMT by definition; a missing zone still means GMT.
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - now
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class SubmitVerdict(enum.Enum):
    """What a failed submit means for the money."""

    RETRY = "retry"  # the server surely created nothing: wait and submit again
    AMBIGUOUS = "ambiguous"  # a task may exist and be billed: do not replay unless asked
    FATAL = "fatal"  # the request itself is refused: retrying cannot help


def judge_submit_status(status_code: int) -> SubmitVerdict:
    """Classify an HTTP error status returned by ``POST /v1/{model}``.

    429 (too many active tasks) and 503 (maintenance / overload, refused at the door) create
    nothing. 500, 502 and 504 may have been answered by a gateway after the task was made.
    Every other 4xx is a refusal of the request itself.
    """
    if status_code in (429, 503):
        return SubmitVerdict.RETRY
    if status_code >= 500:
        return SubmitVerdict.AMBIGUOUS
    return SubmitVerdict.FATAL
