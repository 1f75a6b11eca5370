"""One download attempt's body and the ways an attempt fails.

The body is read as the network delivers it, decoded within a byte limit, sniffed (its
first bytes must be a PNG, JPEG or WebP) and checked against Content-Length. The
exceptions here are internal: the :class:`~._download.Downloader` turns each into a
retry or a :class:`DownloadError`, and every message names the URL without its signed
query string.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from urllib.parse import urlsplit

import anyio.lowlevel
import httpx

from .._core._bounded import BodyTooLarge, UnsupportedEncoding, decoded
from .._core._text import clean_text
from .._errors import (
    DownloadError,
    FluxError,
    IncompleteDownloadError,
    ResultExpiredError,
    StorageError,
)
from .._providers._http import raw_body
from .._request._data_urls import data_url_header, decoded_chunks, is_data_url, shown_data_url
from .._request._models import redact_url
from .._request._references import sniff_image_type
from ._result_files import FORMAT_EXTENSIONS, MIME_EXTENSIONS

__all__ = [
    "ATTEMPT_ERRORS",
    "NotAnImage",
    "Stalled",
    "StatusError",
    "body_chunks",
    "check_length",
    "data_url_chunks",
    "data_url_verifier",
    "describe",
    "download_error",
    "given_up",
    "is_transient",
    "means_expired",
    "open_data_url",
    "prepend",
    "refreshed_url",
    "retry_after",
    "shown",
    "sniff",
    "storage_error",
]

_log = logging.getLogger("flux_async")

_IDENTITY = frozenset({"", "identity"})
# Azure answers 403 (XML body) once `se` has passed; other stores say 404 or 410.
_EXPIRED_STATUSES = frozenset({403, 404, 410})
_SNIFF_BYTES = 12


class StatusError(Exception):
    """A non-2xx answer from the download host (internal; never escapes)."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class NotAnImage(Exception):
    """A 2xx body that is no PNG, JPEG or WebP: an error page served with 200 (internal)."""


class Stalled(Exception):
    """The attempt did not finish before the URL's deadline (internal; transient)."""


def retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: the jittered backoff will do
    return seconds if seconds >= 0 else None


def content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def describe(exc: BaseException, url: str) -> str:
    """Return a one-line reason for ``exc`` with any signed query string removed."""
    text = exc.message if isinstance(exc, FluxError) else str(exc) or type(exc).__name__
    query = urlsplit(url).query
    # httpx/h11 messages may quote what the server sent: one clean, bounded line.
    return clean_text(text.replace(query, "<redacted>") if query else text, 300)


def shown(url: str) -> str:
    """Return ``url`` as logs and errors may show it: no signed query, no inline image."""
    return shown_data_url(url) if is_data_url(url) else redact_url(url)


def download_error(
    kind: type[DownloadError], reason: str, url: str, task_id: str | None
) -> DownloadError:
    what = "result URL expired" if kind is ResultExpiredError else "download failed"
    return kind(f"{what}: {reason}", task_id=task_id, url=shown(url))


def storage_error(reason: str, exc: BaseException, url: str, task_id: str | None) -> StorageError:
    code = exc.errno if isinstance(exc, OSError) else None
    return StorageError(
        f"could not save the image: {reason}", task_id=task_id, url=shown(url), errno=code
    )


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, StatusError):
        return exc.status == 429 or exc.status >= 500
    if isinstance(exc, httpx.UnsupportedProtocol):
        return False
    return isinstance(exc, httpx.TransportError | IncompleteDownloadError | Stalled)


ATTEMPT_ERRORS = (
    StatusError,
    httpx.HTTPError,
    httpx.InvalidURL,
    IncompleteDownloadError,
    NotAnImage,
    Stalled,
)


def means_expired(exc: BaseException) -> bool:
    """Return whether a failed attempt says the URL is no good (so a re-poll may help)."""
    # An error page served with 200 means what a 403 means.
    return isinstance(exc, NotAnImage) or (
        isinstance(exc, StatusError) and exc.status in _EXPIRED_STATUSES
    )


def given_up(
    exc: BaseException, attempts: int, reason: str, url: str, task_id: str | None
) -> DownloadError:
    """Return the error a download ends with after ``attempts`` attempts, the last ``exc``."""
    kind = IncompleteDownloadError if isinstance(exc, IncompleteDownloadError) else DownloadError
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    return download_error(kind, f"gave up after {tries}: {reason}", url, task_id)


async def refreshed_url(
    refresh: Callable[[], Awaitable[str | None]], url: str, reason: str, task_id: str | None
) -> str:
    """Re-poll once for a fresh URL after ``url`` expired."""
    _log.debug("download %s expired (%s); re-polling once", redact_url(url), reason)
    try:
        fresh = await refresh()
    except FluxError as exc:
        raise download_error(
            ResultExpiredError, f"{reason}; re-poll failed: {exc}", url, task_id
        ) from exc
    if not fresh:
        raise download_error(ResultExpiredError, f"{reason}; re-poll gave no URL", url, task_id)
    return fresh


