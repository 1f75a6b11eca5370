"""What reached the simulator, for tests to assert on.

Every list is a bounded deque (``SimulatorConfig.record_limit`` entries, oldest dropped
first) and no record holds image bytes: a string longer than 4096 characters in a submit
body (a base64 input image) is replaced by ``"<N chars, sha256 PREFIX>"``.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["RequestRecord", "SimulatorRecords", "SubmitRecord", "elide"]

_STRING_LIMIT = 4096
_SECRET_HEADERS = frozenset({"x-key", "authorization"})


class RequestRecord(NamedTuple):
    """One request: its method, ``Host`` header (with any port) and path."""

    method: str
    host: str
    path: str


@dataclass(frozen=True, slots=True)
class SubmitRecord:
    """One ``POST /v1/{model}``: the parsed body (None when not JSON), all headers with
    lower-case names (the ``x-key`` included, so tests can check where keys went), the
    task it created (None when none) and the HTTP status the handler answered (a fault
    may have kept it from the client). ``repr`` masks the key.
    """

    model: str
    body: Any
    headers: dict[str, str]
    task_id: str | None
    status: int

    def __repr__(self) -> str:
        # Tests print records on failure; a key that reached the fake must not be shown.
        shown = {k: "***" if k in _SECRET_HEADERS else v for k, v in self.headers.items()}
        return (
            f"SubmitRecord(model={self.model!r}, task_id={self.task_id!r}, "
            f"status={self.status}, headers={shown!r}, body={self.body!r})"
        )


def _deque() -> deque[Any]:
    return deque(maxlen=10_000)


@dataclass
class SimulatorRecords:
    """Everything tests may check after a run.

    ``polls_by_task`` counts polls per ``id`` query value, known or not (a forgotten
    task's count goes with it); ``delivery_headers`` holds the request headers of every
    request to a result URL; ``max_active_seen`` is the most tasks one key had active
    right after a submit; ``rejected_429`` counts submits refused by the active-task
    limit (injected 429s are not counted).
    """

    submits: deque[SubmitRecord] = field(default_factory=_deque)
    polls_by_task: dict[str, int] = field(default_factory=dict)
    delivery_headers: deque[dict[str, str]] = field(default_factory=_deque)
    requests: deque[RequestRecord] = field(default_factory=_deque)
    max_active_seen: int = 0
    rejected_429: int = 0

    @classmethod
    def bounded(cls, limit: int) -> SimulatorRecords:
        """Return empty records whose lists keep at most ``limit`` entries each."""
        return cls(deque(maxlen=limit), {}, deque(maxlen=limit), deque(maxlen=limit))

    def __repr__(self) -> str:
        return (
            f"SimulatorRecords(requests={len(self.requests)}, submits={len(self.submits)}, "
            f"polled_tasks={len(self.polls_by_task)}, max_active_seen={self.max_active_seen}, "
            f"rejected_429={self.rejected_429})"
        )


def elide(value: Any) -> Any:
    """Return ``value`` (parsed JSON) with every over-long string replaced by a summary."""
    if isinstance(value, str) and len(value) > _STRING_LIMIT:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"<{len(value)} chars, sha256 {digest}>"
    if isinstance(value, dict):
        return {key: elide(item) for key, item in value.items()}
    if isinstance(value, list):
        return [elide(item) for item in value]
    return value
