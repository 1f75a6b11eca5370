"""Tests for the streaming downloader, its deadline gate and its helpers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from flux_async._core._clock import ManualClock
from flux_async._engine import _atomic_write as atomic_write
from flux_async._engine._download import (
    Downloader,
    DownloaderStatistics,
    SavedFile,
    extension_for,
    result_deadline,
)
from flux_async._engine._edf import DeadlineGate
from flux_async._errors import (
    DownloadError,
    IncompleteDownloadError,
    ResultExpiredError,
    TaskNotFoundError,
)

pytestmark = pytest.mark.anyio

SECRET = "sig=SIMFAKESIGNATURE"
URL = (
    f"https://delivery-eu1.bfl.ai/results/abc/sample.jpeg?se=2026-11-22T10%3A00%3A00Z&sp=r&{SECRET}"
)
FRESH = f"https://delivery-us1.bfl.ai/results/abc/sample.jpeg?se=2026-11-22T10%3A20%3A00Z&{SECRET}2"
JPEG = b"\xff\xd8\xff\xe0" + b"fake jpeg body " * 100
PNG = b"\x89PNG\r\n\x1a\n" + b"fake png body " * 100
KiB = 1024
MiB = 1024 * KiB

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def image(
    body: bytes = JPEG, content_type: str = "image/jpeg", content_length: str | None = None
) -> httpx.Response:
    headers = {"content-type": content_type}
    if content_length is not None:
        headers["content-length"] = content_length
    return httpx.Response(200, headers=headers, content=body)


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.part"))


def listing(folder: Path) -> list[Path]:
    return sorted(folder.iterdir())


def mock_client(handler: Handler, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), **kwargs)


def downloader(http: httpx.AsyncClient, clock: ManualClock, **kwargs: Any) -> Downloader:
    kwargs.setdefault("backoff_base", 0.0)
    return Downloader(http, clock=clock, **kwargs)


def sequence(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """Return a handler answering with ``responses`` in turn (the last repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses[min(len(seen), len(responses)) - 1]
        if isinstance(answer, Exception):
            raise answer
        # A fresh copy each time: a response object is consumed by the client that got it.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    return handler, seen


async def chunks(piece: bytes, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield piece


# --- streaming and files -------------------------------------------------------------


async def test_streams_a_large_body_in_chunks(tmp_path: Path, clock: ManualClock) -> None:
    piece = (PNG[:8] + bytes(range(256)) * 256)[: 64 * KiB]  # 64 KiB, starting as a PNG
    body_size = 8 * MiB

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "image/png", "content-length": str(body_size)}
        return httpx.Response(200, headers=headers, content=chunks(piece, body_size // len(piece)))

    async with mock_client(handler) as http:
        saved = await downloader(http, clock).download(
            URL, tmp_path / "out" / "fox", deadline=clock.time() + 600
        )
    expected = hashlib.sha256(piece * (body_size // len(piece))).hexdigest()
    assert saved == SavedFile(tmp_path / "out" / "fox.png", body_size, expected, "image/png")
    assert saved.path.stat().st_size == body_size
    assert hashlib.sha256(saved.path.read_bytes()).hexdigest() == expected
    assert leftovers(tmp_path) == []


async def test_memory_stays_flat_while_streaming(tmp_path: Path, clock: ManualClock) -> None:
    piece = (JPEG[:4] + b"\x5a" * (64 * KiB))[: 64 * KiB]
    body_size = 32 * MiB

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(body_size)}
        return httpx.Response(200, headers=headers, content=chunks(piece, body_size // len(piece)))

    async with mock_client(handler) as http:
        loader = downloader(http, clock)
        tracemalloc.start()
        try:
            saved = await loader.download(URL, tmp_path / "big.jpeg", deadline=clock.time() + 600)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert saved.size == body_size
    assert peak < 4 * MiB


async def test_keeps_a_given_suffix_and_creates_folders(tmp_path: Path, clock: ManualClock) -> None:
    handler, _ = sequence(image(content_type="image/webp"))
    dest = tmp_path / "a" / "b" / "c" / "fox.jpg"
    async with mock_client(handler) as http:
        saved = await downloader(http, clock).download(URL, dest, deadline=clock.time() + 600)
    assert saved.path == dest
    assert dest.read_bytes() == JPEG
    assert saved.sha256 == hashlib.sha256(JPEG).hexdigest()


async def test_suffix_from_output_format_without_content_type(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler, _ = sequence(httpx.Response(200, content=PNG), httpx.Response(200, content=JPEG))
    async with mock_client(handler) as http:
        saved = await downloader(http, clock).download(
            URL, tmp_path / "fox", deadline=clock.time() + 600, output_format="png"
        )
        # The name follows what the bytes are, even when the server sent another format.
        other = await downloader(http, clock).download(
            URL, tmp_path / "hare", deadline=clock.time() + 600, output_format="png"
        )
    assert saved.path == tmp_path / "fox.png"
    assert saved.content_type is None
    assert other.path == tmp_path / "hare.jpeg"


async def test_overwrites_an_existing_file_atomically(tmp_path: Path, clock: ManualClock) -> None:
    dest = tmp_path / "fox.jpeg"
    dest.write_bytes(b"old")
    handler, _ = sequence(image())
    async with mock_client(handler) as http:
        await downloader(http, clock).download(URL, dest, deadline=clock.time() + 600)
    assert dest.read_bytes() == JPEG


async def test_a_very_long_name_still_gets_a_temp_file(tmp_path: Path, clock: ManualClock) -> None:
    dest = tmp_path / ("狐" * 80 + ".jpeg")  # 245 bytes of UTF-8
    handler, _ = sequence(image())
    async with mock_client(handler) as http:
        saved = await downloader(http, clock).download(URL, dest, deadline=clock.time() + 600)
    assert saved.path.read_bytes() == JPEG
    assert leftovers(tmp_path) == []


# --- incomplete bodies ---------------------------------------------------------------


async def test_truncated_body_is_retried(tmp_path: Path, clock: ManualClock) -> None:
    handler, seen = sequence(image(JPEG[:10], content_length=str(len(JPEG))), image())
    async with mock_client(handler) as http:
        loader = downloader(http, clock)
        saved = await loader.download(URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600)
    assert len(seen) == 2
    assert saved.path.read_bytes() == JPEG
    assert loader.statistics().retries == 1


async def test_always_truncated_leaves_nothing(tmp_path: Path, clock: ManualClock) -> None:
    handler, seen = sequence(image(JPEG[:10], content_length=str(len(JPEG))))
    async with mock_client(handler) as http:
        loader = downloader(http, clock, max_attempts=3)
        with pytest.raises(IncompleteDownloadError) as caught:
            await loader.download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600, task_id="t-1"
            )
    assert len(seen) == 3
    assert listing(tmp_path) == []
    error = caught.value
    assert isinstance(error.__cause__, IncompleteDownloadError)
    assert error.task_id == "t-1"
    assert "after 3 attempts" in str(error)
    assert "got 10 of" in str(error)
    assert SECRET not in str(error)
    assert error.url == "https://delivery-eu1.bfl.ai/results/abc/sample.jpeg?<redacted>"
    stats = loader.statistics()
    assert (stats.failed, stats.retries, stats.completed) == (1, 2, 0)


async def test_empty_body_is_not_an_image(tmp_path: Path, clock: ManualClock) -> None:
    handler, _ = sequence(image(b""))
    async with mock_client(handler) as http:
        with pytest.raises(IncompleteDownloadError, match="after 1 attempt:"):
            await downloader(http, clock, max_attempts=1).download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600
            )
    assert listing(tmp_path) == []


async def test_unreadable_content_length_is_ignored(tmp_path: Path, clock: ManualClock) -> None:
    handler, _ = sequence(image(content_length="lots"))
    async with mock_client(handler) as http:
        saved = await downloader(http, clock).download(
            URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600
        )
    assert saved.size == len(JPEG)


# --- expired URLs --------------------------------------------------------------------


def expired() -> httpx.Response:
    body = b"<?xml version='1.0'?><Error><Code>AuthenticationFailed</Code></Error>"
    return httpx.Response(403, headers={"content-type": "application/xml"}, content=body)


class Refresher:
    def __init__(self, answer: str | Exception | None) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> str | None:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_expired_url_is_refreshed_once(tmp_path: Path, clock: ManualClock) -> None:
    handler, seen = sequence(expired(), image())
    refresh = Refresher(FRESH)
    async with mock_client(handler) as http:
        saved = await downloader(http, clock).download(
            URL, tmp_path / "fox.jpeg", deadline=clock.time() - 1, refresh=refresh
        )
    assert refresh.calls == 1
    assert [str(r.url) for r in seen] == [URL, FRESH]
    assert saved.path.read_bytes() == JPEG


async def test_expired_twice_raises(tmp_path: Path, clock: ManualClock) -> None:
    handler, seen = sequence(expired(), httpx.Response(404))
    refresh = Refresher(FRESH)
    async with mock_client(handler) as http:
        loader = downloader(http, clock)
        with pytest.raises(ResultExpiredError, match="HTTP 404") as caught:
            await loader.download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600, refresh=refresh
            )
    assert refresh.calls == 1
    assert len(seen) == 2
    assert SECRET not in str(caught.value)
    assert loader.statistics().failed == 1
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("refresh", "message"),
    [
        (None, "HTTP 403"),
        (Refresher(None), "re-poll gave no URL"),
        (Refresher(TaskNotFoundError("gone", task_id="t-1")), "re-poll failed: gone"),
    ],
)
async def test_expired_without_a_fresh_url(
    tmp_path: Path, clock: ManualClock, refresh: Refresher | None, message: str
) -> None:
    handler, seen = sequence(expired(), image())
    async with mock_client(handler) as http:
        with pytest.raises(ResultExpiredError, match=message) as caught:
            await downloader(http, clock).download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600, refresh=refresh
            )
    assert len(seen) == 1
    if isinstance(refresh, Refresher) and isinstance(refresh.answer, Exception):
        assert caught.value.__cause__ is refresh.answer


# --- transient failures and retries --------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        httpx.Response(503),
        httpx.Response(500),
        httpx.Response(429, headers={"retry-after": "0"}),
        httpx.Response(502, headers={"retry-after": "soon"}),
        httpx.Response(504, headers={"retry-after": "-1"}),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message"),
        httpx.ReadTimeout("timed out"),
    ],
)
async def test_transient_failure_is_retried(
    tmp_path: Path, clock: ManualClock, first: httpx.Response | Exception
) -> None:
    handler, seen = sequence(first, image())
    async with mock_client(handler) as http:
        loader = downloader(http, clock)
        saved = await loader.download(URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600)
    assert len(seen) == 2
    assert saved.size == len(JPEG)
    assert loader.statistics().retries == 1


