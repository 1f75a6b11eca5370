"""Streaming result downloads: earliest deadline first, temp file, atomic rename.

A finished image lives behind a signed URL that expires about ten minutes after the task
ended. The :class:`Downloader` fetches it in constant memory (chunks of ``chunk_size``
bytes), writes it to a hidden ``.part`` file in the target folder, checks its length
against Content-Length, flushes it to disk and renames it into place. A reader never
sees a partial file under the final name, and no ``.part`` file survives a failure or a
cancellation.

Download hosts get no credentials: the HTTP client must carry none (the constructor
refuses one that does) and requests are sent with ``auth=None``. URLs are logged and
reported through :func:`redact_url`, never with their signed query string.

A ``data:...;base64,`` URL (the image an OpenAI-style relay returned as ``b64_json``) is
saved the same way, decoded a chunk at a time into the temp file: the decoded image is
never held whole next to its base64 text, and no request is made.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx

from .._core._backoff import compute_backoff
from .._core._bounded import DEFAULT_MAX_IMAGE_BYTES, BodyTooLarge, UnsupportedEncoding, decoded
from .._core._clock import Clock
from .._core._paths import contained
from .._core._text import clean_text
from .._errors import (
    ConfigurationError,
    DownloadError,
    FluxError,
    IncompleteDownloadError,
    ResultExpiredError,
    StorageError,
)
from .._providers._http import raw_body
from .._request._data_urls import data_url_header, decoded_chunks, is_data_url, shown_data_url
from .._request._models import redact_url, url_expiry
from .._request._references import sniff_image_type
from ._atomic_write import DEFAULT_BATCH_BYTES, FolderUnavailable, write_atomically
from ._deadline import within
from ._edf import DeadlineGate
from ._redirects import RedirectRefused, next_hop

__all__ = [
    "Downloader",
    "DownloaderStatistics",
    "SavedFile",
    "extension_for",
    "result_deadline",
]

_log = logging.getLogger("flux_async")

# Headers that would hand an API key to whoever serves the image.
_CREDENTIAL_HEADERS = frozenset({"authorization", "x-key", "x-api-key", "api-key"})
# Azure answers 403 (XML body) once `se` has passed; other stores say 404 or 410.
_EXPIRED_STATUSES = frozenset({403, 404, 410})
_CONTENT_TYPE_EXTENSIONS = {
    "image/jpeg": ".jpeg",
    "image/jpg": ".jpeg",
    "image/pjpeg": ".jpeg",
    "image/png": ".png",
    "image/webp": ".webp",
}
_FORMAT_EXTENSIONS = {"jpeg": ".jpeg", "jpg": ".jpeg", "png": ".png", "webp": ".webp"}
_DEFAULT_EXTENSION = ".jpeg"
_IDENTITY = frozenset({"", "identity"})
_SNIFF_BYTES = 12
# An attempt gets at least this long (seconds) even when the URL's deadline is closer:
# an expired URL answers 403 at once, a live one needs a moment.
_MIN_ATTEMPT = 2.0
_MAX_REDIRECTS = 5
_MIME_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpeg", "image/webp": ".webp"}


@dataclass(frozen=True, slots=True)
class DownloaderStatistics:
    """A snapshot of a :class:`Downloader`'s counters.

    ``bytes_written`` counts every byte written to disk, including attempts that were
    later discarded; ``retries`` counts attempts after a transient failure.
    """

    queued: int
    active: int
    completed: int
    failed: int
    retries: int
    bytes_written: int


@dataclass(frozen=True, slots=True)
class SavedFile:
    """A file that was written completely and renamed into place."""

    path: Path
    size: int
    sha256: str
    content_type: str | None


def result_deadline(
    url: str, *, end_time: float | None, now: float, lifetime: float = 600.0
) -> float:
    """Return when the signed result ``url`` expires, in wall-clock epoch seconds.

    The URL's ``se`` query parameter (ISO-8601) wins; without a readable one the URL is
    assumed to live ``lifetime`` seconds after ``end_time`` (the task's end, epoch
    seconds), else ``lifetime`` seconds after ``now``.
    """
    expiry = _parse_expiry(url_expiry(url))
    if expiry is not None:
        return expiry
    if end_time is not None:
        return end_time + lifetime
    return now + lifetime


def _parse_expiry(text: str | None) -> float | None:
    if not text:
        return None
    # parse_qs turns an unescaped "+" of "+00:00" into a space.
    text = text.strip().replace(" ", "+")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def extension_for(output_format: str | None, content_type: str | None) -> str:
    """Return the file extension (with its dot) for a downloaded image.

    A known image Content-Type wins, since it says what the bytes are; otherwise the
    requested ``output_format``; otherwise ``.jpeg``, the API's default format.
    """
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in _CONTENT_TYPE_EXTENSIONS:
            return _CONTENT_TYPE_EXTENSIONS[mime]
    if output_format:
        fmt = output_format.strip().lower().lstrip(".")
        if fmt in _FORMAT_EXTENSIONS:
            return _FORMAT_EXTENSIONS[fmt]
    return _DEFAULT_EXTENSION


class _StatusError(Exception):
    """A non-2xx answer from the download host (internal; never escapes)."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class _NotAnImage(Exception):
    """A 2xx body that is no PNG, JPEG or WebP: an error page served with 200 (internal)."""


