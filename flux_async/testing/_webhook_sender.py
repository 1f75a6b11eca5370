"""The simulator's webhooks: POST each task's ending to the ``webhook_url`` it was sent with.

A submit that carries ``webhook_url`` queues one delivery for the moment the task ends
plus ``config.webhook_delay`` seconds (no delivery for a task that is "Task not found").
Deliveries go out only while :meth:`WebhookSender.running` is entered: one loop, one
timer on the simulator's clock, each POST in its own task.

Where a delivery goes: to ``sender.sink`` when one is set, an ASGI app called in
process through ``httpx.ASGITransport`` whatever the URL's host (the client's
``webhook_app()``, or a whole FastAPI app); otherwise over real HTTP to the URL.

What it looks like (PROTOCOL.md §1 leaves the body undocumented, so both shapes exist):
``config.webhook_shape`` "get_result" sends ``{"id", "status", "result", ...}`` as a poll
would answer; "task_id" sends ``{"task_id", "status": "SUCCESS" | "FAILED" | ...,
"result"}``. ``config.webhook_auth`` "secret" echoes the request's ``webhook_secret`` in
``X-Webhook-Secret``, "hmac" sends ``X-BFL-Signature: sha256=<HMAC of the body>``,
"both" sends both. Faults, each drawn per delivery from an RNG seeded with
``config.seed``: ``webhook_loss`` (never sent), ``webhook_duplicate`` (sent twice, byte
for byte), ``webhook_wrong_secret`` (signed with a wrong secret).
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import itertools
import json
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import httpx

from .._core._clock import Clock
from .._request._models import Status
from ._config import SimulatorConfig
from ._state import SimTask

__all__ = ["WebhookDelivery", "WebhookSender"]

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

# The "task_id" body shape speaks in upper case, as BFL's other text shows it.
_TASK_ID_STATUS = {
    Status.READY: "SUCCESS",
    Status.ERROR: "FAILED",
    Status.FAILED: "FAILED",
    Status.REQUEST_MODERATED: "REQUEST_MODERATED",
    Status.CONTENT_MODERATED: "CONTENT_MODERATED",
}
_WRONG = "-not-the-secret"


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One POST the simulator made: the task, the status it claimed, the answer.

    ``http_status`` is None when the request failed (``error`` names the exception);
    ``duplicate`` marks the second copy of a duplicated delivery; ``sent_at`` is the
    simulator's monotonic second.
    """

    task_id: str
    status: str
    http_status: int | None
    error: str | None
    duplicate: bool
    wrong_secret: bool
    sent_at: float


@dataclass(frozen=True, slots=True)
class _Queued:
    task: SimTask
    url: str
    secret: str | None