async def test_gives_up_when_attempts_run_out(tmp_path: Path, clock: ManualClock) -> None:
    handler, seen = sequence(httpx.Response(503))
    async with mock_client(handler) as http:
        with pytest.raises(DownloadError, match="after 4 attempts: HTTP 503") as caught:
            await downloader(http, clock).download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600
            )
    assert len(seen) == 4
    assert type(caught.value) is DownloadError
    assert caught.value.__cause__ is not None


async def test_gives_up_past_the_deadline(tmp_path: Path, clock: ManualClock) -> None:
    seen: list[httpx.Request] = []

    def slow_503(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        clock.advance(60.0)  # each attempt takes a minute of (manual) time
        return httpx.Response(503)

    async with mock_client(slow_503) as http:
        with pytest.raises(DownloadError, match="after 2 attempts"):
            await downloader(http, clock, max_attempts=10).download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 100
            )
    assert len(seen) == 2


async def test_a_retry_after_longer_than_the_deadline_gives_up(
    tmp_path: Path, clock: ManualClock
) -> None:
    handler, seen = sequence(httpx.Response(429, headers={"retry-after": "900"}), image())
    async with mock_client(handler) as http:
        with pytest.raises(DownloadError, match="HTTP 429"):
            await downloader(http, clock).download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600
            )
    assert len(seen) == 1


