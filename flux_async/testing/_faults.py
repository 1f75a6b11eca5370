"""Misbehaviour on demand: scripted faults (``Simulator.inject``) and random fault rates.

A fault applies to one request to its target:

- ``delay``: the simulator sleeps that many seconds on its clock before answering;
- ``status``: it answers that HTTP status (with ``body`` and ``Retry-After``) instead of
  running the handler, so nothing is created;
- ``drop``: the handler runs, then the connection closes without an answer;
- ``truncate``: the answer declares its full Content-Length but sends only half the body.

Scripted faults are used first, oldest first; random rates apply only when none is queued.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from ._asgi import Response
from ._config import SimulatorConfig

__all__ = ["TARGETS", "Fault", "Faults", "Target"]

Target = Literal["submit", "poll", "delivery", "credits"]
TARGETS: tuple[Target, ...] = ("submit", "poll", "delivery", "credits")

_RANDOM_5XX = (500, 502, 503)


@dataclass(frozen=True, slots=True)
class Fault:
    """How one request misbehaves."""

    status: int | None = None
    drop: bool = False
    truncate: bool = False
    delay: float = 0.0
    retry_after: str | None = None
    body: Any = None

    def __post_init__(self) -> None:
        if self.drop and self.truncate:
            raise ValueError("a fault either drops the connection or truncates the body")
        if self.delay < 0:
            raise ValueError("delay is in seconds and must be >= 0")
        if self.status is None and (self.retry_after is not None or self.body is not None):
            raise ValueError("retry_after and body go with an injected status")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"not an HTTP status: {self.status}")

    def response(self) -> Response:
        """Return the answer an injected ``status`` gives instead of the handler's."""
        status = 500 if self.status is None else self.status
        headers = [] if self.retry_after is None else [("retry-after", self.retry_after)]
        if isinstance(self.body, bytes):
            return Response.raw(status, self.body, "application/octet-stream", headers)
        if isinstance(self.body, str):
            return Response.raw(status, self.body.encode(), "text/plain; charset=utf-8", headers)
        if self.body is not None:
            return Response.json(status, self.body, headers)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        return Response.json(status, {"detail": phrase}, headers)


class Faults:
    """The queue of scripted faults per target, then the configured random rates."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._rng = random.Random(f"{config.seed}-faults")
        self._queues: dict[str, deque[list[Any]]] = {target: deque() for target in TARGETS}

    def inject(self, target: Target, fault: Fault, times: int) -> None:
        """Queue ``fault`` for the next ``times`` requests to ``target``."""
        if target not in self._queues:
            raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queues[target].append([fault, times])

    def pending(self, target: Target) -> int:
        """Return how many scripted faults are still queued for ``target``."""
        return sum(entry[1] for entry in self._queues[target])

    def take(self, target: Target) -> Fault | None:
        """Return the fault for this request to ``target``, or None to behave."""
        queue = self._queues[target]
        if queue:
            entry = queue[0]
            entry[1] -= 1
            if entry[1] == 0:
                queue.popleft()
            fault: Fault = entry[0]
            return fault
        return self._draw(target)

    def _draw(self, target: Target) -> Fault | None:
        config = self._config
        rate = {
            "submit": config.submit_5xx,
            "poll": config.poll_5xx,
            "delivery": config.delivery_5xx,
        }.get(target, 0.0)
        # Draw only for non-zero rates: with every rate at zero the RNG is never touched.
        if rate and self._rng.random() < rate:
            return Fault(status=self._rng.choice(_RANDOM_5XX))
        if config.drop_connection and self._rng.random() < config.drop_connection:
            return Fault(drop=True)
        if (
            target == "delivery"
            and config.truncate_delivery
            and self._rng.random() < config.truncate_delivery
        ):
            return Fault(truncate=True)
        return None

    def __repr__(self) -> str:
        queued = {target: self.pending(target) for target in TARGETS}
        return f"Faults(queued={queued})"