class _Stalled(Exception):
    """The attempt did not finish before the URL's deadline (internal; transient)."""


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # absent, or an HTTP date: the jittered backoff will do
    return seconds if seconds >= 0 else None


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _describe(exc: BaseException, url: str) -> str:
    """Return a one-line reason for ``exc`` with any signed query string removed."""
    text = exc.message if isinstance(exc, FluxError) else str(exc) or type(exc).__name__
    query = urlsplit(url).query
    # httpx/h11 messages may quote what the server sent: one clean, bounded line.
    return clean_text(text.replace(query, "<redacted>") if query else text, 300)


def _shown(url: str) -> str:
    """Return ``url`` as logs and errors may show it: no signed query, no inline image."""
    return shown_data_url(url) if is_data_url(url) else redact_url(url)


def _error(kind: type[DownloadError], reason: str, url: str, task_id: str | None) -> DownloadError:
    what = "result URL expired" if kind is ResultExpiredError else "download failed"
    return kind(f"{what}: {reason}", task_id=task_id, url=_shown(url))


def _storage_error(reason: str, exc: BaseException, url: str, task_id: str | None) -> StorageError:
    code = exc.errno if isinstance(exc, OSError) else None
    return StorageError(
        f"could not save the image: {reason}", task_id=task_id, url=_shown(url), errno=code
    )


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _StatusError):
        return exc.status == 429 or exc.status >= 500
    if isinstance(exc, httpx.UnsupportedProtocol):
        return False
    return isinstance(exc, httpx.TransportError | IncompleteDownloadError | _Stalled)


_ATTEMPT_ERRORS = (
    _StatusError,
    httpx.HTTPError,
    httpx.InvalidURL,
    IncompleteDownloadError,
    _NotAnImage,
    _Stalled,
)


