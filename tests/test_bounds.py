"""The small pieces behind issue 9's bounds: decoding within a limit, redirect rules,
log redaction and the clock-driven deadline."""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

from flux_async import ManualClock
from flux_async._core._bounded import BodyTooLarge, UnsupportedEncoding, decoded
from flux_async._core._log_redaction import QueryRedactor, install, redact_queries
from flux_async._engine._deadline import within
from flux_async._engine._redirects import RedirectRefused, is_internal_host, next_hop

pytestmark = pytest.mark.anyio

BODY = b"a fox, a hare, " * 1000


async def chunks_of(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collect(data: bytes, encoding: str, limit: int = 10**9) -> bytes:
    return b"".join([piece async for piece in decoded(chunks_of(data), encoding, limit)])


@pytest.mark.parametrize(
    ("encoding", "wire"),
    [
        ("", BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some servers send it
    ],
)
async def test_decoding_gives_back_the_body(encoding: str, wire: bytes) -> None:
    assert await collect(wire, encoding) == BODY


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
async def test_decoding_stops_past_the_limit(encoding: str) -> None:
    wire = {"": BODY, "gzip": gzip.compress(BODY), "deflate": zlib.compress(BODY)}[encoding]
    with pytest.raises(BodyTooLarge, match="limit of 1000 bytes"):
        await collect(wire, encoding, limit=1000)


async def test_a_bomb_is_never_inflated_at_once() -> None:
    bomb = gzip.compress(bytes(50 * 1024 * 1024))
    biggest = 0
    with pytest.raises(BodyTooLarge):
        async for piece in decoded(chunks_of(bomb, 64 * 1024), "gzip", 5 * 1024 * 1024):
            biggest = max(biggest, len(piece))
    assert biggest <= 64 * 1024


async def test_unknown_encodings_and_corrupt_streams_are_refused() -> None:
    with pytest.raises(UnsupportedEncoding, match="'br'"):
        await collect(BODY, "br")
    with pytest.raises(zlib.error):
        await collect(b"\x1f\x8b not gzip at all", "gzip")


@pytest.mark.parametrize(
    ("host", "internal"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("api.localhost", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("169.254.169.254", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("fe80::1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("delivery-eu1.bfl.ai", False),
    ],
)
def test_internal_hosts(host: str, internal: bool) -> None:
    assert is_internal_host(host) is internal


def test_redirect_rules() -> None:
    origin = "https://delivery.bfl.ai/a.png?sig=1"
    assert next_hop(origin, origin, "/b.png") == "https://delivery.bfl.ai/b.png"
    assert next_hop(origin, origin, "https://blob.example.net/c") == "https://blob.example.net/c"
    for location, reason in [
        ("", "without a Location"),
        ("ftp://blob.example.net/c", "ftp: URL"),
        ("http://blob.example.net/c", "https down to http"),
        ("https://10.0.0.1/c", "internal address"),
        ("https://[zz/c", "unreadable URL"),
    ]:
        with pytest.raises(RedirectRefused, match=reason):
            next_hop(origin, origin, location)
    # The loopback simulator: an internal origin may lead to internal hosts, and to http.
    local = "http://localhost:8765/a.png"
    assert next_hop(local, local, "http://127.0.0.1:8765/b") == "http://127.0.0.1:8765/b"


def test_log_redaction(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_queries('GET https://d.bfl.ai/x.png?se=1&sig=2 "200"') == (
        'GET https://d.bfl.ai/x.png?<redacted> "200"'
    )
    assert redact_queries("no url here?") == "no url here?"
    install()
    install()
    assert sum(isinstance(f, QueryRedactor) for f in logging.getLogger("httpx").filters) == 1
    caplog.set_level(logging.INFO)
    logging.getLogger("httpx").info("HTTP Request: %s %s", "GET", "https://d.test/x?sig=SECRET")
    odd = logging.LogRecord("httpx", logging.INFO, __file__, 1, "%s %s", ("one",), None)
    assert QueryRedactor().filter(odd)  # a malformed record is left to logging as it is
    assert odd.msg == "%s %s"
    assert "SECRET" not in caplog.text
    assert "https://d.test/x?<redacted>" in caplog.text


async def test_within_bounds_work_by_the_clock() -> None:
    clock = ManualClock()

    async def slow() -> int:
        await anyio.sleep_forever()
        return 1  # pragma: no cover

    async def fast() -> int:
        return 2

    async def broken() -> int:
        raise KeyError("x")

    assert await within(clock, 5.0, fast) == 2
    with pytest.raises(KeyError):
        await within(clock, 5.0, broken)
    async with anyio.create_task_group() as tg:
        outcome: list[BaseException] = []

        async def run() -> None:
            try:
                await within(clock, 5.0, slow)
            except TimeoutError as exc:
                outcome.append(exc)

        tg.start_soon(run)
        while clock.sleepers == 0:
            await anyio.lowlevel.checkpoint()
        clock.advance(5.0)
    assert isinstance(outcome[0], TimeoutError)


def test_limits_out_of_range_are_refused() -> None:
    from flux_async import AsyncFlux, ConfigurationError

    with pytest.raises(ConfigurationError, match="max_reply_bytes and max_image_bytes"):
        AsyncFlux(api_key="sim-fake-key-bounds", max_reply_bytes=10)
    with pytest.raises(ConfigurationError, match="max_reply_bytes and max_image_bytes"):
        AsyncFlux(api_key="sim-fake-key-bounds", max_image_bytes=0)
