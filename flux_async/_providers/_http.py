"""Turning httpx outcomes into flux_async errors: one place for every provider.

The submit path matters most, because money is at stake: an error either proves the
server created nothing (retry is safe) or leaves it unknown (``AmbiguousSubmitError``).
"""

from __future__ import annotations

import functools
import json
import ssl
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import anyio
import httpx

from .._core._backoff import SubmitVerdict, judge_submit_status, parse_retry_after
from .._core._bounded import ACCEPT_ENCODING, BodyTooLarge, UnsupportedEncoding, decoded
from .._core._log_redaction import install as install_log_redaction
from .._core._text import clean_text
from .._errors import (
    AmbiguousSubmitError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    FluxError,
    InsufficientCreditsError,
    MalformedReplyError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from ._transport import fast_transport

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "USER_AGENT",
    "Phase",
    "Reply",
    "api_client",
    "download_client",
    "error_body",
    "error_for_response",
    "error_for_transport",
    "fail_malformed",
    "raw_body",
    "send_capped",
    "summarize_detail",
    "total_time",
]

# httpx logs each request's URL at INFO: never with a signed query string (see the module).
install_log_redaction()

DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024
"""The default cap on a JSON reply's decoded size: a poll reply is a few hundred bytes."""

Phase = Literal["submit", "poll", "credits"]

