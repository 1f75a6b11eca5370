"""The receiving end of webhooks: a framework-neutral handler and a plain ASGI app over it.

:class:`WebhookReceiver` belongs to one client. It adds ``webhook_url`` and
``webhook_secret`` to the client's submissions, keeps the tasks that expect a delivery,
and turns each delivery into an action:

- refused (forged, unsigned, malformed, stale, too large): 401/400/413, nothing else;
- a duplicate, or a task this client does not wait for (unknown, already finished,
  submitted by another process): 200 and ignored; in a fleet, a terminal claim for a
  task another process owns is forwarded to it (202, see docs/fleet.md);
- a Pending claim: 200, noted, nothing else;
- a terminal claim: 202, then **one** confirming poll of the task's own polling URL,
  in the client's task group. A confirmed ending resolves the task in the scheduler at
  once (its polling stops; the image URL comes from the API host, never from the
  delivery). A claim the poll does not bear out changes nothing: the fallback polling
  of hybrid mode goes on.

A terminal claim that arrives before the submit reply did (a very short task) is kept
for a minute, and confirmed as soon as the task is known.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import anyio.abc

from .._core._clock import Clock
from .._core._guard import unexpected
from .._engine._scheduler import Scheduler
from .._errors import ConfigurationError, FluxError
from .._polling._hybrid import WEBHOOK_SUFFIX
from .._request._models import PollReply, Status, Task
from .._request._requests import BaseRequest
from ._events import EventEmitter, WebhookReceived
from ._webhooks import WebhookRejected, WebhookStatistics, WebhookVerifier, new_webhook_secret

__all__ = ["ASGIApp", "WebhookReceiver", "WebhookReceiverStatistics", "asgi_app"]

logger = logging.getLogger("flux_async")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Mapping[str, str], bytes], Awaitable[tuple[int, dict[str, Any]]]]

_URL_MAX: Final = 2083  # the request field's limit in BFL's OpenAPI document
_EARLY_WINDOW: Final = 60.0  # seconds a claim for a not-yet-known task is kept
_EARLY_MAX: Final = 1024


@dataclass(frozen=True, slots=True)
class WebhookReceiverStatistics:
    """Counters of a client's webhook handling, for export as metrics."""

    deliveries: WebhookStatistics  # accepted, duplicates, rejected by reason
    watched: int  # tasks now expecting a delivery
    ignored: int  # verified deliveries for tasks this client does not wait for
    confirm_polls: int  # polls made to confirm a terminal claim
    resolved: int  # tasks ended by a confirmed webhook (no more polling)
    unconfirmed: int  # claims the confirming poll did not bear out