class WebhookSender:
    """Queue and send the simulator's webhook deliveries (see the module docstring)."""

    def __init__(
        self,
        config: SimulatorConfig,
        clock: Clock,
        *,
        result_for: Callable[[SimTask], dict[str, Any]],
    ) -> None:
        if config.webhook_auth not in ("secret", "hmac", "both"):
            raise ValueError(
                f'webhook_auth is "secret", "hmac" or "both", got {config.webhook_auth!r}'
            )
        if config.webhook_shape not in ("get_result", "task_id"):
            raise ValueError(
                f'webhook_shape is "get_result" or "task_id", got {config.webhook_shape!r}'
            )
        if config.webhook_delay < 0:
            raise ValueError("webhook_delay is in seconds and must be >= 0")
        self.config = config
        self.clock = clock
        self.sink: ASGIApp | None = None
        #: Every POST made, oldest first (at most ``config.record_limit``).
        self.deliveries: deque[WebhookDelivery] = deque(maxlen=config.record_limit)
        #: Deliveries dropped on purpose (``webhook_loss``).
        self.lost: list[str] = []
        self._result_for = result_for
        # A separate RNG: turning webhooks on must not change the tasks' own draws.
        self._rng = random.Random(f"webhooks-{config.seed}")
        self._heap: list[tuple[float, int, _Queued]] = []
        self._seq = itertools.count()
        self._timer: anyio.CancelScope | None = None
        self._armed_for = math.inf
        self._running = False

    @property
    def queued(self) -> int:
        """Return how many deliveries wait for their time."""
        return len(self._heap)

    def schedule(self, task: SimTask, url: str, secret: str | None) -> None:
        """Queue the delivery of ``task``'s ending to ``url``."""
        if task.outcome == Status.NOT_FOUND:
            return
        due = task.end_at + self.config.webhook_delay
        heapq.heappush(self._heap, (due, next(self._seq), _Queued(task, url, secret)))
        if due < self._armed_for and self._timer is not None:
            self._timer.cancel()

    @contextlib.asynccontextmanager
    async def running(self, sink: ASGIApp | None = None) -> AsyncIterator[WebhookSender]:
        """Send deliveries while inside; ``sink`` (optional) receives them in process."""
        if self._running:
            raise RuntimeError("the webhook sender is already running")
        if sink is not None:
            self.sink = sink
        transport = httpx.ASGITransport(app=self.sink) if self.sink is not None else None
        self._running = True
        try:
            async with (
                httpx.AsyncClient(transport=transport, timeout=10.0, trust_env=False) as http,
                anyio.create_task_group() as tg,
            ):
                await tg.start(self._run, http)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._running = False

    async def _run(
        self,
        http: httpx.AsyncClient,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with anyio.create_task_group() as sends:
            task_status.started()
            while True:
                now = self.clock.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    sends.start_soon(self._send, http, heapq.heappop(self._heap)[2])
                due = self._heap[0][0] if self._heap else math.inf
                with anyio.CancelScope() as scope:
                    self._timer, self._armed_for = scope, due
                    try:
                        if due == math.inf:
                            await anyio.sleep_forever()
                        else:
                            await self.clock.sleep(due - now)
                    finally:
                        self._timer, self._armed_for = None, math.inf

    async def _send(self, http: httpx.AsyncClient, item: _Queued) -> None:
        config = self.config
        lost = self._rng.random() < config.webhook_loss
        twice = self._rng.random() < config.webhook_duplicate
        wrong = self._rng.random() < config.webhook_wrong_secret
        if lost:
            self.lost.append(item.task.id)
            return
        status = item.task.status_at(self.clock.monotonic())
        body = json.dumps(self._body(item.task, status), separators=(",", ":")).encode()
        headers = {"content-type": "application/json"}
        if item.secret is not None:
            headers |= _auth_headers(config.webhook_auth, body, item.secret + (_WRONG * wrong))
        for copy in range(2 if twice else 1):
            code: int | None = None
            error: str | None = None
            try:
                response = await http.post(item.url, content=body, headers=headers)
                code = response.status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            self.deliveries.append(
                WebhookDelivery(
                    item.task.id, status, code, error, copy == 1, wrong, self.clock.monotonic()
                )
            )

    def _body(self, task: SimTask, status: str) -> dict[str, Any]:
        result = self._result_for(task) if status == Status.READY else None
        if self.config.webhook_shape == "task_id":
            return {
                "task_id": task.id,
                "status": _TASK_ID_STATUS.get(status, status),
                "result": result,
            }
        return {
            "id": task.id,
            "status": status,
            "result": result,
            "progress": None,
            "details": None,
            "preview": None,
        }

    def __repr__(self) -> str:
        return (
            f"WebhookSender(queued={len(self._heap)}, sent={len(self.deliveries)}, "
            f"lost={len(self.lost)}, running={self._running})"
        )


def _auth_headers(mode: str, body: bytes, secret: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if mode in ("secret", "both"):
        headers["x-webhook-secret"] = secret
    if mode in ("hmac", "both"):
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["x-bfl-signature"] = f"sha256={digest}"
    return headers
