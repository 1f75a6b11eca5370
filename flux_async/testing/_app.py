"""The simulator: a raw ASGI 3 app that answers like BFL's API (``specs/PROTOCOL.md`` §1).

Routes, by path only (one app serves the submit, polling and delivery hosts)::

    POST /v1/{model}                     submit           (x-key required)
    GET  /v1/get_result?id=ID            poll             (x-key optional; a wrong one: 403)
    GET  /v1/credits                     credit balance   (x-key required)
    GET  /results/{id}/sample.{ext}?...  signed delivery  (no key; Range supported)
    POST /v1/images/generations          OpenAI-style relay, synchronous (Bearer; ``_openai``)

Auth: no ``x-key`` answers 401, a wrong one 403, both ``{"detail": ...}``. Everything
else answers 404 ``{"detail": "Not Found"}`` (405 for a known path and a wrong method).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from .._core._clock import Clock, SystemClock
from .._request._models import Status
from ._account import SimAccount
from ._asgi import (
    Receive,
    Request,
    Response,
    Scope,
    Send,
    read_body,
    send_response,
    serve_lifespan,
)
from ._config import SimulatorConfig
from ._delivery import PATH as DELIVERY_PATH
from ._delivery import deliver
from ._faults import Fault, Faults, Target
from ._keys import KeySighting, key_sightings
from ._openai import PATH as OPENAI_PATH
from ._openai import generate as openai_generate
from ._records import RequestRecord, SimulatorRecords, SubmitRecord, elide
from ._state import Plan, SimTask
from ._transport import SimulatorTransport

__all__ = ["Simulator"]

_MODEL_PATH = re.compile(r"/v1/([A-Za-z0-9._-]+)")
_BODY_LIMIT = 64 * 1024 * 1024
_MODERATION = {"Moderation Reasons": ["Simulated moderation"]}

_Handler = Callable[[Request, bytes], Awaitable[Response]]


class Simulator:
    """A deterministic fake of the BFL API, in process or on loopback.

    Use :meth:`transport` with ``httpx.AsyncClient`` in process, or
    :func:`~flux_async.testing.serve` for real HTTP. Script the next tasks with
    :meth:`plan_next`, make requests misbehave with :meth:`inject`, and assert on
    :attr:`records` (and :attr:`keys_seen`: every request that carried a credential, by
    host). All randomness comes from RNGs seeded with ``config.seed``; all
    time from ``clock`` (``monotonic()`` for task timelines, ``time()`` for the wall
    times and URL expiries it reports).

    Every submit body is validated against BFL's OpenAPI document (shipped as
    ``flux_async/testing/bfl-openapi.json``) plus only the rules BFL's model pages state
    beyond it (``_validation.DOCUMENTED_RULES``); a refusal is a 422 in FastAPI's shape.

    Args:
        config: Latencies, costs, limits, fault rates, relay dialects, webhooks.
        clock: The clock the simulator runs on (default: the system clock).

    Examples:
        ```python
        clock = ManualClock()
        sim = Simulator(clock=clock)
        async with AsyncFlux(
            api_key=FAKE_API_KEY, base_url=sim.config.api_base,
            transport=sim.transport(), clock=clock,
        ) as flux:
            ...
        sim.plan_next(status="Content Moderated")  # script the next task
        sim.inject("poll", status=503, times=2)  # two failing polls
        ```
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, clock: Clock | None = None
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.records = SimulatorRecords.bounded(self.config.record_limit)
        self.keys_seen: deque[KeySighting] = deque(maxlen=self.config.record_limit)
        self._account = SimAccount(self.config, self.clock, self.records)
        self._faults = Faults(self.config)
        #: Sends each task's webhook while ``async with sim.webhooks.running(sink):``.
        self.webhooks = self._account.webhooks

    # --- scripting and inspection -------------------------------------------------------

    def plan_next(
        self,
        *,
        duration: float | None = None,
        status: str = Status.READY,
        progress: bool = True,
        cost: float | None = None,
    ) -> None:
        """Script the next submitted task (plans queue up, first in first out).

        ``duration`` in seconds (None: drawn from the model's latency); ``status`` is what
        it ends in: "Ready", "Request Moderated", "Content Moderated" (both refunded when
        they end), "Error", "Failed" (a fault for tests: BFL's examples show it, but it is not
        in the document's status enum), any other string (answered forever once the
        duration has passed), or "Task not found" (answered from the first poll on).
        ``progress=False`` leaves Pending's ``progress`` null; ``cost`` overrides the price.
        """
        if duration is not None and duration < 0:
            raise ValueError("duration is in seconds and must be >= 0")
        self._account.plan(Plan(duration, status, progress, cost))

    def inject(
        self,
        target: Target,
        *,
        status: int | None = None,
        drop: bool = False,
        truncate: bool = False,
        delay: float = 0.0,
        retry_after: str | None = None,
        body: Any = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` requests to ``target`` misbehave (see ``_faults``).

        ``target`` is "submit", "poll", "delivery" or "credits". ``status`` answers that
        HTTP status instead of running the handler (``body``: JSON-able, ``str`` or
        ``bytes``; default ``{"detail": <reason>}``; ``retry_after``: the header's value);
        ``drop`` closes the connection without an answer after the handler ran (a
        dropped submit has created and billed its task); ``truncate`` sends half the body;
        ``delay`` sleeps that many seconds on the simulator's clock first.
        """
        fault = Fault(status, drop, truncate, delay, retry_after, body)
        self._faults.inject(target, fault, times)

    def task(self, task_id: str) -> SimTask:
        """Return the task ``task_id`` (KeyError when unknown or forgotten)."""
        return self._account.task(task_id)

    def status(self, task_id: str) -> str:
        """Return the status a poll of ``task_id`` would answer now (ignoring faults)."""
        self._account.settle()
        task = self._account.state.tasks.get(task_id)
        return Status.NOT_FOUND if task is None else task.status_at(self.clock.monotonic())

    def active_count(self, api_key: str | None = None) -> int:
        """Return how many tasks ``api_key`` (default: the configured key) has active."""
        self._account.settle()
        return self._account.state.active(self.config.api_key if api_key is None else api_key)

    @property
    def credits(self) -> float:
        """Return the credit balance now (moderated tasks refunded once they ended)."""
        return self._account.credits

    def transport(self) -> httpx.AsyncBaseTransport:
        """Return an httpx transport that sends every request to this app, in process."""
        return SimulatorTransport(self)

    def __repr__(self) -> str:
        state = self._account.state
        return f"Simulator(config={self.config!r}, clock={self.clock!r}, state={state!r})"

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ASGI 3 connection scope."""
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request.from_scope(scope)
        self.records.requests.append(RequestRecord(request.method, request.host, request.path))
        self.keys_seen.extend(key_sightings(request, self.config.api_key))
        body = await read_body(receive, _BODY_LIMIT)
        if body is None:
            response = Response.json(413, {"detail": "Request Entity Too Large"})
            await send_response(send, receive, response, request.link, clock=self.clock)
            return
        target, handler = self._route(request)
        fault = self._faults.take(target) if target is not None else None
        fault = fault or Fault()
        if fault.delay:
            await self.clock.sleep(fault.delay)
        if fault.status is not None:
            response = fault.response()
            if target == "submit":
                self._record_submit(request, _json_or_none(body), None, response.status)
        else:
            response = await handler(request, body)
        pace = 0.0
        if target == "delivery" and self.config.slow_delivery_seconds and response.status < 300:
            pace = self.config.slow_delivery_seconds / max(1, math.ceil(response.length / 65_536))
        await send_response(
            send,
            receive,
            response,
            request.link,
            clock=self.clock,
            drop=fault.drop,
            truncate=fault.truncate,
            pace=pace,
        )

    def _route(self, request: Request) -> tuple[Target | None, _Handler]:
        path, method = self.config.api_path(request.path), request.method
        if path == OPENAI_PATH:
            handler: _Handler = functools.partial(
                openai_generate, self._account, self._record_submit
            )
            return ("submit", handler) if method == "POST" else (None, _not_allowed)
        if path == "/v1/get_result":
            if method == "GET":
                task_id = request.query.get("id")
                if task_id:
                    polls = self.records.polls_by_task
                    polls[task_id] = polls.get(task_id, 0) + 1
                return "poll", self._poll
            return None, _not_allowed
        if path == "/v1/credits":
            return ("credits", self._credits) if method == "GET" else (None, _not_allowed)
        model = _MODEL_PATH.fullmatch(path)
        if model and model.group(1) in self.config.models:
            return ("submit", self._submit) if method == "POST" else (None, _not_allowed)
        if DELIVERY_PATH.fullmatch(path):
            self.records.delivery_headers.append(dict(request.headers))
            if method in {"GET", "HEAD"}:
                return "delivery", self._deliver
            return None, _not_allowed
        return None, _not_found

    # --- handlers -----------------------------------------------------------------------

    async def _credits(self, request: Request, body: bytes) -> Response:
        refusal = self._account.auth(request)
        return refusal or Response.json(200, {"credits": round(self.credits, 2)})

    async def _submit(self, request: Request, raw: bytes) -> Response:
        model = request.path.rsplit("/", 1)[1]
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            problem = {"loc": ["body", getattr(exc, "pos", 0)], "msg": "JSON decode error"}
            self._record_submit(request, None, None, 422)
            return Response.json(422, {"detail": [problem | {"type": "json_invalid"}]})
        response, task_id = self._account.create(request, model, body)
        self._record_submit(request, body, task_id, response.status)
        return response

    async def _poll(self, request: Request, body: bytes) -> Response:
        task_id = request.query.get("id")
        if not task_id:
            problem = {"loc": ["query", "id"], "msg": "Field required", "type": "missing"}
            return Response.json(422, {"detail": [problem]})
        key = request.headers.get("x-key")
        if key is not None and (key != self.config.api_key or self.config.keyless_poll):
            return Response.json(403, {"detail": "Invalid API key"})
        self._account.settle()
        now = self.clock.monotonic()
        task = self._account.state.tasks.get(task_id)
        reply: dict[str, Any] = {"id": task_id, "status": Status.NOT_FOUND, "result": None}
        reply |= {"progress": None, "details": None, "preview": None}
        if task is None or now - task.submitted_at < self.config.not_found_grace:
            return Response.json(self.config.not_found_status_code, reply)
        status = task.status_at(now)
        if self._is_global_host(request.host):
            # PROTOCOL: the global host does not hold the task; it stays Pending there.
            status = Status.PENDING
        elif status == Status.PENDING:
            reply["progress"] = task.progress_at(now)
        elif status == Status.READY:
            reply["result"] = self._account.result(task)
        elif status in {Status.REQUEST_MODERATED, Status.CONTENT_MODERATED}:
            reply["details"] = _MODERATION
        reply["status"] = status
        if status == Status.NOT_FOUND:
            return Response.json(self.config.not_found_status_code, reply)
        return Response.json(200, reply)

    def _is_global_host(self, host: str) -> bool:
        if not self.config.global_poll_pending:
            return False
        api_host = urlsplit(self.config.api_base).netloc.lower()
        return api_host != urlsplit(self.config.poll_base).netloc.lower() and host == api_host

    async def _deliver(self, request: Request, body: bytes) -> Response:
        account = self._account
        account.settle()
        return deliver(request, account.state.tasks, account.signer, self.clock.time(), self.config)

    def _record_submit(self, request: Request, body: Any, task_id: str | None, status: int) -> None:
        model = request.path.rsplit("/", 1)[1]
        if request.path.endswith(OPENAI_PATH) and isinstance(body, dict):
            model = str(body.get("model"))  # the OpenAI-style route names it in the body
        record = SubmitRecord(model, elide(body), dict(request.headers), task_id, status)
        self.records.submits.append(record)


async def _not_found(request: Request, body: bytes) -> Response:
    return Response.json(404, {"detail": "Not Found"})


async def _not_allowed(request: Request, body: bytes) -> Response:
    return Response.json(405, {"detail": "Method Not Allowed"})


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
