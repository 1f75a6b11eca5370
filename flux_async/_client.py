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
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc
import httpx

from ._core._bounded import DEFAULT_MAX_IMAGE_BYTES
from ._core._clock import Clock, SystemClock
from ._core._paths import WritableFolders, check_file_name, task_stem
from ._engine._download import Downloader, SavedFile, result_deadline
from ._engine._limits import ActiveTaskLimiter, Slot
from ._engine._scheduler import Scheduler
from ._errors import ClientClosedError, ConfigurationError, DownloadError, FluxError
from ._fleet import Coordinator, Fleet, TaskRecord, adoption_target
from ._many import Item, run_many
from ._polling._hybrid import HybridPolicy
from ._polling._policy import PollPolicy
from ._polling._regime import PollingMode, regime_policy
from ._polling._window import AdaptiveWindow
from ._providers import ApiKey, Provider, get_preset, resolve_api_key
from ._providers._http import DEFAULT_MAX_REPLY_BYTES
from ._request._build import build_request, validate_request
from ._request._catalog import DEFAULT_ACTIVE_LIMIT
from ._request._models import GeneratedImage, Outcome, Status, Task, TaskResult
from ._request._references import ReferenceImage, reference_placeholders, resolve_references
from ._request._requests import BaseRequest
from ._statistics import ClientStatistics
from ._submission import Submitter
from ._web._events import EventEmitter, EventHook
from ._web._orphans import OnCancel, OrphanHook, OrphanKeeper, WorkTracker
from ._web._webhook_app import ASGIApp, WebhookReceiver, asgi_app
from ._wiring import open_parts

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["AsyncFlux", "ClientStatistics"]

