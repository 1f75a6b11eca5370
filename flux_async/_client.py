"""``AsyncFlux``: the client that wires validation, limiter, provider, scheduler and downloader.

Data flows one way: request → validate → limiter → provider.submit → scheduler →
downloader → outcome. Everything background (the scheduler loop, ``generate_many``
workers) runs in a task group the client owns, so leaving ``async with`` leaves nothing
running and no connection open.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import httpx

from ._backoff import compute_backoff
from ._catalog import DEFAULT_ACTIVE_LIMIT, MODELS
from ._clock import Clock, SystemClock
from ._download import Downloader, DownloaderStatistics, result_deadline
from ._errors import (
    AmbiguousSubmitError,
    ClientClosedError,
    ConnectError,
    FluxError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)
from ._limits import ActiveTaskLimiter, LimiterStatistics, Slot
from ._models import GeneratedImage, Outcome, Status, Task, TaskResult
from ._policy import BackoffPolicy, PollPolicy
from ._providers import ApiKey, Provider, get_preset, make_provider, resolve_api_key
from ._requests import BaseRequest, build_request, validate_request
from ._scheduler import Scheduler, SchedulerStatistics

__all__ = ["AsyncFlux", "ClientStatistics"]

logger = logging.getLogger("flux_async")

Item = str | Mapping[str, Any] | BaseRequest
USER_AGENT = "flux-async/0.1"


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """Snapshots of the client's limiter, scheduler and downloader."""

    limiter: LimiterStatistics
    scheduler: SchedulerStatistics
    downloader: DownloaderStatistics