async def test_backoff_sleeps_on_the_clock(tmp_path: Path, clock: ManualClock) -> None:
    handler, seen = sequence(httpx.Response(429, headers={"retry-after": "5"}), image())
    result: list[SavedFile] = []
    async with mock_client(handler) as http:
        loader = downloader(http, clock, backoff_base=1.0, backoff_cap=2.0)

        async def run() -> None:
            dest = tmp_path / "fox.jpeg"
            result.append(await loader.download(URL, dest, deadline=clock.time() + 600))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.wait_all_tasks_blocked()
            assert len(seen) == 1
            assert clock.next_deadline == 5.0  # Retry-After beats a jitter of at most 1 s
            clock.advance(5.0)
    assert len(seen) == 2
    assert result[0].size == len(JPEG)


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(400), httpx.Response(401), httpx.UnsupportedProtocol("no ftp here")],
)
async def test_permanent_failure_is_not_retried(
    tmp_path: Path, clock: ManualClock, answer: httpx.Response | Exception
) -> None:
    handler, seen = sequence(answer, image())
    async with mock_client(handler) as http:
        with pytest.raises(DownloadError, match="after 1 attempt:"):
            await downloader(http, clock).download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600
            )
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://files.example/x.jpeg", "not an http"),
        ("data:image/png,rawbytes", "only base64 data: URLs"),
        ("data:image/png;base64,!!!!", "base64 is corrupt"),
        ("https://a\x00b.example/x.jpeg", "non-printable"),
    ],
)
async def test_unusable_url(tmp_path: Path, clock: ManualClock, url: str, message: str) -> None:
    handler, seen = sequence(image())
    async with mock_client(handler) as http:
        with pytest.raises(DownloadError, match=message):
            await downloader(http, clock).download(
                url, tmp_path / "fox.jpeg", deadline=clock.time() + 600
            )
    assert seen == []


