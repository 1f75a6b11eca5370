"""The OpenAI-style image endpoint of the relays: ``POST {host}/v1/images/generations``.

APIYI (``apiyi``) and DMXAPI (``dmxapi-openai``) answer synchronously: the call returns
when the image exists, with ``data[0].url`` (a delivery URL valid for 10 minutes) or
``data[0].b64_json`` (the image itself). The task this provider returns therefore carries
the finished reply in ``Task.immediate`` and the scheduler resolves it without polling;
the image is saved by the downloader (a URL) or decoded straight to disk (a ``data:``
URL), never held twice.

Each endpoint takes only the fields it documents (``specs/PROTOCOL.md`` §3): a request
field the endpoint does not document raises ValidationError before anything is sent,
rather than being dropped silently or sent to be refused (and perhaps billed). Sizes are
mapped to what the endpoint takes: ``width``/``height`` become ``size: "WxH"``;
``aspect_ratio`` stays ``aspect_ratio`` (APIYI) or becomes a ratio size such as ``16x9``
(DMXAPI).
"""

from __future__ import annotations

import base64
import logging
import math
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import httpx

from .._core._bounded import DEFAULT_MAX_IMAGE_BYTES
from .._core._clock import Clock
from .._core._text import shown_value
from .._errors import AmbiguousSubmitError, ConfigurationError, ValidationError
from .._request._models import PollReply, Status, Task
from .._request._references import reference_fields, sniff_image_type
from ._base import ApiKey, HTTPProvider, ProviderPreset
from ._http import (
    DEFAULT_MAX_REPLY_BYTES,
    error_for_response,
    send_capped,
    summarize_detail,
    total_time,
)
from ._parse import MAX_ID_CHARS, is_usable_url, load_json, poll_reply

if TYPE_CHECKING:
    from .._request._requests import BaseRequest

__all__ = ["ENDPOINTS", "Endpoint", "OpenAIProvider", "wire_body"]

logger = logging.getLogger("flux_async")

