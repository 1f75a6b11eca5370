"""Issue 9's findings replayed against a hostile server on loopback, over real HTTP.

Each test names the finding it holds. The server is ``flux_async.testing.HostileServer``:
it behaves unless a test scripts a misbehaviour for the next request to a route.
"""

from __future__ import annotations

import inspect
import json
import logging
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from flux_async import (
    AmbiguousSubmitError,
    AsyncFlux,
    BadRequestError,
    DownloadError,
    MalformedReplyError,
    ResultExpiredError,
    TaskTimeoutError,
)
from flux_async._core._clock import SystemClock
from flux_async._engine._download import Downloader
from flux_async._polling._policy import FixedIntervalPolicy
from flux_async.testing import HostileReply, HostileServer, serve
from flux_async.testing._hostile import PNG

pytestmark = pytest.mark.anyio

KEY = "sim-fake-key-hostile-tests"
MiB = 1024 * 1024


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    server = HostileServer()
    async with serve(server):
        yield server


def client(server: HostileServer, provider: str = "bfl", **options: object) -> AsyncFlux:
    options.setdefault("poll_policy", FixedIntervalPolicy(0.05))
    return AsyncFlux(
        api_key=KEY,
        provider=provider,
        base_url=server.config.api_base,
        **options,  # type: ignore[arg-type]
    )


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


async def test_it_behaves_by_default(hostile: HostileServer, tmp_path: Path) -> None:
    async with client(hostile) as flux:
        image = await flux.generate("a fox", output_dir=tmp_path)
        assert await flux.credits() == 100.0
    assert image.path.read_bytes() == PNG
    # The key went to the submit host only: not to the polling alias, never to delivery.
    assert [r.credentials for r in hostile.seen("submit")] == [("x-key",)]
    assert [r.credentials for r in hostile.seen("credits")] == [("x-key",)]
    assert [r.credentials for r in hostile.seen("poll")] == [()]
    assert [r.credentials for r in hostile.seen("delivery")] == [()]


# --- finding 2: one malformed reply kills the whole client --------------------------------


@pytest.mark.parametrize(
    "result",
    [{"seed": 1.5}, {"sample": 12345}, {"sample": "http://[zz]/x"}],
    ids=["float-seed", "int-sample", "bad-url"],
)
async def test_f2_a_malformed_ready_fails_one_task_and_the_client_goes_on(
    hostile: HostileServer, tmp_path: Path, result: dict[str, object]
) -> None:
    ready = {"status": "Ready", "result": {"sample": hostile.delivery_url("h1"), **result}}
    hostile.script("poll", HostileReply.json(ready), times=3)
    async with client(hostile) as flux:
        with pytest.raises(MalformedReplyError) as info:
            await flux.generate("first", output_dir=tmp_path / "first")
        image = await flux.generate("second", output_dir=tmp_path / "second")
    assert info.value.task_id == "h1"
    assert info.value.raw
    assert image.path.read_bytes() == PNG
    assert files(tmp_path / "first") == []


async def test_f2_a_relay_with_a_non_string_revised_prompt_is_named(
    hostile: HostileServer, tmp_path: Path
) -> None:
    url = hostile.delivery_url("r0")
    hostile.script("relay", HostileReply.json({"data": [{"url": url, "revised_prompt": 7}]}))
    async with client(hostile, "apiyi") as flux:
        with pytest.raises(AmbiguousSubmitError, match=r"field 'result\.prompt'.*: 7"):
            await flux.generate("first", model="flux-2-pro", output_dir=tmp_path)
        image = await flux.generate("second", model="flux-2-pro", output_dir=tmp_path)
    assert image.path.read_bytes() == PNG


async def test_f2_a_huge_or_non_string_task_id_is_a_clean_error(
    hostile: HostileServer, tmp_path: Path
) -> None:
    hostile.script("submit", HostileReply.json({"id": "x" * 100_000}))
    hostile.script("submit", HostileReply.json({"id": {"nested": True}}))
    async with client(hostile) as flux:
        for _ in range(2):
            with pytest.raises(AmbiguousSubmitError, match="not a task id"):
                await flux.generate("a fox", output_dir=tmp_path)
        assert (await flux.generate("a fox", output_dir=tmp_path)).path.exists()


# --- finding 5: no overall time limits ------------------------------------------------------


async def test_f5_a_dripping_poll_reply_cannot_hold_a_task_past_its_timeout(
    hostile: HostileServer, tmp_path: Path
) -> None:
    body = json.dumps({"status": "Pending", "pad": "x" * 200}).encode()
    hostile.script("poll", HostileReply.dripping(body, every=0.05), times=100)
    async with client(hostile, timeout=0.3, task_timeout=2.0) as flux:
        with pytest.raises(TaskTimeoutError):
            await flux.generate("a fox", output_dir=tmp_path)
    # Each dripping poll was cut off (0.3 s read timeout + 1 s at most), not read to the end.
    assert len(hostile.seen("poll")) <= 4
    assert files(tmp_path) == []


async def test_f5_a_dripping_delivery_stops_at_the_url_deadline(
    hostile: HostileServer, tmp_path: Path
) -> None:
    hostile.config.url_lifetime = 2.5
    body = PNG + bytes(4000)
    hostile.script(
        "delivery", HostileReply.dripping(body, every=0.02, content_type="image/png"), 10
    )
    async with client(hostile) as flux:
        with pytest.raises(DownloadError, match="deadline"):
            await flux.generate("a fox", output_dir=tmp_path)
        assert flux.statistics().downloader.active == 0
    assert files(tmp_path) == []


# --- finding 6: no size limits ------------------------------------------------------------


