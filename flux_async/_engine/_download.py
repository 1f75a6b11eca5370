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
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .._core._backoff import compute_backoff
from .._core._bounded import DEFAULT_MAX_IMAGE_BYTES
from .._core._clock import Clock
from .._core._paths import contained
from .._errors import (
    ConfigurationError,
    DownloadError,
    ResultExpiredError,
    StorageError,
)
from .._request._data_urls import is_data_url
from ._atomic_write import DEFAULT_BATCH_BYTES, FolderUnavailable, write_atomically
from ._body import (
    ATTEMPT_ERRORS,
    Stalled,
    StatusError,
    body_chunks,
    check_length,
    data_url_verifier,
    describe,
    download_error,
    given_up,
    is_transient,
    means_expired,
    open_data_url,
    prepend,
    refreshed_url,
    retry_after,
    shown,
    sniff,
    storage_error,
)
from ._deadline import within
from ._edf import DeadlineGate
from ._redirects import RedirectRefused, next_hop
from ._result_files import MIME_EXTENSIONS, SavedFile, extension_for, result_deadline

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
# An attempt gets at least this long (seconds) even when the URL's deadline is closer:
# an expired URL answers 403 at once, a live one needs a moment.
_MIN_ATTEMPT = 2.0
_MAX_REDIRECTS = 5


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
                except ATTEMPT_ERRORS as exc:
                    reason = describe(exc, url)
                    _log.debug("download %s attempt %d: %s", shown(url), attempt, reason)
                    if means_expired(exc):
                        if refreshed or refresh is None:
                            raise download_error(ResultExpiredError, reason, url, task_id) from exc
                        refreshed = True
                        url = await refreshed_url(refresh, url, reason, task_id)
                        # The fresh URL carries its own expiry; the old one has passed.
                        fresh = result_deadline(url, end_time=None, now=self._clock.time())
                        deadline = max(deadline, fresh)
                        continue
                    delay = self._backoff(attempt, exc)
                    if (
                        not is_transient(exc)
                        or attempt >= self._max_attempts
                        or self._clock.time() + delay >= deadline
                    ):
                        raise given_up(exc, attempt, reason, url, task_id) from exc
                    self._retries += 1
                    await self._clock.sleep(delay)
        except DownloadError:
            self._failed += 1
            raise

    def _backoff(self, attempt: int, exc: BaseException) -> float:
        """Return seconds to wait before attempt ``attempt + 1``: capped, full jitter."""
        delay = compute_backoff(attempt - 1, base=self._backoff_base, cap=self._backoff_cap)
        if isinstance(exc, StatusError) and exc.retry_after is not None:
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
            raise Stalled(f"no whole body within {budget:.1f} s, the URL's deadline") from exc

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
            raise download_error(DownloadError, "not an http(s) URL", url, task_id)
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
                        raise download_error(DownloadError, str(exc), url, task_id) from exc
                    continue
                return await self._save_response(
                    response, url, dest, output_format, task_id, overwrite
                )
            finally:
                await response.aclose()
        raise download_error(DownloadError, f"more than {_MAX_REDIRECTS} redirects", url, task_id)

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
            raise StatusError(response.status_code, retry_after(response))
        chunks = body_chunks(response, self._max_image_bytes, url, task_id)
        sniffed = await sniff(chunks, output_format, url)
        return await self._save(
            chunks,
            sniffed,
            dest,
            url,
            task_id,
            verify=lambda size: check_length(response, size, url, task_id),
            overwrite=overwrite,
            content_type=response.headers.get("content-type"),
        )

    async def _save_data_url(
        self,
        url: str,
        dest: Path,
        output_format: str | None,
        task_id: str | None,
        overwrite: bool,
    ) -> SavedFile:
        """Decode a ``data:...;base64,`` URL into ``dest``, a chunk at a time."""
        chunks, sniffed, content_type = await open_data_url(
            url, self._chunk_size, output_format, task_id
        )
        verify = data_url_verifier(url, task_id)
        return await self._save(
            chunks,
            sniffed,
            dest,
            url,
            task_id,
            verify=verify,
            overwrite=overwrite,
            content_type=content_type,
        )

    async def _save(
        self,
        chunks: AsyncGenerator[bytes, None],
        sniffed: tuple[bytes, str],
        dest: Path,
        url: str,
        task_id: str | None,
        *,
        verify: Callable[[int], None],
        overwrite: bool,
        content_type: str | None,
    ) -> SavedFile:
        """Write the sniffed body into place atomically; a disk error is a StorageError.

        ``sniffed`` is the body's first bytes (already taken from ``chunks``) and its
        image type, which names the file when ``dest`` has no suffix.
        """
        head, mime = sniffed
        final = dest if dest.suffix else dest.with_name(dest.name + MIME_EXTENSIONS[mime])
        if overwrite:
            # A replace would swap a symlink for the file, never write through it; still,
            # a name that resolves outside its folder is refused outright.
            try:
                contained(final.parent, final.name)
            except ValueError as exc:
                raise storage_error(f"refusing to write: {exc}", exc, url, task_id) from exc
        try:
            final, size, digest = await write_atomically(
                prepend(head, chunks),
                final,
                verify=verify,
                on_chunk=self._count,
                overwrite=overwrite,
                batch_bytes=self._chunk_size,
            )
        except StorageError:
            raise
        except FolderUnavailable as exc:
            raise storage_error(exc.strerror or str(exc), exc, url, task_id) from exc
        except OSError as exc:
            raise storage_error(f"cannot write {final}: {exc}", exc, url, task_id) from exc
        _log.debug("saved %s (%d bytes) from %s", final, size, shown(url))
        return SavedFile(path=final, size=size, sha256=digest, content_type=content_type)

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