PATH = "/v1/images/generations"
_IMAGES = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))
_MIME_BY_FORMAT = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What one relay's ``/v1/images/generations`` documents.

    ``fields`` are the request fields sent as they are (``model`` and ``prompt`` always
    go). ``size_style`` says how the output size travels: ``"pixels"`` (``width`` and
    ``height`` become ``size: "WxH"``; one alone is sent as itself, within
    ``side_range``) or ``"ratio"`` (``aspect_ratio`` "W:H" becomes ``size: "WxH"`` from
    ``ratios``, any other ratio becomes pixels of about ``ratio_pixels``).
    """

    fields: frozenset[str]
    size_style: str
    output_formats: frozenset[str] = frozenset({"jpeg", "png"})
    side_range: tuple[int, int, int] = (64, 2048, 16)  # low, high, multiple
    ratios: frozenset[str] = frozenset()
    ratio_pixels: int = 1024 * 1024


ENDPOINTS: dict[str, Endpoint] = {
    "apiyi": Endpoint(
        fields=frozenset(
            {
                "seed",
                "safety_tolerance",
                "output_format",
                "prompt_upsampling",
                "steps",
                "guidance",
                "aspect_ratio",
                *_IMAGES,
            }
        ),
        size_style="pixels",
    ),
    # DMXAPI documents model, prompt, size, n and seed only: no reference images.
    "dmxapi-openai": Endpoint(
        fields=frozenset({"seed"}),
        size_style="ratio",
        ratios=frozenset({"1x1", "2x3", "3x2", "3x4", "4x3", "9x16", "16x9"}),
    ),
}
"""The documented shape of each OpenAI-style preset's endpoint (others use ``apiyi``'s)."""


def wire_body(request: BaseRequest, endpoint: Endpoint, *, provider: str) -> dict[str, Any]:
    """Return the JSON body ``endpoint`` takes for ``request``; ValidationError if it cannot."""
    fields = request.to_body()
    body: dict[str, Any] = {"model": request.model}
    if "prompt" in fields:
        body["prompt"] = fields.pop("prompt")
    width, height = fields.pop("width", None), fields.pop("height", None)
    ratio = fields.pop("aspect_ratio", None) if endpoint.size_style == "ratio" else None
    refused = sorted(name for name in fields if name not in endpoint.fields)
    if refused:
        documented = ", ".join(sorted({"model", "prompt", "size", *endpoint.fields}))
        rule = f"not sent by provider {provider!r}: its endpoint documents only {documented}"
        raise ValidationError(refused[0], rule, model=request.model)
    fmt = fields.get("output_format")
    if fmt is not None and fmt not in endpoint.output_formats:
        allowed = " or ".join(sorted(endpoint.output_formats))
        raise ValidationError(
            "output_format", f"provider {provider!r} serves {allowed}", model=request.model
        )
    body.update(_size(width, height, ratio, endpoint, request.model))
    for name in reference_fields(request.model):
        value = fields.get(name)
        if isinstance(value, str):
            fields[name] = _as_data_url(value, name, request.model)
    body.update(fields)
    return body


def _size(
    width: int | None, height: int | None, ratio: str | None, endpoint: Endpoint, model: str
) -> dict[str, Any]:
    if ratio is not None:
        left, right = (int(part) for part in ratio.split(":"))
        named = f"{left}x{right}"
        if named in endpoint.ratios:
            return {"size": named}
        # Not in the documented list: the endpoint also takes pixels.
        exact = Fraction(left, right)
        side = math.sqrt(endpoint.ratio_pixels * exact)
        return {"size": f"{_round16(side)}x{_round16(side / exact)}"}
    if width is not None and height is not None:
        return {"size": f"{width}x{height}"}
    low, high, multiple = endpoint.side_range
    single = {"width": width} if width is not None else {}
    if height is not None:
        single["height"] = height
    for name, value in single.items():
        if not low <= value <= high or value % multiple:
            rule = f"must be a multiple of {multiple} from {low} to {high} when sent alone"
            raise ValidationError(name, rule, model=model)
    return single


def _round16(value: float) -> int:
    return max(64, round(value / 16) * 16)


def _as_data_url(value: str, field: str, model: str) -> str:
    """Return a reference image as the relays take it: an http(s) URL or a data: URL."""
    if value[:8].lower().startswith(("http://", "https://", "data:")):
        return value
    # Raw base64, as BFL's own dialect takes it: wrap it, after checking what it holds.
    try:
        mime = sniff_image_type(base64.b64decode(value[:64]))
    except ValueError:
        mime = None
    if mime is None:
        rule = "must be an http(s) URL, a data:image URL or base64 of a PNG, JPEG or WebP image"
        raise ValidationError(field, rule, model=model)
    return f"data:{mime};base64,{value}"


class OpenAIProvider(HTTPProvider):
    """Talk to an OpenAI-style relay through a credential-free ``httpx.AsyncClient``.

    The Bearer token goes in each request's headers, only to the relay's own host, never
    across a redirect (redirects are not followed). A submit holds its connection until
    the image exists: its read timeout is the preset's ``request_timeout`` (minutes), and
    a timeout or a broken connection after sending is an AmbiguousSubmitError, since the
    relay may have generated and billed the image.
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
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        super().__init__(
            http,
            preset=preset,
            key=key,
            clock=clock,
            base_url=base_url,
            # The reply may carry the image itself as base64: 4/3 of the largest image,
            # plus room for the JSON around it.
            max_reply_bytes=max(max_reply_bytes, max_image_bytes * 4 // 3 + 64 * 1024),
        )
        self._endpoint = ENDPOINTS.get(preset.name, ENDPOINTS["apiyi"])
        # Uploads with reference images can be large: writing gets the same minutes.
        self._timeout = httpx.Timeout(preset.request_timeout, connect=10.0)

    def _check_model(self, model: str) -> None:
        served = self._preset.models
        if served is not None and model not in served:
            listed = ", ".join(sorted(served))
            rule = f"is not served by provider {self.name!r} (it serves: {listed})"
            raise ValidationError("model", rule, model=model)

    async def submit(self, request: BaseRequest) -> Task:
        """Generate one image with ``POST {base}/v1/images/generations``; return it as a task."""
        self._check_model(request.model)
        body = wire_body(request, self._endpoint, provider=self.name)
        submitted_at = self._clock.monotonic()
        response = await send_capped(
            self._http,
            "POST",
            f"{self.base_url}{PATH}",
            phase="submit",
            total=total_time(self._preset.request_timeout),
            max_bytes=self._max_reply_bytes,
            json=body,
            headers={"authorization": f"Bearer {self._key.reveal()}"},
            timeout=self._timeout,
        )
        del body  # the reference images in it are no longer needed
        if response.status_code >= 300:
            raise error_for_response(response, phase="submit", now=self._clock.time())
        task_id = _request_id(response.headers.get("x-request-id"), self.name)
        status = response.status_code
        payload = load_json(response.content, phase="submit", task_id=task_id)
        # The raw body may hold a multi-megabyte image: let it go before decoding more.
        del response
        sample, item = _sample(payload, request)
        if sample is None:
            detail = summarize_detail(payload)
            raise AmbiguousSubmitError(
                f"the relay answered without an image ({detail})", status_code=status
            )
        created = payload.get("created")
        del payload
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            created = None
        now = self._clock.time()
        # The URL lives about 10 minutes from the end of generation, which was before now.
        end_time = min(float(created), now) if created is not None else now
        seed = item.get("seed")
        result = {
            "sample": sample,
            "seed": getattr(request, "seed", None) if seed is None else seed,
            "prompt": item.get("revised_prompt"),
            "end_time": end_time,
        }
        # Checked as a poll reply would be: a wrong seed or a non-string revised prompt is
        # a MalformedReplyError naming it (the image may be billed: may_be_billed).
        ready = poll_reply(
            {"id": task_id, "status": Status.READY, "result": result},
            task_id=task_id,
            phase="submit",
        )
        logger.debug("relay %s generated task %s for model %s", self.name, task_id, request.model)
        return Task(
            id=task_id,
            polling_url=None,
            model=request.model,
            provider=self.name,
            prompt=getattr(request, "prompt", None),
            submitted_at=submitted_at,
            output_format=getattr(request, "output_format", None),
            immediate=ready,
            reply={"created": created} if created is not None else {},
        )

    async def poll(self, task: Task) -> PollReply:
        """Return the reply the submit already carried; these relays have nothing to poll.

        A task without one (recorded by an earlier run) cannot be fetched again: it is
        reported as not found, and the scheduler fails it after its grace period.
        """
        if task.immediate is not None:
            return task.immediate
        return PollReply(id=task.id, status=Status.NOT_FOUND)

    async def credits(self) -> float:
        """Raise ConfigurationError: these relays have no credit-balance endpoint."""
        raise ConfigurationError(
            f"provider {self.name!r} has no credit-balance endpoint; see the relay's console"
        )


def _request_id(header: str | None, provider: str) -> str:
    """Return the relay's ``x-request-id`` as the task id when usable, else a fresh one."""
    if header and len(header) <= MAX_ID_CHARS and header.isprintable() and header.strip():
        return header
    if header:
        logger.warning("relay %s sent an unusable x-request-id %s", provider, shown_value(header))
    return f"{provider}-{uuid.uuid4().hex}"


def _sample(payload: Any, request: BaseRequest) -> tuple[str | None, dict[str, Any]]:
    """Return the image of ``data[0]`` as a URL (a delivery URL or a data: URL) and the item."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None, {}
    item: dict[str, Any] = data[0]
    url = item.get("url")
    if isinstance(url, str) and is_usable_url(url):
        return url, item
    b64 = item.pop("b64_json", None)
    if isinstance(b64, str) and b64:
        try:
            mime = sniff_image_type(base64.b64decode(b64[:64]))
        except ValueError:
            mime = None
        fallback = _MIME_BY_FORMAT.get(getattr(request, "output_format", None) or "", "image/png")
        return f"data:{mime or fallback};base64,{b64}", item
    return None, item