async def body_chunks(
    response: httpx.Response, limit: int, url: str, task_id: str | None
) -> AsyncGenerator[bytes, None]:
    """Yield the decoded body, at most ``limit`` bytes; a short read is an incomplete download.

    The body is decoded here, with a bounded output per step, not by httpx: a gzip bomb
    stops at ``limit`` decoded bytes instead of inflating a network chunk at once. The
    raw bytes come as the network delivers them (at most 64 KiB a read): re-cutting
    them to a fixed size would copy every byte once more for nothing.
    """
    received = 0
    raw, encoding = raw_body(response)
    try:
        async for chunk in decoded(raw, encoding, limit):
            received += len(chunk)
            yield chunk
    except httpx.RemoteProtocolError as exc:
        # The peer closed mid-body (h11 checks Content-Length): a short read.
        expected = content_length(response)
        reason = f"connection closed after {received} of {expected or '?'} bytes"
        raise IncompleteDownloadError(reason, task_id=task_id, url=redact_url(url)) from exc
    except BodyTooLarge as exc:
        raise download_error(DownloadError, f"the image is {exc}", url, task_id) from exc
    except (UnsupportedEncoding, zlib.error) as exc:
        raise download_error(
            DownloadError, f"the body cannot be decoded: {exc}", url, task_id
        ) from exc


async def sniff(
    chunks: AsyncGenerator[bytes, None], output_format: str | None, url: str
) -> tuple[bytes, str]:
    """Return the body's first bytes and its image type; raise NotAnImage if it is none."""
    head = b""
    async for chunk in chunks:
        head += chunk
        if len(head) >= _SNIFF_BYTES:
            break
    if not head:
        # Empty: most likely cut short, and a retry may well bring the real image.
        raise IncompleteDownloadError("got 0 bytes", url=redact_url(url))
    mime = sniff_image_type(head)
    if mime is None:
        await chunks.aclose()
        raise NotAnImage(f"the body is not a PNG, JPEG or WebP image ({len(head)}+ bytes)")
    wanted = FORMAT_EXTENSIONS.get((output_format or "").lower())
    if wanted is not None and wanted != MIME_EXTENSIONS[mime]:
        _log.warning(
            "%s holds %s, not the requested %s; saved as what it is",
            redact_url(url),
            mime,
            output_format,
        )
    return head, mime


async def prepend(head: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """Yield ``head``, then every chunk of ``rest``."""
    try:
        if head:
            yield head
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


def check_length(response: httpx.Response, size: int, url: str, task_id: str | None) -> None:
    """Raise IncompleteDownloadError unless the body matched Content-Length (and is not empty)."""
    expected = content_length(response)
    # Content-Length counts the bytes on the wire, before any decoding. An empty body is
    # no image either, and a retry may well bring the real one.
    encoding = response.headers.get("content-encoding", "").strip().lower()
    got = response.num_bytes_downloaded if encoding not in _IDENTITY else size
    if (expected is not None and got != expected) or size == 0:
        reason = f"got {got} of {expected if expected is not None else '?'} bytes"
        raise IncompleteDownloadError(reason, task_id=task_id, url=redact_url(url))


async def data_url_chunks(
    url: str, start: int, chunk_size: int, task_id: str | None
) -> AsyncGenerator[bytes, None]:
    """Yield the image in the data: URL ``url``, decoded a chunk at a time."""
    chunks = decoded_chunks(url, start, chunk_size)
    while True:
        try:
            chunk = next(chunks, None)
        except ValueError as exc:  # binascii.Error
            raise download_error(
                DownloadError, "the image's base64 is corrupt", url, task_id
            ) from exc
        if chunk is None:
            return
        yield chunk
        # Decoding is CPU work: let other tasks run between chunks of a large image.
        await anyio.lowlevel.checkpoint()


async def open_data_url(
    url: str, chunk_size: int, output_format: str | None, task_id: str | None
) -> tuple[AsyncGenerator[bytes, None], tuple[bytes, str], str | None]:
    """Return a ``data:...;base64,`` URL's decoded chunks, its sniffed head and media type.

    A malformed header or a body that is no image is a :class:`DownloadError`.
    """
    try:
        content_type, start = data_url_header(url)
    except ValueError as exc:
        raise download_error(DownloadError, str(exc), url, task_id) from exc
    chunks = data_url_chunks(url, start, chunk_size, task_id)
    try:
        sniffed = await sniff(chunks, output_format, url)
    except NotAnImage as exc:
        raise download_error(
            DownloadError, f"the data: URL holds no image: {exc}", url, task_id
        ) from exc
    return chunks, sniffed, content_type


def data_url_verifier(url: str, task_id: str | None) -> Callable[[int], None]:
    """Return the check a decoded data: URL's size must pass: it is not empty."""

    def verify(size: int) -> None:
        if size == 0:  # pragma: no cover - the sniffed head is never empty
            raise download_error(DownloadError, "the data: URL holds no image", url, task_id)

    return verify
