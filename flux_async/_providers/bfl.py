"""BFL's own dialect: ``POST /v1/{model}``, poll the returned ``polling_url``, ``/v1/credits``.

Also serves the DMXAPI relay, which speaks the same dialect under another base URL but
must never send its key to BFL's polling hosts (``key_on_poll=False`` in its preset).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import httpx

from .._core._clock import Clock
from .._core._text import shown_value
from .._request._models import PollReply, Task
from ._base import ApiKey, HTTPProvider, ProviderPreset
from ._http import (
    DEFAULT_MAX_REPLY_BYTES,
    Phase,
    Reply,
    error_for_response,
    fail_malformed,
    send_capped,
    total_time,
)
from ._parse import is_usable_url, load_json, parse_poll, parse_submit

if TYPE_CHECKING:
    from .._request._requests import BaseRequest

__all__ = ["BFLProvider"]

logger = logging.getLogger("flux_async")


def _is_bfl_api_host(host: str) -> bool:
    # api.bfl.ai, api.eu.bfl.ai, api.eu2.bfl.ai, api.us1.bfl.ai ...: the open set of clusters.
    return host == "api.bfl.ai" or (host.startswith("api.") and host.endswith(".bfl.ai"))


class BFLProvider(HTTPProvider):
    """Talk BFL's native API through a credential-free ``httpx.AsyncClient``.

    The key goes into each request's headers (never the client's defaults, which would
    follow every request), only to the submit host and to polling hosts the preset trusts.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        preset: ProviderPreset,
        key: ApiKey,
        clock: Clock,
        base_url: str | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        request_timeout: float | None = None,
    ) -> None:
        super().__init__(
            http,
            preset=preset,
            key=key,
            clock=clock,
            base_url=base_url,
            max_reply_bytes=max_reply_bytes,
        )
        # Writes get the long timeout too: a body may carry up to 8 base64 reference images.
        self._submit_timeout = httpx.Timeout(preset.request_timeout, connect=10.0)
        # The whole of a poll or credits request (not each read alone) gets this long.
        self._total = request_timeout if request_timeout is not None else 30.0

    def _key_headers(self) -> dict[str, str]:
        return {"x-key": self._key.reveal()}

    def may_send_key(self, url: str) -> bool:
        """Return whether the API key may accompany a request to ``url``."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if (parts.scheme, parts.netloc) == self._api_origin:
            return True
        if not self._preset.key_on_poll:
            return False
        return parts.scheme == "https" and _is_bfl_api_host(parts.hostname or "")

    async def _send(
        self,
        method: str,
        url: str,
        *,
        phase: Phase,
        task_id: str | None = None,
        json: dict[str, object] | None = None,
        read_timeout: httpx.Timeout | None = None,
    ) -> Reply:
        headers = self._key_headers() if self.may_send_key(url) else {}
        # A submit may take the preset's request timeout (minutes on a relay); the others
        # the client's. Either bounds the whole exchange, not each read alone.
        total = total_time(self._preset.request_timeout if phase == "submit" else self._total)
        response = await send_capped(
            self._http,
            method,
            url,
            phase=phase,
            total=total,
            max_bytes=self._max_reply_bytes,
            task_id=task_id,
            headers=headers,
            json=json,
            timeout=read_timeout,
        )
        if response.status_code >= 300:
            raise error_for_response(response, phase=phase, task_id=task_id, now=self._clock.time())
        return response

    async def submit(self, request: BaseRequest) -> Task:
        """Submit ``request`` to ``POST {base}/v1/{model}``."""
        url = f"{self.base_url}/v1/{quote(request.model, safe='')}"
        submitted_at = self._clock.monotonic()
        response = await self._send(
            "POST", url, phase="submit", json=request.to_body(), read_timeout=self._submit_timeout
        )
        # The server answered 2xx, so a task may exist even though we cannot read it: any
        # failure here is an AmbiguousSubmitError naming what was unreadable.
        reply = parse_submit(response.content)
        logger.debug("submitted task %s for model %s", reply.id, request.model)
        return Task(
            id=reply.id,
            polling_url=reply.polling_url,
            model=request.model,
            provider=self.name,
            cost=reply.cost,
            prompt=getattr(request, "prompt", None),
            submitted_at=submitted_at,
            output_format=getattr(request, "output_format", None),
            reply=reply.model_dump(exclude_none=True),
        )

    def polling_url(self, task: Task) -> str:
        """Return the URL to poll: the one the server gave, else the documented fallback."""
        url = task.polling_url
        if url and is_usable_url(url):
            return url
        return f"{self.base_url}/v1/get_result?id={quote(task.id, safe='')}"

    async def poll(self, task: Task) -> PollReply:
        """Fetch ``task``'s status from its polling URL."""
        response = await self._send("GET", self.polling_url(task), phase="poll", task_id=task.id)
        return parse_poll(response.content, task_id=task.id)

    async def credits(self) -> float:
        """Return the account's credit balance from ``GET {base}/v1/credits``."""
        response = await self._send("GET", f"{self.base_url}/v1/credits", phase="credits")
        data = load_json(response.content, phase="credits")
        value = data.get("credits") if isinstance(data, dict) else None
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise TypeError(type(value).__name__)
            return float(value)
        except (TypeError, ValueError) as exc:
            fail_malformed(
                "no number of credits",
                phase="credits",
                field="credits",
                raw=shown_value(value),
                cause=exc,
            )
