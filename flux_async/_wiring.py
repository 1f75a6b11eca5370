"""Build the parts an open client runs on: HTTP clients, provider, downloader, scheduler.

``AsyncFlux.__aenter__`` calls :func:`open_parts` with its exit stack, so everything opened
here is closed, in reverse order, when the client closes.
"""

from __future__ import annotations

import contextlib

import httpx

from ._core._clock import Clock
from ._engine._download import Downloader
from ._engine._scheduler import PollFn, Scheduler
from ._polling._budget import RateBudget
from ._polling._policy import PollPolicy
from ._providers import ApiKey, Provider, ProviderPreset, make_provider
from ._providers._http import api_client, download_client
from ._web._events import EventEmitter

__all__ = ["open_parts"]


async def open_parts(
    stack: contextlib.AsyncExitStack,
    preset: ProviderPreset,
    *,
    key: ApiKey,
    clock: Clock,
    base_url: str | None,
    transport: httpx.AsyncBaseTransport | None,
    http_timeout: float,
    max_downloads: int,
    policy: PollPolicy,
    events: EventEmitter,
    max_active: int,
    max_polls: int,
    task_timeout: float,
    max_reply_bytes: int,
    max_image_bytes: int,
) -> tuple[Provider, Downloader, Scheduler, PollFn]:
    """Open both HTTP clients on ``stack`` and build the parts over them.

    Two clients on purpose: the API client never carries the key by default and never
    follows redirects; the download client carries no credential at all. At most
    ``max_active`` submits and ``max_polls`` polls are on the wire at once.
    """
    busy = max_active + max_polls
    api_http = await stack.enter_async_context(
        api_client(transport, timeout=http_timeout, busy=busy, keep_alive=max_polls)
    )
    download_http = await stack.enter_async_context(
        download_client(transport, timeout=http_timeout)
    )
    provider = make_provider(
        preset,
        api_http,
        key=key,
        clock=clock,
        base_url=base_url,
        max_reply_bytes=max_reply_bytes,
        max_image_bytes=max_image_bytes,
        request_timeout=http_timeout,
    )
    downloader = Downloader(
        download_http, clock=clock, max_concurrent=max_downloads, max_image_bytes=max_image_bytes
    )
    poll = events.observe_poll(provider.poll)
    scheduler = Scheduler(
        poll,
        clock=clock,
        policy=policy,
        max_concurrent_polls=max_polls,
        task_timeout=task_timeout,
        # The 0.5 s loop's rate: the throughput regime (``_regime``) paces each task to
        # at most that, so the budget only guards against a runaway policy.
        budget=RateBudget(per_task=2.0),
    )
    return provider, downloader, scheduler, poll