async def test_f6_a_huge_poll_reply_is_refused_while_it_streams(
    hostile: HostileServer, tmp_path: Path
) -> None:
    hostile.script("poll", HostileReply.huge(40 * MiB), times=3)
    async with client(hostile, max_reply_bytes=1 * MiB) as flux:
        with pytest.raises(MalformedReplyError, match="larger than the limit") as info:
            await flux.generate("a fox", output_dir=tmp_path)
        assert (await flux.generate("again", output_dir=tmp_path)).path.exists()
    assert info.value.raw == f"> {MiB} bytes"


async def test_f6_a_gzip_bomb_stops_at_the_image_limit_and_leaves_no_file(
    hostile: HostileServer, tmp_path: Path
) -> None:
    hostile.script("delivery", HostileReply.gzip_bomb(200 * MiB), times=10)
    async with client(hostile, max_image_bytes=4 * MiB) as flux:
        with pytest.raises(DownloadError, match="larger than the limit of 4194304 bytes"):
            await flux.generate("a fox", output_dir=tmp_path)
    assert files(tmp_path) == []


async def test_f6_a_gzip_bomb_in_a_json_reply_is_refused(
    hostile: HostileServer, tmp_path: Path
) -> None:
    bomb = HostileReply.gzip_bomb(
        100 * MiB, prefix=b'{"status": "Pending", "p": "', content_type="application/json"
    )
    hostile.script("poll", bomb, times=3)
    async with client(hostile) as flux:
        with pytest.raises(MalformedReplyError, match="larger than the limit"):
            await flux.generate("a fox", output_dir=tmp_path)


# --- finding 7: the body is never checked to be an image -------------------------------------


async def test_f7_an_html_page_with_200_is_re_polled_never_saved(
    hostile: HostileServer, tmp_path: Path
) -> None:
    hostile.script("delivery", HostileReply.access_denied_page())
    async with client(hostile) as flux:
        image = await flux.generate("a fox", output_dir=tmp_path)
    assert image.path.read_bytes() == PNG
    assert len(hostile.seen("poll")) == 2  # the Ready, then one re-poll for a fresh URL
    assert files(tmp_path) == [image.path.name]


async def test_f7_an_html_page_every_time_fails_without_a_file(
    hostile: HostileServer, tmp_path: Path
) -> None:
    hostile.script("delivery", HostileReply.access_denied_page(), times=5)
    async with client(hostile) as flux:
        with pytest.raises(ResultExpiredError, match="not a PNG, JPEG or WebP"):
            await flux.generate("a fox", output_dir=tmp_path)
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("ftp://127.0.0.1/x.png", "ftp: URL"),
        ("file:///etc/passwd", "file: URL"),
        ("/delivery/loop.png", "more than 5 redirects"),
    ],
)
async def test_f7_delivery_redirects_are_bounded_and_http_only(
    hostile: HostileServer, tmp_path: Path, location: str, reason: str
) -> None:
    hostile.script("delivery", HostileReply.redirect(location), times=20)
    async with client(hostile) as flux:
        with pytest.raises(DownloadError, match=reason):
            await flux.generate("a fox", output_dir=tmp_path)
    assert all(r.credentials == () for r in hostile.seen("delivery"))
    assert files(tmp_path) == []


async def test_f7_a_foreign_delivery_host_cannot_redirect_to_loopback(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        target = {
            "delivery.example.net": "https://127.0.0.1:8765/admin",
            "cdn.example.net": "https://169.254.169.254/latest/meta-data",
            "secure.example.net": "http://secure.example.net/x.png",
        }[request.url.host]
        return httpx.Response(302, headers={"location": target})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        loader = Downloader(http, clock=SystemClock(), max_attempts=1)
        for url, reason in [
            ("https://delivery.example.net/x.png?sig=s", "internal address"),
            ("https://cdn.example.net/x.png?sig=s", "internal address"),
            ("https://secure.example.net/x.png?sig=s", "https down to http"),
        ]:
            with pytest.raises(DownloadError, match=reason):
                await loader.download(url, tmp_path / "x", deadline=4e9)
    assert len(seen) == 3  # no redirect was followed
    assert files(tmp_path) == []


# --- finding 8: output hygiene ------------------------------------------------------------


async def test_f8_escape_sequences_in_detail_never_reach_the_message(
    hostile: HostileServer, tmp_path: Path
) -> None:
    evil = "bad prompt\x1b[2J\x1b]0;owned\x07\r\nFAKE: all good" + "!" * 5000
    hostile.script("submit", HostileReply.detail(evil, 422))
    async with client(hostile) as flux:
        with pytest.raises(BadRequestError) as info:
            await flux.generate("a fox", output_dir=tmp_path)
    text = str(info.value)
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\n" not in text
    assert "bad prompt[2J]0;owned FAKE: all good" in text
    assert len(text) < 500


async def test_f8_httpx_info_logs_never_show_a_signed_url(
    hostile: HostileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with client(hostile) as flux:
        await flux.generate("a fox", output_dir=tmp_path)
    httpx_lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("/delivery/h1.png?<redacted>" in line for line in httpx_lines)
    assert "HOSTILESIG" not in caplog.text
    assert "se=" not in caplog.text


async def test_the_documented_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = inspect.getdoc(HostileServer) or ""
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(f"async def example():\n{textwrap.indent(code, '    ')}", namespace)  # noqa: S102
    monkeypatch.chdir(tmp_path)
    example = namespace["example"]
    assert callable(example)
    await example()
    assert capsys.readouterr().out.startswith("refused: result URL expired")
    assert files(tmp_path / "out") == []  # an HTML page never becomes a file
