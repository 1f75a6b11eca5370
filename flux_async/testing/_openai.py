"""The OpenAI-style relay endpoint: ``POST /v1/images/generations``, answered synchronously.

As APIYI and DMXAPI serve it (``specs/PROTOCOL.md`` §3): ``Authorization: Bearer <key>``;
the body names the model and prompt, and the size as ``size`` (pixels "WxH" or a ratio
such as "16x9") or ``width``/``height``; the call returns once the image exists (the
handler sleeps the task's drawn duration on the simulator's clock, holding the key's
active slot meanwhile) with ``data[0].url``, a signed delivery URL, or ``data[0].b64_json``,
the image itself: the request's ``response_format`` decides, else
``SimulatorConfig.openai_response`` (``flux-async simulate --response-format``). A field
the relays do not document is refused, so a client that sends one is caught.

Errors come in OpenAI's shape, ``{"error": {"message", "type", "code"}}``: 401 for a
missing or wrong Bearer token, 400 for a bad request (BFL's 422 becomes 400), 402 out of
credits, 429 too many active tasks, 500 when the generation failed. With
``SimulatorConfig.openai_redirect`` set the endpoint answers 307 to that base instead, so
a test can prove a Bearer token never follows a redirect.

Tasks are made by the BFL app's own code (validation, credits, active limits), so both
dialects share one account.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

from .._request._models import Status
from ._account import SimAccount
from ._asgi import Request, Response
from ._images import render

__all__ = ["PATH", "RATIOS", "generate"]

PATH = "/v1/images/generations"

#: DMXAPI's ratio sizes and the aspect ratio each names.
RATIOS = {
    "1x1": (1, 1),
    "2x3": (2, 3),
    "3x2": (3, 2),
    "3x4": (3, 4),
    "4x3": (4, 3),
    "9x16": (9, 16),
    "16x9": (16, 9),
}

_IMAGES = ("input_image", *(f"input_image_{n}" for n in range(2, 9)))
# APIYI's documented fields (DMXAPI's are a subset), plus OpenAI's response_format.
_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "size",
        "width",
        "height",
        "seed",
        "safety_tolerance",
        "output_format",
        "prompt_upsampling",
        "steps",
        "guidance",
        "n",
        "aspect_ratio",
        "response_format",
        *_IMAGES,
    }
)
#: Records a submit: the request, its JSON body (None: unreadable), the task id, the status.
RecordSubmit = Callable[[Request, Any, "str | None", int], None]
_SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
_FOUR_MP = 4 * 1024 * 1024


def _error(status: int, message: str, kind: str, code: str) -> Response:
    return Response.json(status, {"error": {"message": message, "type": kind, "code": code}})


def _bad(message: str, code: str = "invalid_value") -> Response:
    return _error(400, message, "invalid_request_error", code)


async def generate(
    account: SimAccount, record: RecordSubmit, request: Request, raw: bytes
) -> Response:
    """Answer one ``POST /v1/images/generations`` and ``record`` it as a submit."""
    redirect = account.config.openai_redirect
    if redirect:
        location = redirect.rstrip("/") + PATH
        moved = {"error": {"message": "moved", "type": "redirect", "code": "moved"}}
        return Response.json(307, moved, headers=[("location", location)])
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    if body is None:
        response, task_id = _bad("We could not parse the JSON body of your request."), None
    else:
        response, task_id = await _answer(account, request, body)
    record(request, body, task_id, response.status)
    return response


async def _answer(account: SimAccount, request: Request, body: Any) -> tuple[Response, str | None]:
    config = account.config
    token = request.headers.get("authorization", "")
    if not token.lower().startswith("bearer "):
        message = "You didn't provide an API key (Authorization: Bearer <key>)."
        return _error(401, message, "invalid_request_error", "missing_api_key"), None
    if token[7:] != config.api_key:
        return _error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        ), None
    if not isinstance(body, dict):
        return _bad("The request body must be a JSON object."), None
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        message = f"Unrecognized request argument supplied: {unknown[0]}"
        return _bad(message, "unknown_parameter"), None
    model = body.get("model")
    if not isinstance(model, str) or model not in config.models:
        return _bad(f"The model `{model}` does not exist.", "model_not_found"), None
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        # The relays document ``prompt`` as required, as OpenAI's images API does.
        return _bad("prompt is required and must not be blank."), None
    if body.get("n", 1) != 1:
        return _bad("n must be 1 for this model."), None
    reply_format = body.get("response_format") or config.openai_response
    if reply_format not in ("url", "b64_json"):
        message = f"response_format must be 'url' or 'b64_json', got {reply_format!r}."
        return _bad(message, "invalid_value"), None
    for name in _IMAGES:
        value = body.get(name)
        if value is not None and not (
            isinstance(value, str) and value.startswith(("http://", "https://", "data:image/"))
        ):
            return _bad(f"{name} must be a URL or a data:image URL.", "invalid_image"), None
    bfl_body, problem = to_bfl_body(body)
    if problem is not None:
        return _bad(problem), None
    # The Bearer token was checked above; the BFL path checks x-key, so hand it that.
    keyed = dataclasses.replace(request, headers={**request.headers, "x-key": config.api_key})
    created, task_id = account.create(keyed, model, bfl_body)
    if task_id is None:
        return _translate(created), None
    task = account.task(task_id)
    # Synchronous: the answer comes when the image exists.
    await account.clock.sleep(task.duration)
    if task.outcome in (Status.REQUEST_MODERATED, Status.CONTENT_MODERATED):
        message = f"Your request was rejected by the safety system ({task.outcome})."
        return _bad(message, "content_policy_violation"), task_id
    if task.outcome != Status.READY:
        message = f"The image could not be generated ({task.outcome})."
        return _error(500, message, "server_error", "generation_failed"), task_id
    if reply_format == "b64_json":
        image = render(task.output_format, task.width, task.height, task.seed, config.image_bytes)
        item: dict[str, Any] = {"b64_json": base64.b64encode(b"".join(image.chunks())).decode()}
    else:
        item = {"url": account.result(task)["sample"]}
    item["seed"] = task.seed
    reply = {"created": int(account.clock.time()), "data": [item]}
    return Response.json(200, reply, headers=[("x-request-id", task.id)]), task_id


def to_bfl_body(body: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Return the BFL body a relay would forward for ``body``, or a problem to refuse it."""
    skip = {"model", "size", "n", "response_format"}
    out = {key: value for key, value in body.items() if key not in skip}
    if out.get("seed") == -1:  # DMXAPI's "random seed"
        del out["seed"]
    size = body.get("size")
    if size is None:
        return out, None
    if not isinstance(size, str) or _SIZE.fullmatch(size) is None:
        return out, 'size must be "WxH" in pixels or a ratio such as "16x9"'
    if "width" in body or "height" in body:
        return out, "size and width/height are alternatives: send one of them"
    if size in RATIOS:
        left, right = RATIOS[size]
        width = math.sqrt(1024 * 1024 * left / right)
        out["width"] = max(64, round(width / 16) * 16)
        out["height"] = max(64, round(width * right / left / 16) * 16)
        return out, None
    width, height = (int(part) for part in size.split("x"))
    if width < 64 or height < 64 or width % 16 or height % 16 or width * height > _FOUR_MP:
        return out, f"size {size} must have sides that are multiples of 16, from 64x64 to 4 MP"
    out["width"], out["height"] = width, height
    return out, None


def _translate(response: Response) -> Response:
    """Return a BFL-style refusal of the shared task path in OpenAI's error shape."""
    try:
        detail = json.loads(b"".join(response.chunks)).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        parts = [
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
        ]
        message = "; ".join(parts)
    else:
        message = str(detail or "request refused")
    if response.status == 402:
        return _error(402, message, "insufficient_quota", "insufficient_quota")
    if response.status == 429:
        return _error(429, message, "rate_limit_error", "rate_limit_exceeded")
    if response.status in (400, 422):
        return _bad(message)
    return _error(response.status, message, "api_error", "error")