async def test_disk_errors_are_download_errors(tmp_path: Path, clock: ManualClock) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    handler, _ = sequence(image())
    async with mock_client(handler) as http:
        loader = downloader(http, clock)
        with pytest.raises(DownloadError, match="cannot create folder"):
            await loader.download(URL, blocker / "fox.jpeg", deadline=clock.time() + 600)
        (tmp_path / "taken.jpeg").mkdir()
        with pytest.raises(DownloadError, match="cannot write"):
            await loader.download(URL, tmp_path / "taken.jpeg", deadline=clock.time() + 600)
    assert leftovers(tmp_path) == []
    assert loader.statistics().failed == 2


async def test_a_failed_open_leaves_nothing(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_write, "_open_part", refuse)
    handler, _ = sequence(image())
    async with mock_client(handler) as http:
        with pytest.raises(DownloadError, match="No space left"):
            await downloader(http, clock).download(
                URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600
            )
    assert listing(tmp_path) == []


# --- earliest deadline first, cancellation -------------------------------------------


async def fetch(loader: Downloader, dest: Path, deadline: float) -> None:
    """Download ``https://d.example/{dest.name}`` to ``dest``."""
    await loader.download(f"https://d.example/{dest.name}", dest, deadline=deadline)


class Gatekeeper:
    """A handler that holds the body of URLs containing ``hold`` after its first 100 bytes.

    ``holding`` is set once the downloader asks for more than those bytes, which with a
    ``chunk_size`` of 50 means it has written them all to its temp file.
    """

    def __init__(self) -> None:
        self.started: list[str] = []
        self.holding = anyio.Event()
        self.release = anyio.Event()

    async def body(self) -> AsyncIterator[bytes]:
        yield JPEG[:100]
        self.holding.set()
        await self.release.wait()
        yield JPEG[100:]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.started.append(request.url.path)
        if "hold" in request.url.path:
            return httpx.Response(200, content=self.body())
        return image()


async def test_earliest_deadline_goes_first(tmp_path: Path, clock: ManualClock) -> None:
    gate = Gatekeeper()
    now = clock.time()
    async with mock_client(gate) as http:
        loader = downloader(http, clock, max_concurrent=1, chunk_size=50)
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, loader, tmp_path / "hold", now + 5)
            await gate.holding.wait()  # the first chunks are on disk
            for seconds in (30, 10, 20):
                tg.start_soon(fetch, loader, tmp_path / str(seconds), now + seconds)
                await anyio.wait_all_tasks_blocked()
            assert loader.statistics() == DownloaderStatistics(3, 1, 0, 0, 0, 100)
            gate.release.set()
    assert gate.started == ["/hold", "/10", "/20", "/30"]
    stats = loader.statistics()
    assert (stats.queued, stats.active, stats.completed) == (0, 0, 4)
    assert stats.bytes_written == 4 * len(JPEG)
    assert leftovers(tmp_path) == []


