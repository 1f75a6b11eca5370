"""``AsyncFlux``: the client that wires validation, limiter, provider, scheduler and downloader.

Data flows one way: request → validate → limiter → provider.submit → scheduler →
downloader → outcome. Everything background (the scheduler loop, ``generate_many``
workers) runs in a task group the client owns, so leaving ``async with`` leaves nothing
running and no connection open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import (
    Iterable,
    Mapping,
)
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc
import httpx

from ._client_generate import GenerateMethods
from ._client_tasks import ClientState
from ._core._bounded import DEFAULT_MAX_IMAGE_BYTES
from ._core._clock import Clock, SystemClock
from ._core._paths import WritableFolders
from ._engine._download import Downloader
from ._engine._limits import ActiveTaskLimiter
from ._engine._scheduler import Scheduler
from ._errors import ClientClosedError, ConfigurationError
from ._fleet import Coordinator, Fleet
from ._polling._hybrid import HybridPolicy
from ._polling._policy import PollPolicy
from ._polling._regime import PollingMode, regime_policy
from ._polling._window import AdaptiveWindow
from ._providers import ApiKey, Provider, get_preset, resolve_api_key
from ._providers._http import DEFAULT_MAX_REPLY_BYTES
from ._request._catalog import DEFAULT_ACTIVE_LIMIT
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


class AsyncFlux(GenerateMethods):
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
        self._state = ClientState.UNOPENED
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
        if self._state is not ClientState.UNOPENED:
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
        self._state = ClientState.OPENED
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
        if self._state is not ClientState.OPENED:
            self._state = ClientState.CLOSED
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
            self._state = ClientState.CLOSED
            self._webhooks.unbind()
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            if self._stack is not None:
                await self._stack.aclose()

    def _check_accepting(self) -> None:
        """Refuse a submission once the client is closing (called before anything is paid)."""
        if self._closing:
            raise ClientClosedError("the client is closing; this request was not submitted")

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