logger = logging.getLogger("flux_async")


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class AsyncFlux:
    """An asyncio client for FLUX image generation.

    Use it as ``async with AsyncFlux() as flux:``. ``api_key`` defaults to the provider's
    environment variable (``BFL_API_KEY`` for the BFL presets). ``base_url`` overrides the
    preset's host (a proxy, the simulator). ``transport`` injects an httpx transport (the
    simulator's in-process transport in tests).

    Limits: ``max_active`` tasks in flight per account (default 24; the catalog's model caps,
    6 for ``flux-kontext-max``, apply unless ``per_model_limits`` overrides them),
    ``max_downloads`` concurrent downloads (default: ``max_active``), and
    ``max_concurrent_polls`` poll requests at once.
    ``retry_ambiguous=True`` lets a submit that may have been billed be sent again.

    Adapting: when the server answers 429 below ``max_active`` (another process shares the
    key, or the plan is smaller), ``adaptive_limit`` lowers the window to what it accepted
    and probes one step up after each ``limit_quiet_period`` seconds without a 429.
    Polling: hazard-shaped polls learned per provider and model (see ``_hazard``), at
    the rate the moment calls for (see ``_regime``): ``polling="auto"`` (default) spends
    polls to find finished tasks fast while submissions wait for a slot, and polls
    sparingly while slots are spare; ``"throughput"`` or ``"frugal"`` fixes one regime.
    ``poll_policy`` replaces the schedule altogether.

    In a web backend (docs/web-backend.md): ``webhook_url`` makes every submission carry
    it and ``webhook_secret`` (None: a fresh random one); deliveries go to
    :meth:`handle_webhook` or :meth:`webhook_app`, and such tasks are polled only every
    ``webhook_fallback`` to twice that many seconds, in case a webhook is lost.
    ``event_hooks`` receive every event (see ``_events``). ``on_cancel`` says what
    becomes of a paid task whose caller was cancelled: ``"orphan"`` saves its image (to
    ``orphan_dir``, else where the caller asked) and calls ``on_orphan(image)``;
    ``"abandon"`` does not download it. ``drain_timeout`` is the default of
    :meth:`aclose`'s ``drain``: seconds to let paid work finish before stopping.

    Bounds on what a server sends (docs/security.md): ``timeout`` seconds for a whole
    poll or credits request (a submit: the preset's request timeout), a JSON reply of at
    most ``max_reply_bytes`` decoded bytes (default 4 MiB), an image of at most
    ``max_image_bytes`` decoded bytes (default 64 MiB). Anything a server sends that
    breaks the protocol fails that task alone, with :class:`MalformedReplyError`.

    In a fleet (docs/fleet.md): ``coordinator`` (a ``redis://``/``rediss://`` URL, a
    ``redis.asyncio.Redis`` or a :class:`Coordinator`; default: the environment variable
    ``FLUX_ASYNC_COORDINATOR``) makes ``max_active`` the cap of every process sharing
    that Redis, provider and key: slots are leases in Redis, granted in FIFO order across
    processes, and a dead process's tasks are adopted and saved by the others.
    """

    def __init__(
        self,
        api_key: str | None = None,
        provider: str = "bfl",
        base_url: str | None = None,
        *,
        max_active: int = DEFAULT_ACTIVE_LIMIT,
        per_model_limits: Mapping[str, int] | None = None,
        max_downloads: int | None = None,
        max_concurrent_polls: int = 16,
        task_timeout: float | None = None,
        retry_ambiguous: bool = False,
        rate_limit_timeout: float = 600.0,
        max_submit_retries: int = 5,
        poll_policy: PollPolicy | None = None,
        polling: PollingMode = "auto",
        adaptive_limit: bool = True,
        limit_quiet_period: float = 30.0,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_fallback: float = 30.0,
        event_hooks: Iterable[EventHook] = (),
        on_cancel: OnCancel = "orphan",
        orphan_dir: str | Path | None = None,
        on_orphan: OrphanHook | None = None,
        drain_timeout: float = 0.0,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        coordinator: str | Redis | Coordinator | None = None,
    ) -> None:
        if max_reply_bytes < 1024 or max_image_bytes < 1024:
            raise ConfigurationError("max_reply_bytes and max_image_bytes must be >= 1024")
        self._max_reply_bytes = max_reply_bytes
        self._max_image_bytes = max_image_bytes
        self._preset = get_preset(provider)
        self._key: ApiKey = resolve_api_key(api_key, self._preset)
        self._base_url = base_url
        self._clock: Clock = clock or SystemClock()
        self._transport = transport
        self._timeout = timeout
        # Every finished task may need a download at once: one lane per active slot.
        self._max_downloads = max_downloads or max_active
        window = (
            AdaptiveWindow(max_active, quiet_period=limit_quiet_period) if adaptive_limit else None
        )
        self._events = EventEmitter(event_hooks, clock=self._clock)
        self._task_timeout = task_timeout or self._preset.task_timeout
        self._fleet: Fleet | None = None
        fleet_coordinator = Coordinator.resolve(coordinator)
        if fleet_coordinator is not None:
            self._fleet = Fleet(
                fleet_coordinator,
                provider=self._preset.name,
                api_key=self._key.reveal(),
                limit=max_active,
                per_model=per_model_limits,
                clock=self._clock,
                quiet_period=limit_quiet_period,
                task_timeout=self._task_timeout,
                events=self._events,
            )
            self._limiter: ActiveTaskLimiter = self._fleet.limiter
        else:
            self._limiter = ActiveTaskLimiter(
                max_active, per_model=per_model_limits, adaptive=window, clock=self._clock
            )
        self._submitter = Submitter(
            self._limiter,
            clock=self._clock,
            check_accepting=self._check_accepting,
            retry_ambiguous=retry_ambiguous,
            rate_limit_timeout=rate_limit_timeout,
            max_retries=max_submit_retries,
        )
        # Latency-aware polling, learned per provider:model from the catalog's prior.
        # Submissions waiting for a slot: the limiter's own waiters, and those a caller
        # holds back before submitting (a batch marks an item "submitting" only once it
        # may go), see ``_waiting_for_slot``.
        self._held_back = 0
        self._policy: PollPolicy = poll_policy or regime_policy(
            self._preset.latency_scale,
            mode=polling,
            waiting=lambda: self._limiter.waiting + self._held_back,
        )
        self._events = EventEmitter(event_hooks, clock=self._clock)
        self._webhooks = WebhookReceiver(
            webhook_url,
            webhook_secret,
            clock=self._clock,
            events=self._events,
            dialect=self._preset.dialect,
        )
        if self._webhooks.enabled:
            self._policy = HybridPolicy(self._policy, webhook_fallback)
        self._work = WorkTracker(self._clock)
        self._orphans = OrphanKeeper(
            on_cancel,
            orphan_dir=orphan_dir,
            on_orphan=on_orphan,
            events=self._events,
            work=self._work,
        )
        self._drain_timeout = drain_timeout
        self._closing = False
        self._max_polls = max_concurrent_polls
        self._state = _State.UNOPENED
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._provider: Provider | None = None
        self._scheduler: Scheduler | None = None
        self._downloader: Downloader | None = None
        self._folders = WritableFolders()

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

    @property
    def clock(self) -> Clock:
        """The clock this client reads and sleeps on (share it with a simulator in tests)."""
        return self._clock

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise ClientClosedError(
                f"an AsyncFlux client can be opened once (it is {self._state.value})"
            )
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self._provider, self._downloader, self._scheduler, poll = await open_parts(
                stack,
                self._preset,
                key=self._key,
                clock=self._clock,
                base_url=self._base_url,
                transport=self._transport,
                http_timeout=self._timeout,
                max_downloads=self._max_downloads,
                policy=self._policy,
                events=self._events,
                max_active=self._limiter.limit,
                max_polls=self._max_polls,
                task_timeout=self._task_timeout,
                max_reply_bytes=self._max_reply_bytes,
                max_image_bytes=self._max_image_bytes,
            )
            if self._fleet is not None:
                await self._fleet.open(stack)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._abandon)
            await self._tg.start(self._scheduler.run)
            self._webhooks.bind(poll, self._scheduler, self._tg)
            self._orphans.bind(
                self._tg,
                wait=self._scheduler.wait,
                save=self._save_new,
                forget=self._forget,
            )
            if self._fleet is not None:
                webhooks = self._webhooks if self._webhooks.enabled else None
                await self._fleet.start(self._tg, self._adopt, webhooks)
        except BaseException:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()  # its loops would keep stack.aclose() waiting
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
        # Leaving on an error or a cancellation stops at once; a clean exit may drain.
        await self.aclose(drain=None if exc_type is None else 0.0)

    async def aclose(self, drain: float | None = None) -> None:
        """Stop the scheduler and every background task, and close all connections.

        ``drain`` (default: ``drain_timeout``, 0) gives paid work that many seconds to
        finish first: callers past their submit, orphans being saved, pending tasks. New
        submissions are refused meanwhile with ClientClosedError (nothing paid). What is
        left then is stopped: its waiters get ClientClosedError.
        """
        if self._closing:
            return  # another aclose() is draining, or the client is closed
        if self._state is not _State.OPENED:
            self._state = _State.CLOSED
            return
        self._closing = True
        seconds = self._drain_timeout if drain is None else drain
        try:
            scheduler = self._scheduler
            if seconds > 0 and scheduler is not None:
                idle = await self._work.wait_idle(
                    seconds, lambda: scheduler.statistics().pending == 0
                )
                if not idle:
                    logger.warning("paid work still in progress after draining %.1f s", seconds)
        finally:
            self._state = _State.CLOSED
            self._webhooks.unbind()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            if self._stack is not None:
                await self._stack.aclose()

    def _forget(self, task_id: str) -> None:
        """A task's caller is done with it (image saved, or it failed): forget it."""
        if self._scheduler is not None:
            self._scheduler.forget(task_id)
        if self._fleet is not None:
            self._fleet.unregister(task_id)

    def _adopt(self, record: TaskRecord, slot: Slot) -> None:
        """See a task of a dead fleet process to its end and save its image."""
        if self._tg is not None:
            self._tg.start_soon(self._keep_adopted, record, slot)

    async def _keep_adopted(self, record: TaskRecord, slot: Slot) -> None:
        _, scheduler, _ = self._require_open()
        task = record.task(self._clock)
        dest, exact = await adoption_target(record, self._orphans.orphan_dir)
        self._work.enter()
        self._track(scheduler, task, slot, submitted=False, dest=dest)
        self._orphans.adopt(task, dest, None, exact=exact)

    def _check_accepting(self) -> None:
        """Refuse a submission once the client is closing (called before anything is paid)."""
        if self._closing:
            raise ClientClosedError("the client is closing; this request was not submitted")

    def _abandon(self) -> None:
        lost = self._orphans.lost()
        if lost:
            logger.warning("client closed before saving orphaned task(s) %s", ", ".join(lost))
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

    async def submit(
        self,
        request: BaseRequest | None = None,
        /,
        *,
        images: Sequence[ReferenceImage] | None = None,
        **fields: Any,
    ) -> Task:
        """Submit one request under the active-task limit and start polling it.

        Pass a request model, or fields (``prompt=``, ``model=``, ...). The task's slot is
        held until the scheduler sees a terminal status. ``images`` (URLs, paths, bytes or
        data: URLs) fill the model's reference fields, replacing any the request has;
        files are read only now, just before sending.

        Args:
            request: A request built with ``build_request`` (or None, and fields).
            images: Reference images, in order.
            **fields: ``prompt=``, ``model=`` and request fields, when no request is given.

        Returns:
            The created task; pass it to ``wait``.

        Raises:
            ValidationError: The request breaks its model's rules (nothing was sent).
            APIError: The server refused the submit.
            AmbiguousSubmitError: The submit may have created (and billed) a task whose
                id never came back; it is not sent again unless ``retry_ambiguous``.

        Examples:
            ```python
            task = await flux.submit(prompt="a red fox", model="flux-2-pro")
            result = await flux.wait(task)
            path = await flux.save(result, "out")
            ```
        """
        if request is not None:
            req = validate_request(request)
        else:
            model = fields.pop("model", "flux-2-pro")
            fields.update(reference_placeholders(images, model=model, fields=fields))
            req = build_request(model, fields.pop("prompt", None), **fields)
        return await self._submit(req, images)

    async def _submit(
        self,
        req: BaseRequest,
        images: Sequence[ReferenceImage] | None = None,
        output: tuple[Path, str | None] | None = None,
    ) -> Task:
        provider, scheduler, _ = self._require_open()
        if images:
            req = await self._with_references(req, images)
        req = self._webhooks.prepare(req)
        task, slot = await self._submitter.submit(provider, req)
        dest = output[0] / (output[1] or task.id) if output is not None else None
        self._track(scheduler, task, slot, dest=dest)
        if self._fleet is not None:
            await self._fleet.registered(task.id)
        return task

    async def _with_references(
        self, req: BaseRequest, images: Sequence[ReferenceImage]
    ) -> BaseRequest:
        """Return ``req`` with its reference fields filled from ``images``, as the wire needs."""
        resolved = await resolve_references(images, model=req.model, dialect=self._preset.dialect)
        changes: dict[str, Any] = dict.fromkeys(type(req).reference_fields)
        changes.update(resolved)
        return req.replace(**changes)

    def _track(
        self,
        scheduler: Scheduler,
        task: Task,
        slot: Slot,
        *,
        submitted: bool = True,
        dest: Path | None = None,
    ) -> None:
        # Only tasks submitted here carry this client's webhook; resumed ones are polled.
        key = self._webhooks.watch(task) if submitted else None
        self._events.submitted(task, webhook=key is not None)
        fleet = self._fleet
        if fleet is not None:
            # Recorded until its image is saved (with a destination) or until it ends.
            fleet.register(task, slot, dest)

        def ended(outcome: TaskResult | FluxError) -> None:
            slot.release()
            if fleet is not None and dest is None:
                fleet.unregister(task.id)
            self._webhooks.unwatch(task.id)
            self._work.notify()
            self._events.ended(task, outcome)

        scheduler.add(task, on_terminal=ended, key=key)

    async def wait(self, task: Task) -> TaskResult:
        """Wait until the shared scheduler sees ``task`` end; return its result or raise.

        A task this client did not submit (one recorded by an earlier run) is polled by its
        recorded ``polling_url`` and counted against the active-task limit until it ends.

        Args:
            task: A task from ``submit`` (or one recorded earlier).

        Returns:
            The result, with the signed URL of the image (valid for minutes: save it soon).

        Raises:
            TaskError: The task ended without an image (``ModerationError``,
                ``GenerationError``, ``TaskNotFoundError``, ``TaskTimeoutError`` ...).
        """
        _, scheduler, _ = self._require_open()
        if not scheduler.is_registered(task.id):
            self._track(scheduler, task, self._limiter.occupy(task.model), submitted=False)
        return await scheduler.wait(task)

    async def save(self, result: TaskResult, path: str | Path) -> Path:
        """Stream ``result``'s image to ``path`` (a file, or an existing folder) and return it.

        The extension comes from the output format or the content type when ``path`` has
        none. Bytes go to a temp file renamed into place only when complete. Into a
        folder, the name is the task id made safe (``_paths.task_stem``) and an existing
        file is never replaced (``NAME-1.jpeg``, ... instead); a file path the caller
        names is replaced if it exists.

        Args:
            result: A result from ``wait``.
            path: A file path, or an existing folder (the file is named by the task id).

        Returns:
            The path of the saved file.

        Raises:
            ResultExpiredError: The signed URL expired before the download.
            IncompleteDownloadError: The download ended early (no partial file is left).
            StorageError: The local disk refused the file (full, read-only, I/O error);
                the task is still ready, so saving again needs no new submit.
        """
        return (await self._save_file(result, path, overwrite=True)).path

    async def _save_new(self, result: TaskResult, path: str | Path) -> Path:
        """Save as :meth:`save` does, but never replace an existing file."""
        return (await self._save_file(result, path, overwrite=False)).path

    async def _save_file(
        self, result: TaskResult, path: str | Path, *, overwrite: bool
    ) -> SavedFile:
        """Save as :meth:`save` does; return the size and SHA-256 hashed while streaming."""
        _, _, downloader = self._require_open()
        dest = Path(path)
        if await anyio.Path(dest).is_dir():
            # The id is the server's string: never a path, only a sanitised name.
            dest, overwrite = dest / task_stem(result.task.id), False
        deadline = result_deadline(
            result.sample_url, end_time=result.end_time, now=self._clock.time()
        )
        try:
            saved = await downloader.download(
                result.sample_url,
                dest,
                deadline=deadline,
                task_id=result.task.id,
                refresh=lambda: self._fresh_url(result),
                output_format=result.task.output_format,
                overwrite=overwrite,
            )
        except DownloadError as exc:
            self._events.failed(exc, result.task)
            raise
        orphan = self._orphans.is_adopted(result.task.id)
        self._events.saved(result.task, saved.path, saved.size, orphan=orphan)
        return saved

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
        images: Sequence[ReferenceImage] | None = None,
        **fields: Any,
    ) -> GeneratedImage:
        """Generate one image and save it under ``output_dir``; return where it is.

        ``images`` are reference images for editing: URLs, local paths, bytes or data:
        URLs, in the order of the model's ``input_image`` fields. ``filename`` must be a
        plain file name (no separator, ``..``, absolute path or control character: a
        ValidationError before anything is sent); without it the name is the task id
        made safe. An existing file is never replaced: ``NAME-1.jpeg``, ``NAME-2.jpeg``,
        ... is used instead (``img.path`` says which). ``output_dir`` is created and
        write-tested before the submit (ConfigurationError if it cannot be written).

        Args:
            prompt: The text prompt (optional only where the model allows it).
            model: A model of the catalog (``flux_async.MODELS``).
            output_dir: The folder the image is saved in (created if missing).
            filename: The file name without extension (default: the task id).
            images: Reference images, in order.
            **fields: Any other request field of the model (``width``, ``seed`` ...).

        Returns:
            Where the image was saved, with its task id, seed and cost.

        Raises:
            ConfigurationError: An unknown model; the client is set up wrongly.
            ValidationError: A field breaks the model's rules (nothing was sent).
            APIError: The server refused the submit (``AuthenticationError``,
                ``InsufficientCreditsError``, ``RateLimitError`` ...).
            TaskError: The task ended without an image (``ModerationError``,
                ``GenerationError``, ``TaskTimeoutError`` ...).
            DownloadError: The image could not be saved.

        Examples:
            ```python
            async with AsyncFlux() as flux:  # the key comes from BFL_API_KEY
                image = await flux.generate("a red fox", width=1024, height=768, seed=7)
                print(image.path, image.task_id, image.cost)
            ```
        """
        if filename is not None:
            check_file_name(filename, field="filename")
        fields.update(reference_placeholders(images, model=model, fields=fields))
        request = build_request(model, prompt, **fields)
        folder = await self._folders.prepare(output_dir)
        return await self._generate(request, folder, filename, images)

    async def _generate(
        self,
        request: BaseRequest,
        output_dir: Path,
        stem: str | None,
        images: Sequence[ReferenceImage] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> GeneratedImage:
        task = await self._submit(request, images, (output_dir, stem))
        dest = output_dir / (stem or task_stem(task.id))
        # Paid from here on: if this caller is cancelled, the orphan keeper takes over.
        with self._orphans.guard(task, dest) as guard:
            result = guard.result = await self.wait(task)
            if on_ready is not None:
                on_ready()  # generate_many: the next item may submit during this download
            saved = await self._save_file(result, dest, overwrite=False)
        return GeneratedImage(
            path=saved.path,
            task_id=task.id,
            model=task.model,
            prompt=task.prompt,
            seed=result.seed,
            cost=task.cost,
            size=saved.size,
            prompt_used=result.prompt,
        )

    @contextlib.contextmanager
    def _waiting_for_slot(self) -> Iterator[None]:
        """Count the caller as a submission waiting for a slot while inside the block.

        For callers that queue before :meth:`submit` (``flux-async batch`` does): the
        polling regime (``polling="auto"``) then knows a backlog waits, as it knows of
        the limiter's own waiters.
        """
        self._held_back += 1
        try:
            yield
        finally:
            self._held_back -= 1

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
        At most ``concurrency`` items are being submitted or generated (default: twice
        the active limit); an item whose task is Ready makes room for the next while its
        image downloads, and at most ``concurrency`` more wait for or run their download.
        Item ``i`` is saved as ``{i:05d}.<ext>``, or ``{i:05d}-1.<ext>``, ... when that
        name is taken: an existing file is never replaced. A malformed item (wrong type,
        unknown field, a rule broken) is that item's failed outcome (ValidationError).
        ``output_dir`` is created and write-tested before the first submit
        (ConfigurationError, raised by the first iteration, if it cannot be written).

        Args:
            items: Prompts, mappings of request fields, or request models; an async
                iterable is read as items are needed.
            model: The model of items that do not name one.
            output_dir: The folder every image is saved in.
            concurrency: Items in progress at once.
            **defaults: Request fields applied to every item.

        Yields:
            One ``Outcome`` per item, in finishing order: ``index``, ``ok``, ``path``,
            ``error`` (the exception an item's failure would have raised).

        Raises:
            ClientClosedError: The client is not open.

        Examples:
            ```python
            async for outcome in flux.generate_many(["a cat", "a dog"], output_dir="out"):
                print(outcome.index, outcome.ok, outcome.path, outcome.error)
            ```
        """
        self._require_open()
        if self._tg is None:
            raise ClientClosedError("the client is not fully open")
        folder = await self._folders.prepare(output_dir)
        limit = concurrency or 2 * self._limiter.limit
        send, receive = anyio.create_memory_object_stream[Outcome](limit)
        scope = anyio.CancelScope()
        self._tg.start_soon(
            run_many, self._generate, items, send, scope, limit, model, folder, defaults
        )
        try:
            async with receive:
                async for outcome in receive:
                    yield outcome
        finally:
            # The consumer stopped early: stop feeding; submitted tasks keep their slots.
            scope.cancel()

    async def credits(self) -> float:
        """Return the account's credit balance (1 credit = US$0.01).

        Raises:
            ConfigurationError: The provider has no credits endpoint (the relays).
            AuthenticationError: The key was refused.
        """
        provider, _, _ = self._require_open()
        return await provider.credits()

    def statistics(self) -> ClientStatistics:
        """Return snapshots of the limiter, scheduler, downloader, webhooks and orphans."""
        _, scheduler, downloader = self._require_open()
        return ClientStatistics(
            limiter=self._limiter.statistics(),
            scheduler=scheduler.statistics(),
            downloader=downloader.statistics(),
            webhooks=self._webhooks.statistics(),
            orphans=self._orphans.statistics(),
        )

    # -- webhooks -----------------------------------------------------------------------

    async def handle_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Handle one webhook delivery; return the HTTP status and JSON body to answer.

        Framework-neutral: pass the request's headers and raw body bytes. Forged,
        malformed or stale deliveries get 401/400/413; duplicates and deliveries for
        tasks this client does not wait for get 200 and are ignored; a claimed ending
        gets 202 and is confirmed by one poll before it ends the task.
        """
        return await self._webhooks.handle(headers, body)

    def webhook_app(self) -> ASGIApp:
        """Return a plain ASGI app over :meth:`handle_webhook`, to mount in any framework.

        It may be created before the client opens; until then it answers 503.
        """
        return asgi_app(self.handle_webhook, max_body_bytes=self._webhooks.max_body_bytes)
