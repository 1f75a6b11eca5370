"""Turning httpx outcomes into flux_async errors: one place for every provider.

The submit path matters most, because money is at stake: an error either proves the
server created nothing (retry is safe) or leaves it unknown (``AmbiguousSubmitError``).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx

from .._backoff import SubmitVerdict, judge_submit_status, parse_retry_after
from .._errors import (
    AmbiguousSubmitError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    FluxError,
    InsufficientCreditsError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)

__all__ = [
    "USER_AGENT",
    "Phase",
    "api_client",
    "download_client",
    "error_body",
    "error_for_response",
    "error_for_transport",
    "summarize_detail",
]

Phase = Literal["submit", "poll", "credits"]

USER_AGENT = "flux-async/0.1"


def api_client(
    transport: httpx.AsyncBaseTransport | None, *, timeout: float, busy: int, keep_alive: int = 16
) -> httpx.AsyncClient:
    """Return the client for API hosts: no default credential, redirects never followed.

    The key goes on each request, never on the client: a client-level header follows every
    request, to any host. ``busy`` is how many requests can be on the wire at once (submits
    plus polls): callers queue at the limiter, not in the pool. ``keep_alive`` connections
    stay open between requests (the steady traffic: polls), sparing a TLS handshake each;
    no more, since httpcore's pool checks every connection it holds on every request
    (with 40 that was the largest CPU cost of a poll).
    """
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
        limits=httpx.Limits(
            max_connections=busy + 32, max_keepalive_connections=min(busy, keep_alive)
        ),
    )


def download_client(
    transport: httpx.AsyncBaseTransport | None, *, timeout: float
) -> httpx.AsyncClient:
    """Return the client for result URLs: it carries no credential at all.

    Result URLs live on delivery hosts that must never see the key, and httpx keeps custom
    headers across cross-host redirects; with nothing to leak, redirects are safe to follow.
    """
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=True,
        timeout=httpx.Timeout(timeout, read=120.0),
        headers={"user-agent": USER_AGENT},
    )


_MAX_TEXT = 2000


def error_body(response: httpx.Response) -> Any:
    """Return the response body as JSON when it is JSON, else as (truncated) text."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return response.text[:_MAX_TEXT]


def summarize_detail(body: Any) -> str:
    """Return a one-line message from BFL's ``detail`` or OpenAI's ``error`` shapes."""
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                    parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        if isinstance(detail, str):
            return detail
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error.get("code") or error)
        if isinstance(error, str):
            return error
        message = body.get("message")
        if isinstance(message, str):
            return message
    if isinstance(body, str) and body.strip():
        return body.strip().splitlines()[0][:200]
    return "no detail"


def error_for_response(
    response: httpx.Response,
    *,
    phase: Phase,
    task_id: str | None = None,
    now: float,
) -> FluxError:
    """Map an error status to the exception a caller acts on."""
    status = response.status_code
    body = error_body(response)
    detail = summarize_detail(body)
    request_id = response.headers.get("x-request-id")
    kw: dict[str, Any] = {
        "status_code": status,
        "body": body,
        "task_id": task_id,
        "request_id": request_id,
    }
    if phase == "submit" and judge_submit_status(status) is SubmitVerdict.AMBIGUOUS:
        return AmbiguousSubmitError(
            f"submit failed with HTTP {status} ({detail})", status_code=status, body=body
        )
    if status in (400, 422):
        return BadRequestError(f"the server refused the request: {detail}", **kw)
    if status in (401, 403):
        return AuthenticationError(f"the API key was refused: {detail}", **kw)
    if status == 402:
        return InsufficientCreditsError(f"out of credits: {detail}", **kw)
    if status == 429:
        retry_after = parse_retry_after(dict(response.headers), now=now)
        return RateLimitError(f"too many active tasks: {detail}", retry_after=retry_after, **kw)
    if status >= 500:
        return ServerError(f"server error: {detail}", **kw)
    return APIError(f"unexpected answer: {detail}", **kw)


def error_for_transport(
    exc: httpx.TransportError, *, phase: Phase, task_id: str | None = None
) -> FluxError:
    """Map an httpx transport failure; on submit, anything after connecting is ambiguous."""
    name = type(exc).__name__
    # A connection that never opened (or never got a pooled connection) carried nothing.
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ConnectError(f"could not connect ({name})", task_id=task_id)
    if isinstance(exc, httpx.PoolTimeout):
        return RequestTimeoutError("no free connection in the pool (PoolTimeout)", task_id=task_id)
    if phase == "submit":
        return AmbiguousSubmitError(f"submit interrupted after sending ({name})", task_id=task_id)
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeoutError(f"request timed out ({name})", task_id=task_id)
    return TransportError(f"request failed ({name})", task_id=task_id)