class AsyncFlux:
    """An asyncio client for FLUX image generation.

    Use it as ``async with AsyncFlux() as flux:``. ``api_key`` defaults to the provider's
    environment variable (``BFL_API_KEY`` for the BFL presets). ``base_url`` overrides the
    preset's host (a proxy, the simulator). ``transport`` injects an httpx transport (the
    simulator's in-process transport in tests).

    Limits: ``max_active`` tasks in flight per account (default 24; the catalog's model caps,
    6 for ``flux-kontext-max``, apply unless ``per_model_limits`` overrides them),
    ``max_downloads`` concurrent downloads, ``max_concurrent_polls`` poll requests at once.
    ``retry_ambiguous=True`` lets a submit that may have been billed be sent again.
    """

    def __init__(
        self,
        api_key: str | None = None,
        provider: str = "bfl",
        base_url: str | None = None,
        *,
        max_active: int = DEFAULT_ACTIVE_LIMIT,
        per_model_limits: Mapping[str, int] | None = None,
        max_downloads: int = 8,
        max_concurrent_polls: int = 16,
        task_timeout: float | None = None,
        retry_ambiguous: bool = False,
        rate_limit_timeout: float = 600.0,
        max_submit_retries: int = 5,
        poll_policy: PollPolicy | None = None,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._preset = get_preset(provider)
        self._key: ApiKey = resolve_api_key(api_key, self._preset)
        self._base_url = base_url
        self._clock: Clock = clock or SystemClock()
        self._transport = transport
        self._timeout = timeout
        self._retry_ambiguous = retry_ambiguous
        self._rate_limit_timeout = rate_limit_timeout
        self._max_submit_retries = max_submit_retries
        self._max_downloads = max_downloads
        self._limiter = ActiveTaskLimiter(max_active, per_model=per_model_limits)
        scale = self._preset.latency_scale
        self._policy: PollPolicy = poll_policy or BackoffPolicy(
            initial=lambda key: _typical_latency(key) * scale
        )
        self._scheduler_args = {
            "max_concurrent_polls": max_concurrent_polls,
            "task_timeout": task_timeout or self._preset.task_timeout,
        }
        self._state = _State.UNOPENED
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._provider: Provider | None = None
        self._scheduler: Scheduler | None = None
        self._downloader: Downloader | None = None

    def __repr__(self) -> str:
        return (
            f"AsyncFlux(provider={self._preset.name!r}, base_url={self.base_url!r}, "
            f"key={self._key!r}, state={self._state.value})"
        )

    @property
    def base_url(self) -> str:
        return (self._base_url or self._preset.base_url).rstrip("/")

    @property
    def provider_name(self) -> str:
        return self._preset.name

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise ClientClosedError(
                f"an AsyncFlux client can be opened once (it is {self._state.value})"
            )
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
            api_http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=self._transport,
                    timeout=self._timeout,
                    follow_redirects=False,
                    headers={"user-agent": USER_AGENT},
                    limits=limits,
                )
            )
            # A separate client with no credentials at all: result URLs live on delivery
            # hosts that must never see the key, and redirects there are safe to follow.
            download_http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=self._transport,
                    follow_redirects=True,
                    timeout=httpx.Timeout(self._timeout, read=120.0),
                    headers={"user-agent": USER_AGENT},
                )
            )
            self._provider = make_provider(
                self._preset, api_http, key=self._key, clock=self._clock, base_url=self._base_url
            )
            self._downloader = Downloader(
                download_http, clock=self._clock, max_concurrent=self._max_downloads
            )
            self._scheduler = Scheduler(
                self._provider.poll,
                clock=self._clock,
                policy=self._policy,
                **self._scheduler_args,  # type: ignore[arg-type]
            )
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._abandon)
            await self._tg.start(self._scheduler.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the scheduler and every background task, and close all connections."""
        if self._state is not _State.OPENED:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSED
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if self._stack is not None:
            await self._stack.aclose()

    def _abandon(self) -> None:
        if self._scheduler is None:
            return
        pending = self._scheduler.statistics().pending
        if pending:
            logger.warning("client closed with %d task(s) still pending on the server", pending)
        self._scheduler.abandon_all(ClientClosedError("the client was closed"))

    def _require_open(self) -> tuple[Provider, Scheduler, Downloader]:
        if self._state is not _State.OPENED:
            raise ClientClosedError(
                f"the client is {self._state.value}; use it inside `async with AsyncFlux()`"
            )
        if self._provider is None or self._scheduler is None or self._downloader is None:
            raise ClientClosedError("the client is not fully open")
        return self._provider, self._scheduler, self._downloader

    # -- one image ----------------------------------------------------------------------

    def build_request(self, prompt: str | None = None, *, model: str, **fields: Any) -> BaseRequest:
        """Validate ``fields`` against ``model``'s rules; raise ValidationError naming the field."""
        return build_request(model, prompt, **fields)

    async def submit(self, request: BaseRequest | None = None, /, **fields: Any) -> Task:
        """Submit one request under the active-task limit and start polling it.

        Pass a request model, or fields (``prompt=``, ``model=``, ...). The task's slot is
        held until the scheduler sees a terminal status.
        """
        req = (
            validate_request(request)
            if request is not None
            else build_request(
                fields.pop("model", "flux-2-pro"), fields.pop("prompt", None), **fields
            )
        )
        return await self._submit(req)

    async def _submit(self, req: BaseRequest) -> Task:
        provider, scheduler, _ = self._require_open()
        slot = await self._limiter.acquire(req.model)
        try:
            task = await self._submit_with_retries(provider, req)
        except BaseException:
            slot.release()
            raise
        self._track(scheduler, task, slot)
        return task

    def _track(self, scheduler: Scheduler, task: Task, slot: Slot) -> None:
        scheduler.add(task, on_terminal=lambda _outcome: slot.release())

    async def _submit_with_retries(self, provider: Provider, req: BaseRequest) -> Task:
        started = self._clock.monotonic()
        attempt = 0
        while True:
            try:
                return await provider.submit(req)
            except RateLimitError as exc:
                # A 429 created nothing: wait, then submit again, within rate_limit_timeout.
                self._limiter.note_rate_limited()
                delay = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else compute_backoff(attempt, base=1.0, cap=30.0)
                )
                if self._clock.monotonic() - started + delay > self._rate_limit_timeout:
                    raise
            except (ConnectError, ServerError, RequestTimeoutError) as exc:
                # Nothing reached the server (no connection, 503 at the door): safe to retry.
                if attempt >= self._max_submit_retries:
                    raise
                delay = compute_backoff(attempt, base=1.0, cap=30.0)
                logger.info("submit not delivered (%s); retrying in %.1f s", exc, delay)
            except AmbiguousSubmitError as exc:
                if not self._retry_ambiguous or attempt >= self._max_submit_retries:
                    raise
                delay = compute_backoff(attempt, base=1.0, cap=30.0)
                logger.warning("submit may have been billed (%s); retrying as asked", exc)
            attempt += 1
            await self._clock.sleep(delay)

    async def wait(self, task: Task) -> TaskResult:
        """Wait until the shared scheduler sees ``task`` end; return its result or raise.

        A task this client did not submit (one recorded by an earlier run) is polled by its
        recorded ``polling_url`` and counted against the active-task limit until it ends.
        """
        _, scheduler, _ = self._require_open()
        if not scheduler.is_registered(task.id):
            self._track(scheduler, task, self._limiter.occupy(task.model))
        return await scheduler.wait(task)

    async def save(self, result: TaskResult, path: str | Path) -> Path:
        """Stream ``result``'s image to ``path`` (a file, or an existing folder) and return it.

        The extension comes from the output format or the content type when ``path`` has
        none. Bytes go to a temp file renamed into place only when complete.
        """
        _, _, downloader = self._require_open()
        dest = Path(path)
        if await anyio.Path(dest).is_dir():
            dest = dest / result.task.id
        deadline = result_deadline(
            result.sample_url, end_time=result.end_time, now=self._clock.time()
        )
        saved = await downloader.download(
            result.sample_url,
            dest,
            deadline=deadline,
            task_id=result.task.id,
            refresh=lambda: self._fresh_url(result),
            output_format=result.task.output_format,
        )
        return saved.path

    async def _fresh_url(self, result: TaskResult) -> str | None:
        provider, _, _ = self._require_open()
        reply = await provider.poll(result.task)
        sample = reply.sample() if reply.status == Status.READY else None
        # The same URL again is still worth one more try: the 403 may have been transient.
        return sample.sample if sample is not None and sample.sample else None

    async def generate(
        self,
        prompt: str | None = None,
        *,
        model: str = "flux-2-pro",
        output_dir: str | Path = ".",
        filename: str | None = None,
        **fields: Any,
    ) -> GeneratedImage:
        """Generate one image and save it under ``output_dir``; return where it is."""
        request = build_request(model, prompt, **fields)
        return await self._generate(request, Path(output_dir), filename)

    async def _generate(
        self, request: BaseRequest, output_dir: Path, stem: str | None
    ) -> GeneratedImage:
        task = await self._submit(request)
        _, scheduler, _ = self._require_open()
        try:
            result = await self.wait(task)
        finally:
            # The outcome is in hand (or raised): the scheduler need not remember it.
            scheduler.forget(task.id)
        path = await self.save(result, output_dir / (stem or task.id))
        return GeneratedImage(
            path=path,
            task_id=task.id,
            model=task.model,
            prompt=task.prompt,
            seed=result.seed,
            cost=task.cost,
            size=path.stat().st_size,
            prompt_used=result.prompt,
        )

    # -- many images --------------------------------------------------------------------

    async def generate_many(
        self,
        items: Iterable[Item] | AsyncIterable[Item],
        *,
        model: str = "flux-2-pro",
        output_dir: str | Path = ".",
        concurrency: int | None = None,
        **defaults: Any,
    ) -> AsyncGenerator[Outcome, None]:
        """Yield an :class:`Outcome` per item as each finishes; never raise for one item.

        Items are prompts, mappings of request fields (``prompt``, ``model``, ...), or
        request models. ``defaults`` apply to every item; an item's own fields win.
        At most ``concurrency`` items are in progress (default: twice the active limit).
        """
        self._require_open()
        if self._tg is None:
            raise ClientClosedError("the client is not fully open")
        limit = concurrency or 2 * self._limiter.limit
        send, receive = anyio.create_memory_object_stream[Outcome](limit)
        scope = anyio.CancelScope()
        self._tg.start_soon(
            self._run_many, items, send, scope, limit, model, Path(output_dir), defaults
        )
        try:
            async with receive:
                async for outcome in receive:
                    yield outcome
        finally:
            # The consumer stopped early: stop feeding; submitted tasks keep their slots.
            scope.cancel()

    async def _run_many(
        self,
        items: Iterable[Item] | AsyncIterable[Item],
        send: anyio.abc.ObjectSendStream[Outcome],
        scope: anyio.CancelScope,
        limit: int,
        model: str,
        output_dir: Path,
        defaults: Mapping[str, Any],
    ) -> None:
        gate = anyio.Semaphore(limit)
        with scope:
            async with send, anyio.create_task_group() as tg:
                index = 0
                async for item in _aiter(items):
                    await gate.acquire()
                    tg.start_soon(self._one, index, item, send, gate, model, output_dir, defaults)
                    index += 1

    async def _one(
        self,
        index: int,
        item: Item,
        send: anyio.abc.ObjectSendStream[Outcome],
        gate: anyio.Semaphore,
        model: str,
        output_dir: Path,
        defaults: Mapping[str, Any],
    ) -> None:
        prompt: str | None = None
        try:
            request = _item_request(item, model, defaults)
            prompt = getattr(request, "prompt", None)
            image = await self._generate(request, output_dir, f"{index:05d}")
            outcome = Outcome(index=index, prompt=prompt, image=image, task_id=image.task_id)
        except FluxError as exc:
            prompt = prompt or _item_prompt(item)
            outcome = Outcome(index=index, prompt=prompt, error=exc, task_id=exc.task_id)
        finally:
            gate.release()
        await send.send(outcome)

    async def credits(self) -> float:
        """Return the account's credit balance."""
        provider, _, _ = self._require_open()
        return await provider.credits()

    def statistics(self) -> ClientStatistics:
        """Return snapshots of the limiter, scheduler and downloader."""
        _, scheduler, downloader = self._require_open()
        return ClientStatistics(
            limiter=self._limiter.statistics(),
            scheduler=scheduler.statistics(),
            downloader=downloader.statistics(),
        )


def _typical_latency(key: str) -> float:
    """Return the catalog's typical latency for a ``provider:model`` key (3 s if unknown)."""
    spec = MODELS.get(key.rpartition(":")[2])
    return spec.latency_median if spec is not None else 3.0


def _item_request(item: Item, model: str, defaults: Mapping[str, Any]) -> BaseRequest:
    if isinstance(item, BaseRequest):
        return validate_request(item)
    if isinstance(item, str):
        return build_request(model, item, **defaults)
    fields = {**defaults, **item}
    return build_request(fields.pop("model", model), fields.pop("prompt", None), **fields)


def _item_prompt(item: Item) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        value = item.get("prompt")
        return value if isinstance(value, str) else None
    return getattr(item, "prompt", None)


async def _aiter(items: Iterable[Item] | AsyncIterable[Item]) -> AsyncIterator[Item]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
            # Yield control so a huge synchronous iterable cannot starve the event loop.
            await anyio.lowlevel.checkpoint()