class WebhookReceiver:
    """Verify deliveries and resolve this client's tasks from confirmed ones.

    ``url`` is where the provider should POST (None: webhooks off). ``secret`` is sent as
    ``webhook_secret`` with every submission and checked on every delivery; None draws a
    fresh one, so give every process behind one URL the same secret.
    """

    def __init__(
        self,
        url: str | None,
        secret: str | None,
        *,
        clock: Clock,
        events: EventEmitter,
        dialect: str = "bfl",
    ) -> None:
        if url is None and secret is not None:
            raise ConfigurationError("webhook_secret needs webhook_url")
        if url is not None and dialect != "bfl":
            # The OpenAI-style relays answer with the image itself and take no webhook.
            raise ConfigurationError("webhooks need a provider that speaks BFL's own API")
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > _URL_MAX:
                raise ConfigurationError(
                    f"webhook_url must be an http(s) URL of at most {_URL_MAX} characters"
                )
        self.url = url
        self._secret = (secret or new_webhook_secret()) if url is not None else None
        self._verifier = (
            WebhookVerifier(self._secret, clock=clock) if self._secret is not None else None
        )
        self._clock = clock
        self._events = events
        self._poll: Callable[[Task], Awaitable[PollReply]] | None = None
        self._scheduler: Scheduler | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._watched: dict[str, Task] = {}
        self._confirming: set[str] = set()
        self._early: OrderedDict[str, float] = OrderedDict()  # task id -> monotonic expiry
        self._ignored = 0
        self._confirm_polls = 0
        self._resolved = 0
        self._unconfirmed = 0
        # A fleet's hook: hand a delivery for a task this process does not own to its
        # owner; returns whether it was handed over.
        self.forward: Callable[[str], Awaitable[bool]] | None = None

    @property
    def enabled(self) -> bool:
        return self._verifier is not None

    @property
    def max_body_bytes(self) -> int:
        return self._verifier.max_body_bytes if self._verifier is not None else 1_048_576

    def bind(
        self,
        poll: Callable[[Task], Awaitable[PollReply]],
        scheduler: Scheduler,
        tg: anyio.abc.TaskGroup,
    ) -> None:
        """Attach to an opened client: its poll function, scheduler and task group."""
        self._poll, self._scheduler, self._tg = poll, scheduler, tg

    def unbind(self) -> None:
        """Detach when the client closes; later deliveries answer 503."""
        self._poll = self._scheduler = self._tg = None
        self._watched.clear()
        self._confirming.clear()

    def prepare(self, request: BaseRequest) -> BaseRequest:
        """Return ``request`` carrying the client's webhook, unless it names its own."""
        if self._secret is None or request.webhook_url is not None:
            return request
        return request.model_copy(update={"webhook_url": self.url, "webhook_secret": self._secret})

    def watch(self, task: Task) -> str | None:
        """Expect a delivery for ``task``; return its scheduler key (None: webhooks off)."""
        if not self.enabled:
            return None
        self._watched[task.id] = task
        if self._early.pop(task.id, None) is not None:
            self._start_confirm(task)
        return f"{task.provider}:{task.model}{WEBHOOK_SUFFIX}"

    def unwatch(self, task_id: str) -> None:
        """Stop expecting a delivery for a task that ended."""
        self._watched.pop(task_id, None)

    async def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """Handle one delivery; return the HTTP status and JSON body to answer with."""
        if self._verifier is None:
            return 404, {"detail": "webhooks are not configured on this client"}
        if self._scheduler is None:
            return 503, {"detail": "the client is not running"}
        try:
            event = self._verifier.accept(headers, body)
        except WebhookRejected as exc:
            self._emit(None, None, "rejected", exc.reason)
            return exc.http_status, {"detail": str(exc)}
        if event is None:
            self._emit(None, None, "duplicate")
            return 200, {"status": "duplicate"}
        task = self._watched.get(event.task_id)
        # Another process of the fleet may own it: hand it over (docs/fleet.md).
        forward = self.forward
        if (
            task is None
            and forward is not None
            and event.needs_confirmation
            and await forward(event.task_id)
        ):
            self._emit(event.task_id, event.status, "forwarded")
            return 202, {"status": "forwarded"}
        if task is None:
            self._ignored += 1
            if event.needs_confirmation:
                self._remember_early(event.task_id)
            self._emit(event.task_id, event.status, "ignored", "unknown or finished task")
            return 200, {"status": "ignored"}
        if not event.needs_confirmation:
            self._emit(task.id, event.status, "noted")
            return 200, {"status": "noted"}
        self._emit(task.id, event.status, "confirming")
        self._start_confirm(task)
        return 202, {"status": "confirming"}

    def forwarded(self, task_id: str) -> None:
        """Take a delivery another process of the fleet received for one of our tasks."""
        task = self._watched.get(task_id)
        if task is not None:
            self._emit(task_id, None, "confirming", "forwarded by the fleet")
            self._start_confirm(task)

    def _remember_early(self, task_id: str) -> None:
        now = self._clock.monotonic()
        while self._early and next(iter(self._early.values())) <= now:
            self._early.popitem(last=False)
        self._early[task_id] = now + _EARLY_WINDOW
        while len(self._early) > _EARLY_MAX:
            self._early.popitem(last=False)

    def _start_confirm(self, task: Task) -> None:
        if task.id in self._confirming or self._tg is None:
            return
        self._confirming.add(task.id)
        self._tg.start_soon(self._confirm, task)

    async def _confirm(self, task: Task) -> None:
        poll, scheduler = self._poll, self._scheduler
        if poll is None or scheduler is None:
            return
        self._confirm_polls += 1
        try:
            reply = await poll(task)
        except Exception as exc:  # noqa: BLE001 - FluxError expected; anything else guarded
            if not isinstance(exc, FluxError):
                unexpected(exc, task_id=task.id, where="a confirming poll")
            self._unconfirmed += 1
            logger.info(
                "confirming poll of task %s failed (%s); the fallback polling goes on",
                task.id,
                type(exc).__name__,
                extra={"task_id": task.id},
            )
            self._emit(task.id, None, "unconfirmed", type(exc).__name__)
            return
        finally:
            self._confirming.discard(task.id)
        if reply.status == Status.PENDING:
            self._unconfirmed += 1
            self._emit(task.id, reply.status, "unconfirmed", "the poll says Pending")
            return
        if scheduler.resolve_from_outside(task.id, reply):
            self._resolved += 1
            self._emit(task.id, reply.status, "resolved")

    def _emit(
        self, task_id: str | None, status: str | None, action: str, reason: str | None = None
    ) -> None:
        self._events.emit(WebhookReceived(task_id, status, action, reason, self._clock.time()))

    def statistics(self) -> WebhookReceiverStatistics | None:
        """Return the counters, or None when webhooks are off."""
        if self._verifier is None:
            return None
        return WebhookReceiverStatistics(
            deliveries=self._verifier.statistics(),
            watched=len(self._watched),
            ignored=self._ignored,
            confirm_polls=self._confirm_polls,
            resolved=self._resolved,
            unconfirmed=self._unconfirmed,
        )

    def __repr__(self) -> str:
        url = urlsplit(self.url)._replace(query="", fragment="").geturl() if self.url else None
        return f"WebhookReceiver(url={url!r}, secret='***', watched={len(self._watched)})"


def asgi_app(handle: Handler, *, max_body_bytes: int) -> ASGIApp:
    """Return a plain ASGI 3 app that answers every POST with ``handle(headers, body)``.

    Mount it under any path (Starlette/FastAPI ``app.mount(...)``) or serve it alone.
    Other methods answer 405; a body over ``max_body_bytes`` is not read further.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await _send_json(send, 405, {"detail": "Method Not Allowed"}, [(b"allow", b"POST")])
            return
        body = await _read_body(receive, max_body_bytes + 1)
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        status, payload = await handle(headers, body)
        await _send_json(send, status, payload)

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive, limit: int) -> bytes:
    """Return the request body, cut at ``limit`` bytes (the verifier refuses it then)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit or not message.get("more_body", False):
            break
    return b"".join(chunks)[:limit]


async def _send_json(
    send: Send,
    status: int,
    payload: Mapping[str, Any],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