USER_AGENT = "flux-async/0.1"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Return the process's one default TLS context (certifi's CAs, ``SSL_*`` honoured).

    Building one loads the whole CA bundle (tens of milliseconds of CPU); httpx would
    build one per client, and every AsyncFlux holds two. A context is safe to share.
    """
    return httpx.create_ssl_context()


def api_client(
    transport: httpx.AsyncBaseTransport | None, *, timeout: float, busy: int, keep_alive: int = 16
) -> httpx.AsyncClient:
    """Return the client for API hosts: no default credential, redirects never followed.

    The key goes on each request, never on the client: a client-level header follows every
    request, to any host. ``busy`` is how many requests can be on the wire at once (submits
    plus polls): callers queue at the limiter, not in the pool. ``keep_alive`` connections
    stay open between requests (the steady traffic: polls), sparing a TLS handshake each;
    no more, since httpcore's pool checks every connection it holds on every request
    (with 40 that was the largest CPU cost of a poll; ``_transport`` makes each check
    cheap).
    """
    limits = httpx.Limits(
        max_connections=busy + 32, max_keepalive_connections=min(busy, keep_alive)
    )
    return httpx.AsyncClient(
        transport=transport if transport is not None else fast_transport(_tls_context(), limits),
        timeout=timeout,
        follow_redirects=False,
        verify=_tls_context() if transport is None else True,
        headers={"user-agent": USER_AGENT, "accept-encoding": ACCEPT_ENCODING},
        limits=limits,
    )


# httpx's default pool limits.
_DOWNLOAD_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def download_client(
    transport: httpx.AsyncBaseTransport | None, *, timeout: float
) -> httpx.AsyncClient:
    """Return the client for result URLs: it carries no credential at all.

    Result URLs live on delivery hosts that must never see the key, and httpx keeps custom
    headers across cross-host redirects. The downloader follows redirects itself, one
    checked hop at a time (``_redirects``): no scheme but http(s), no https-to-http, no
    private address unless the result URL had one.
    """
    if transport is None:
        transport = fast_transport(_tls_context(), _DOWNLOAD_LIMITS)
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        verify=_tls_context(),
        limits=_DOWNLOAD_LIMITS,
        timeout=httpx.Timeout(timeout, read=120.0),
        headers={"user-agent": USER_AGENT, "accept-encoding": ACCEPT_ENCODING},
    )


_MAX_TEXT = 2000
# A server's error text becomes one line of a message: bounded, no control characters.
_MAX_DETAIL = 300


def error_body(response: Reply) -> Any:
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
            return clean_text("; ".join(parts), _MAX_DETAIL)
        if isinstance(detail, str):
            return clean_text(detail, _MAX_DETAIL)
        error = body.get("error")
        if isinstance(error, dict):
            return clean_text(error.get("message") or error.get("code") or error, _MAX_DETAIL)
        if isinstance(error, str):
            return clean_text(error, _MAX_DETAIL)
        message = body.get("message")
        if isinstance(message, str):
            return clean_text(message, _MAX_DETAIL)
    if isinstance(body, str) and body.strip():
        return clean_text(body.strip().splitlines()[0], _MAX_DETAIL)
    return "no detail"


def error_for_response(
    response: Reply,
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


async def _already_read(content: bytes) -> AsyncIterator[bytes]:
    yield content


def raw_body(
    response: httpx.Response, chunk_size: int | None = None
) -> tuple[AsyncIterator[bytes], str]:
    """Return the body's raw bytes as they stream and the encoding to decode them with.

    A response whose body was already read (a mock transport's, built from content) hands
    over its decoded content, whose encoding is then identity.
    """
    if response.is_stream_consumed:
        return _already_read(response.content), "identity"
    return response.aiter_raw(chunk_size), response.headers.get("content-encoding", "")


def total_time(timeout: float) -> float:
    """Return the seconds a whole request may take when each phase may take ``timeout``.

    One timeout plus room for a connect (at least 1 s, at most 10 s more): httpx's own
    per-read timeout fires first against a silent server, this one against a dripping one.
    """
    return timeout + min(max(timeout, 1.0), 10.0)


def fail_malformed(
    message: str,
    *,
    phase: Phase | Literal["webhook"],
    field: str | None = None,
    raw: str = "",
    task_id: str | None = None,
    cause: BaseException | None = None,
) -> NoReturn:
    """Raise the error for a 2xx reply that breaks the protocol (caused by ``cause``).

    On submit the server answered, so a task may exist and be billed: that is an
    :class:`AmbiguousSubmitError` (never replayed on its own) caused by the
    :class:`MalformedReplyError` that names the raw value.
    """
    error = MalformedReplyError(
        message,
        phase=phase,
        field=field,
        raw=raw,
        task_id=task_id,
        may_be_billed=phase == "submit",
    )
    if phase != "submit":
        raise error from cause
    error.__cause__ = cause
    raise AmbiguousSubmitError(str(error), task_id=task_id) from error


async def send_capped(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    phase: Phase,
    total: float,
    max_bytes: int,
    task_id: str | None = None,
    headers: dict[str, str] | None = None,
    json: dict[str, Any] | None = None,
    timeout: httpx.Timeout | None = None,  # noqa: ASYNC109 - httpx's per-phase timeouts
) -> Reply:
    """Send one API request and return its answer with the body read, within bounds.

    ``total`` real seconds (see :func:`total_time`) bound the whole exchange (connect, send,
    every byte of the answer), not each read alone: a server dripping a byte at a time
    cannot hold a poll past it.
    The body is decoded while it streams and refused past ``max_bytes`` decoded bytes,
    so a 100 MB reply or a gzip bomb never sits in memory. Transport failures map as
    :func:`error_for_transport` does; the bounds' failures are a RequestTimeoutError (on
    submit: AmbiguousSubmitError) and a MalformedReplyError.
    """
    pieces: list[bytes] = []
    response: httpx.Response | None = None

    async def exchange() -> None:
        nonlocal response
        async with http.stream(
            method,
            url,
            headers=headers,
            json=json,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        ) as response:
            raw, encoding = raw_body(response)
            async for piece in decoded(raw, encoding, max_bytes):
                pieces.append(piece)

    try:
        # Real seconds, like httpx's own per-read timeouts that this one bounds the sum of.
        with anyio.fail_after(total):
            await exchange()
    except httpx.TransportError as exc:
        raise error_for_transport(exc, phase=phase, task_id=task_id) from exc
    except httpx.InvalidURL as exc:
        fail_malformed(
            "the URL cannot be requested",
            phase=phase,
            field="url",
            raw=clean_text(url, 120),
            cause=exc,
        )
    except TimeoutError as exc:
        if phase == "submit":
            raise AmbiguousSubmitError(
                f"submit got no whole answer within {total:.0f} s", task_id=task_id
            ) from exc
        raise RequestTimeoutError(f"no whole answer within {total:.0f} s", task_id=task_id) from exc
    except BodyTooLarge as exc:
        fail_malformed(
            f"the body is {exc}",
            phase=phase,
            task_id=task_id,
            raw=f"> {max_bytes} bytes",
            cause=exc,
        )
    except (UnsupportedEncoding, zlib.error) as exc:
        fail_malformed(
            "the body cannot be decoded",
            phase=phase,
            task_id=task_id,
            raw=clean_text(exc),
            cause=exc,
        )
    if response is None:  # pragma: no cover - exchange() ran to its end
        raise RuntimeError("no response")
    return Reply(response.status_code, response.headers, b"".join(pieces))


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished API answer: status, headers and the decoded body, read within bounds."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)