async def test_cancelled_waiter_leaves_the_queue(tmp_path: Path, clock: ManualClock) -> None:
    gate = Gatekeeper()
    async with mock_client(gate) as http:
        loader = downloader(http, clock, max_concurrent=1, chunk_size=50)
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, loader, tmp_path / "hold", clock.time() + 600)
            await gate.holding.wait()  # the first chunks are on disk
            waiting = anyio.CancelScope()

            async def wait() -> None:
                with waiting:
                    await loader.download(
                        "https://d.example/w", tmp_path / "w.jpeg", deadline=clock.time()
                    )

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert loader.statistics().queued == 1
            waiting.cancel()
            await anyio.wait_all_tasks_blocked()
            assert loader.statistics().queued == 0
            assert waiting.cancelled_caught
            gate.release.set()
        after = await loader.download(
            "https://d.example/next", tmp_path / "n.jpeg", deadline=clock.time() + 600
        )
    assert gate.started == ["/hold", "/next"]
    assert after.size == len(JPEG)
    assert not (tmp_path / "w.jpeg").exists()
    assert leftovers(tmp_path) == []


async def test_cancelled_stream_removes_its_temp_file(tmp_path: Path, clock: ManualClock) -> None:
    gate = Gatekeeper()
    async with mock_client(gate) as http:
        loader = downloader(http, clock, max_concurrent=1, chunk_size=50)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(fetch, loader, tmp_path / "hold", clock.time() + 600)
                await gate.holding.wait()  # the first chunks are on disk
                assert len(leftovers(tmp_path)) == 1  # mid-stream, bytes on disk
                assert loader.statistics().active == 1
                scope.cancel()
        assert scope.cancelled_caught
        assert leftovers(tmp_path) == []
        assert listing(tmp_path) == []
        assert loader.statistics().active == 0
        gate.release.set()
        with anyio.fail_after(5):
            after = await loader.download(
                "https://d.example/next", tmp_path / "n.jpeg", deadline=clock.time() + 600
            )
    assert after.path.read_bytes() == JPEG


async def test_gate_passes_on_a_slot_handed_to_a_cancelled_waiter() -> None:
    gate = DeadlineGate(1)
    order: list[str] = []
    tasks: dict[str, asyncio.Task[Any]] = {}
    await gate.acquire(0.0)

    async def wait(name: str, deadline: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks[name] = task
        try:
            await gate.acquire(deadline)
        except asyncio.CancelledError:
            order.append(f"{name} cancelled")
            return
        order.append(name)
        gate.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "late", 2.0)
        tg.start_soon(wait, "early", 1.0)
        await anyio.wait_all_tasks_blocked()
        assert gate.waiting == 2
        gate.release()  # hands the slot to "early" ...
        # ... whose task is cancelled before it resumes: the slot must pass to "late".
        tasks["early"].cancel()
    assert order == ["early cancelled", "late"]
    assert (gate.holders, gate.waiting) == (0, 0)
    assert repr(gate) == "DeadlineGate(capacity=1, holders=0, waiting=0)"


def test_gate_rejects_misuse() -> None:
    with pytest.raises(ValueError, match="capacity"):
        DeadlineGate(0)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        DeadlineGate(1).release()


# --- credentials ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": {"x-key": "sim-fake-key"}},
        {"headers": {"X-Key": "sim-fake-key"}},
        {"headers": {"Authorization": "Bearer sim-fake-key"}},
        {"auth": ("user", "sim-fake-key")},
    ],
)
async def test_refuses_a_client_with_credentials(
    clock: ManualClock, kwargs: dict[str, Any]
) -> None:
    handler, _ = sequence(image())
    async with mock_client(handler, **kwargs) as http:
        with pytest.raises(ValueError, match="no credentials") as caught:
            Downloader(http, clock=clock)
    assert "sim-fake-key" not in str(caught.value)


async def test_cross_host_redirect_carries_no_credential(
    tmp_path: Path, clock: ManualClock
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "delivery-eu1.bfl.ai":
            return httpx.Response(302, headers={"location": "https://blob.example.net/x.png?sig=2"})
        return image(PNG, content_type="image/png")

    async with mock_client(handler) as http:
        saved = await downloader(http, clock).download(
            URL, tmp_path / "fox", deadline=clock.time() + 600
        )
    assert [r.url.host for r in seen] == ["delivery-eu1.bfl.ai", "blob.example.net"]
    for request in seen:
        assert not {"x-key", "authorization", "cookie"} & {k.lower() for k in request.headers}
    assert saved.path == tmp_path / "fox.png"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrent": 0},
        {"chunk_size": 0},
        {"max_attempts": 0},
        {"backoff_base": -1.0},
        {"backoff_cap": -1.0},
    ],
)
async def test_rejects_bad_settings(clock: ManualClock, kwargs: dict[str, Any]) -> None:
    async with mock_client(sequence(image())[0]) as http:
        with pytest.raises(ValueError, match=">= "):
            Downloader(http, clock=clock, **kwargs)