class Downloader:
    """Stream result images to disk, earliest deadline first.

    ``http`` must be a client without credentials (no ``x-key``/``Authorization``
    default header, no ``auth``): it follows redirects to hosts nobody vetted. Its
    timeouts apply, and its owner closes it. ``clock`` paces the retries; deadlines are
    its wall-clock ``time()``. At most ``max_concurrent`` downloads stream at once, each
    holding at most ``chunk_size`` bytes (plus one network read) before they go to disk.
    An image larger than ``max_image_bytes`` decoded bytes is refused while it streams.
    Redirects are followed here, one hop at a time (at most five), only as
    :func:`._redirects.next_hop` allows.
    Settings out of range, or a client with credentials, raise
    :class:`ConfigurationError` (a ``ValueError``).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        clock: Clock,
        max_concurrent: int = 8,
        chunk_size: int = DEFAULT_BATCH_BYTES,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        carried = sorted(name for name in _CREDENTIAL_HEADERS if name in http.headers)
        if carried or http.auth is not None:
            what = ", ".join(carried) if carried else "auth"
            raise ConfigurationError(
                f"the download client must carry no credentials (found {what})"
            )
        if max_concurrent < 1:
            raise ConfigurationError("max_concurrent must be >= 1")
        if chunk_size < 1:
            raise ConfigurationError("chunk_size must be >= 1")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be >= 1")
        if backoff_base < 0 or backoff_cap < 0:
            raise ConfigurationError("backoff_base and backoff_cap must be >= 0 seconds")
        if max_image_bytes < 1:
            raise ConfigurationError("max_image_bytes must be >= 1")
        self._max_image_bytes = max_image_bytes
        self._http = http
        self._clock = clock
        self._gate = DeadlineGate(max_concurrent)
        self._chunk_size = chunk_size
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._completed = 0
        self._failed = 0
        self._retries = 0
        self._bytes_written = 0

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        deadline: float,
        task_id: str | None = None,
        refresh: Callable[[], Awaitable[str | None]] | None = None,
        output_format: str | None = None,
        overwrite: bool = True,
    ) -> SavedFile:
        """Save the image at ``url`` to ``dest`` and return what was written.

        ``overwrite=False`` never replaces an existing file: the image goes to the first
        free ``stem-N.ext`` name instead (``SavedFile.path`` says which).

        ``deadline`` is when ``url`` expires (epoch seconds, see :func:`result_deadline`):
        it orders the queue and bounds the retries. A ``dest`` without a suffix gets one
        from :func:`extension_for`. On 403/404 the URL is taken as expired and
        ``refresh`` (a re-poll returning a fresh URL) is called once.

        Raises :class:`ResultExpiredError`, :class:`IncompleteDownloadError`,
        :class:`StorageError` (the disk refused it; the URL is not the problem) or
        :class:`DownloadError`; nothing is left under ``dest`` or in a temp file then.
        """
        attempt, refreshed = 0, False
        try:
            while True:
                attempt += 1
                try:
                    async with self._gate.slot(deadline):
                        saved = await self._fetch_within(
                            deadline, url, dest, output_format, task_id, overwrite
                        )
                    self._completed += 1
                    return saved
                except _ATTEMPT_ERRORS as exc:
                    reason = _describe(exc, url)
                    _log.debug("download %s attempt %d: %s", _shown(url), attempt, reason)
                    # An error page served with 200 means what a 403 means: the URL is no good.
                    if isinstance(exc, _NotAnImage) or (
                        isinstance(exc, _StatusError) and exc.status in _EXPIRED_STATUSES
                    ):
                        if refreshed or refresh is None:
                            raise _error(ResultExpiredError, reason, url, task_id) from exc
                        refreshed = True
                        url = await self._refresh(refresh, url, reason, task_id)
                        # The fresh URL carries its own expiry; the old one has passed.
                        fresh = result_deadline(url, end_time=None, now=self._clock.time())
                        deadline = max(deadline, fresh)
                        continue
                    delay = self._backoff(attempt, exc)
                    if (
                        not _is_transient(exc)
                        or attempt >= self._max_attempts
                        or self._clock.time() + delay >= deadline
                    ):
                        kind = (
                            IncompleteDownloadError
                            if isinstance(exc, IncompleteDownloadError)
                            else DownloadError
                        )
                        tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                        raise _error(
                            kind, f"gave up after {tries}: {reason}", url, task_id
                        ) from exc
                    self._retries += 1
                    await self._clock.sleep(delay)
        except DownloadError:
            self._failed += 1
            raise

    async def _refresh(
        self,
        refresh: Callable[[], Awaitable[str | None]],
        url: str,
        reason: str,
        task_id: str | None,
    ) -> str:
        """Re-poll once for a fresh URL after ``url`` expired."""
        _log.debug("download %s expired (%s); re-polling once", redact_url(url), reason)
        try:
            fresh = await refresh()
        except FluxError as exc:
            raise _error(
                ResultExpiredError, f"{reason}; re-poll failed: {exc}", url, task_id
            ) from exc
        if not fresh:
            raise _error(ResultExpiredError, f"{reason}; re-poll gave no URL", url, task_id)
        return fresh

    def _backoff(self, attempt: int, exc: BaseException) -> float:
        """Return seconds to wait before attempt ``attempt + 1``: capped, full jitter."""
        delay = compute_backoff(attempt - 1, base=self._backoff_base, cap=self._backoff_cap)
        if isinstance(exc, _StatusError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    async def _fetch_within(
        self,
        deadline: float,
        url: str,
        dest: Path,
        output_format: str | None,
        task_id: str | None,
        overwrite: bool,
    ) -> SavedFile:
        """Run one attempt, cut off at the URL's deadline (a dripping body cannot hold it)."""
        budget = max(deadline - self._clock.time(), _MIN_ATTEMPT)
        try:
            return await within(
                self._clock,
                budget,
                lambda: self._fetch(url, dest, output_format, task_id, overwrite),
            )
        except TimeoutError as exc:
            raise _Stalled(f"no whole body within {budget:.1f} s, the URL's deadline") from exc

    async def _fetch(
        self,
        url: str,
        dest: Path,
        output_format: str | None,
        task_id: str | None,
        overwrite: bool,
    ) -> SavedFile:
        if is_data_url(url):
            return await self._save_data_url(url, dest, output_format, task_id, overwrite)
        if urlsplit(url).scheme.lower() not in {"http", "https"}:
            raise _error(DownloadError, "not an http(s) URL", url, task_id)
        origin = url
        for _ in range(_MAX_REDIRECTS + 1):
            # auth=None: even a client-level auth must never reach a download host.
            request = self._http.build_request("GET", url)
            response = await self._http.send(
                request, auth=None, stream=True, follow_redirects=False
            )
            try:
                if response.is_redirect:
                    try:
                        url = next_hop(origin, url, response.headers.get("location", ""))
                    except RedirectRefused as exc:
                        raise _error(DownloadError, str(exc), url, task_id) from exc
                    continue
                return await self._save_response(
                    response, url, dest, output_format, task_id, overwrite
                )
            finally:
                await response.aclose()
        raise _error(DownloadError, f"more than {_MAX_REDIRECTS} redirects", url, task_id)

    async def _save_response(
        self,
        response: httpx.Response,
        url: str,
        dest: Path,
        output_format: str | None,
        task_id: str | None,
        overwrite: bool,
    ) -> SavedFile:
        if not response.is_success:
            raise _StatusError(response.status_code, _retry_after(response))
        content_type = response.headers.get("content-type")
        chunks = _body_chunks(response, self._max_image_bytes, url, task_id)
        head, mime = await _sniff(chunks, output_format, url)
        final = dest
        if not dest.suffix:
            final = dest.with_name(dest.name + _MIME_EXTENSIONS[mime])
        final, size, digest = await self._write(
            _prepend(head, chunks),
            final,
            url,
            task_id,
            verify=lambda size: _check_length(response, size, url, task_id),
            overwrite=overwrite,
        )
        _log.debug("saved %s (%d bytes) from %s", final, size, redact_url(url))
        return SavedFile(path=final, size=size, sha256=digest, content_type=content_type)

    async def _save_data_url(
        self,
        url: str,
        dest: Path,
        output_format: str | None,
        task_id: str | None,
        overwrite: bool,
    ) -> SavedFile:
        """Decode a ``data:...;base64,`` URL into ``dest``, a chunk at a time."""
        try:
            content_type, start = data_url_header(url)
        except ValueError as exc:
            raise _error(DownloadError, str(exc), url, task_id) from exc
        chunks = _decoded_chunks(url, start, self._chunk_size, task_id)
        try:
            head, mime = await _sniff(chunks, output_format, url)
        except _NotAnImage as exc:
            raise _error(
                DownloadError, f"the data: URL holds no image: {exc}", url, task_id
            ) from exc
        final = dest
        if not dest.suffix:
            final = dest.with_name(dest.name + _MIME_EXTENSIONS[mime])

        def verify(size: int) -> None:
            if size == 0:  # pragma: no cover - the sniffed head is never empty
                raise _error(DownloadError, "the data: URL holds no image", url, task_id)

        final, size, digest = await self._write(
            _prepend(head, chunks),
            final,
            url,
            task_id,
            verify=verify,
            overwrite=overwrite,
        )
        _log.debug("saved %s (%d bytes) from an inline image", final, size)
        return SavedFile(path=final, size=size, sha256=digest, content_type=content_type)

    async def _write(
        self,
        chunks: AsyncGenerator[bytes, None],
        final: Path,
        url: str,
        task_id: str | None,
        *,
        verify: Callable[[int], None],
        overwrite: bool,
    ) -> tuple[Path, int, str]:
        """Write ``chunks`` into place atomically; a disk error is a StorageError."""
        if overwrite:
            # A replace would swap a symlink for the file, never write through it; still,
            # a name that resolves outside its folder is refused outright.
            try:
                contained(final.parent, final.name)
            except ValueError as exc:
                raise _storage_error(f"refusing to write: {exc}", exc, url, task_id) from exc
        try:
            return await write_atomically(
                chunks,
                final,
                verify=verify,
                on_chunk=self._count,
                overwrite=overwrite,
                batch_bytes=self._chunk_size,
            )
        except StorageError:
            raise
        except FolderUnavailable as exc:
            raise _storage_error(exc.strerror or str(exc), exc, url, task_id) from exc
        except OSError as exc:
            raise _storage_error(f"cannot write {final}: {exc}", exc, url, task_id) from exc

    def _count(self, written: int) -> None:
        self._bytes_written += written

    def statistics(self) -> DownloaderStatistics:
        """Return a snapshot of the queue and the counters."""
        return DownloaderStatistics(
            queued=self._gate.waiting,
            active=self._gate.holders,
            completed=self._completed,
            failed=self._failed,
            retries=self._retries,
            bytes_written=self._bytes_written,
        )

    def __repr__(self) -> str:
        return (
            f"Downloader(max_concurrent={self._gate.capacity}, active={self._gate.holders}, "
            f"queued={self._gate.waiting}, completed={self._completed}, failed={self._failed})"
        )


async def _body_chunks(
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
        expected = _content_length(response)
        reason = f"connection closed after {received} of {expected or '?'} bytes"
        raise IncompleteDownloadError(reason, task_id=task_id, url=redact_url(url)) from exc
    except BodyTooLarge as exc:
        raise _error(DownloadError, f"the image is {exc}", url, task_id) from exc
    except (UnsupportedEncoding, zlib.error) as exc:
        raise _error(DownloadError, f"the body cannot be decoded: {exc}", url, task_id) from exc


async def _sniff(
    chunks: AsyncGenerator[bytes, None], output_format: str | None, url: str
) -> tuple[bytes, str]:
    """Return the body's first bytes and its image type; raise _NotAnImage if it is none."""
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
        raise _NotAnImage(f"the body is not a PNG, JPEG or WebP image ({len(head)}+ bytes)")
    wanted = _FORMAT_EXTENSIONS.get((output_format or "").lower())
    if wanted is not None and wanted != _MIME_EXTENSIONS[mime]:
        _log.warning(
            "%s holds %s, not the requested %s; saved as what it is",
            redact_url(url),
            mime,
            output_format,
        )
    return head, mime


async def _prepend(head: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """Yield ``head``, then every chunk of ``rest``."""
    try:
        if head:
            yield head
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


def _check_length(response: httpx.Response, size: int, url: str, task_id: str | None) -> None:
    """Raise IncompleteDownloadError unless the body matched Content-Length (and is not empty)."""
    expected = _content_length(response)
    # Content-Length counts the bytes on the wire, before any decoding. An empty body is
    # no image either, and a retry may well bring the real one.
    encoding = response.headers.get("content-encoding", "").strip().lower()
    got = response.num_bytes_downloaded if encoding not in _IDENTITY else size
    if (expected is not None and got != expected) or size == 0:
        reason = f"got {got} of {expected if expected is not None else '?'} bytes"
        raise IncompleteDownloadError(reason, task_id=task_id, url=redact_url(url))


async def _decoded_chunks(
    url: str, start: int, chunk_size: int, task_id: str | None
) -> AsyncGenerator[bytes, None]:
    """Yield the image in the data: URL ``url``, decoded a chunk at a time."""
    chunks = decoded_chunks(url, start, chunk_size)
    while True:
        try:
            chunk = next(chunks, None)
        except ValueError as exc:  # binascii.Error
            raise _error(DownloadError, "the image's base64 is corrupt", url, task_id) from exc
        if chunk is None:
            return
        yield chunk
        # Decoding is CPU work: let other tasks run between chunks of a large image.
        await anyio.lowlevel.checkpoint()