async def test_logs_never_carry_the_signed_query(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    handler, _ = sequence(expired(), httpx.ReadError(f"reset while reading {URL}"), image())
    caplog.set_level(logging.DEBUG, logger="flux_async")
    async with mock_client(handler) as http:
        await downloader(http, clock).download(
            URL, tmp_path / "fox.jpeg", deadline=clock.time() + 600, refresh=Refresher(URL)
        )
    messages = [record.getMessage() for record in caplog.records]
    assert any("re-polling once" in m for m in messages)
    assert any("saved" in m for m in messages)
    assert all("SIMFAKESIGNATURE" not in m for m in messages)


async def test_statistics_and_repr(tmp_path: Path, clock: ManualClock) -> None:
    handler, _ = sequence(httpx.Response(500), image(), httpx.Response(400))
    async with mock_client(handler) as http:
        loader = downloader(http, clock, max_concurrent=3)
        assert loader.statistics() == DownloaderStatistics(0, 0, 0, 0, 0, 0)
        await loader.download(URL, tmp_path / "a.jpeg", deadline=clock.time() + 600)
        with pytest.raises(DownloadError):
            await loader.download(URL, tmp_path / "b.jpeg", deadline=clock.time() + 600)
    assert loader.statistics() == DownloaderStatistics(0, 0, 1, 1, 1, len(JPEG))
    assert repr(loader) == "Downloader(max_concurrent=3, active=0, queued=0, completed=1, failed=1)"


# --- pure helpers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output_format", "content_type", "expected"),
    [
        (None, "image/jpeg", ".jpeg"),
        ("png", "image/jpeg", ".jpeg"),
        (None, "image/png", ".png"),
        (None, "IMAGE/WEBP; charset=binary", ".webp"),
        (None, "image/jpg", ".jpeg"),
        ("png", "application/octet-stream", ".png"),
        ("webp", None, ".webp"),
        ("JPG", None, ".jpeg"),
        (".png", "", ".png"),
        ("tiff", "text/html", ".jpeg"),
        (None, None, ".jpeg"),
    ],
)
def test_extension_for(output_format: str | None, content_type: str | None, expected: str) -> None:
    assert extension_for(output_format, content_type) == expected


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


BASE = "https://delivery-eu1.bfl.ai/x/sample.jpeg"


@pytest.mark.parametrize(
    ("url", "end_time", "expected"),
    [
        (f"{BASE}?se=2026-11-22T10%3A00%3A00Z&sig=x", None, epoch("2026-11-22T10:00:00")),
        (f"{BASE}?se=2026-11-22T10:00:00Z", 5.0, epoch("2026-11-22T10:00:00")),
        (f"{BASE}?se=2026-11-22T10:00:00.1234567Z", None, epoch("2026-11-22T10:00:00.123456")),
        (f"{BASE}?se=2026-11-22T10:00:00+00:00", None, epoch("2026-11-22T10:00:00")),
        (f"{BASE}?se=2026-11-22T12:00:00%2B02:00", None, epoch("2026-11-22T10:00:00")),
        (f"{BASE}?se=2026-11-22T10:00:00", None, epoch("2026-11-22T10:00:00")),
        (f"{BASE}?se=tomorrow&sig=x", 1_000.0, 1_600.0),
        (f"{BASE}?sig=x", 1_000.0, 1_600.0),
        (BASE, None, 2_600.0),
        (f"{BASE}?se=", None, 2_600.0),
    ],
)
def test_result_deadline(url: str, end_time: float | None, expected: float) -> None:
    assert result_deadline(url, end_time=end_time, now=2_000.0) == pytest.approx(expected)


def test_result_deadline_lifetime() -> None:
    assert result_deadline(BASE, end_time=100.0, now=0.0, lifetime=60.0) == 160.0
