"""The simulator in process: protocol behaviour, scripting, faults and records."""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from flux_async import testing
from flux_async.testing import (
    FAKE_API_KEY,
    ManualClock,
    Simulator,
    SimulatorConfig,
)

pytestmark = pytest.mark.anyio

KEY = {"x-key": FAKE_API_KEY}
JPEG_SOI = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CUT_SHORT = r"without sending complete message body \(received \d+ bytes"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    return Simulator(clock=clock)


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        yield c


async def submit(
    client: httpx.AsyncClient, model: str = "flux-2-pro", **body: Any
) -> dict[str, Any]:
    response = await client.post(f"/v1/{model}", json={"prompt": "a red fox", **body}, headers=KEY)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def poll(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url, headers=KEY)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def collect(response: httpx.Response, into: list[bytes]) -> None:
    async for chunk in response.aiter_raw():
        into.append(chunk)


def test_exports_are_sorted_and_complete() -> None:
    # ruff's RUF022 order: SCREAMING_CASE constants, then CamelCase classes, then the rest.
    def rank(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert testing.__all__ == sorted(testing.__all__, key=rank)
    assert all(hasattr(testing, name) for name in testing.__all__)
    assert FAKE_API_KEY == "sim-fake-key"


async def test_submit_poll_download_then_expire(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    sim.plan_next(duration=10.0)
    reply = await submit(client, width=1024, height=768)
    assert set(reply) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert reply["cost"] == 3.0
    assert reply["output_mp"] == 0.79
    assert urlsplit(reply["polling_url"]).netloc != urlsplit(sim.config.api_base).netloc

    first = await poll(client, reply["polling_url"])
    assert (first["id"], first["status"], first["progress"]) == (reply["id"], "Pending", 0.0)
    clock.advance(5.0)
    assert (await poll(client, reply["polling_url"]))["progress"] == 0.5
    clock.advance(5.0)
    ready = await poll(client, reply["polling_url"])
    assert ready["status"] == "Ready"
    result = ready["result"]
    assert result["prompt"] == "a red fox"
    assert result["start_time"] == clock.time() - 10.0
    assert result["end_time"] == clock.time()
    assert result["duration"] == 10.0
    assert isinstance(result["seed"], int)
    query = parse_qs(urlsplit(result["sample"]).query)
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(clock.time() + 600)))
    assert query["se"] == [expiry]
    assert (query["sp"], query["sr"], query["rsct"]) == (["r"], ["b"], ["image/jpeg"])

    image = await client.get(result["sample"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"
    assert int(image.headers["content-length"]) == len(image.content) == sim.config.image_bytes
    assert image.content.startswith(JPEG_SOI)
    assert image.content.endswith(b"\xff\xd9")
    assert sim.active_count() == 0

    clock.advance(601.0)
    expired = await client.get(result["sample"])
    assert expired.status_code == 403
    assert expired.headers["content-type"] == "application/xml"
    assert "<Error><Code>AuthenticationFailed</Code>" in expired.text
    assert "Signed expiry time" in expired.text


async def test_delivery_refuses_a_tampered_signature(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    sim.plan_next(duration=1.0)
    reply = await submit(client)
    clock.advance(1.0)
    sample = (await poll(client, reply["polling_url"]))["result"]["sample"]
    later = sample.replace("se=", "se=2099").split("&sig=")[0] + "&sig=AAAA"
    refused = await client.get(later)
    assert refused.status_code == 403
    assert "<Code>AuthenticationFailed</Code>" in refused.text


@pytest.mark.parametrize(
    ("fmt", "content_type", "magic"),
    [("png", "image/png", PNG_SIGNATURE), ("webp", "image/webp", b"RIFF")],
)
async def test_output_format_sets_the_file_type(
    sim: Simulator,
    clock: ManualClock,
    client: httpx.AsyncClient,
    fmt: str,
    content_type: str,
    magic: bytes,
) -> None:
    sim.plan_next(duration=1.0)
    reply = await submit(client, output_format=fmt)
    clock.advance(1.0)
    sample = (await poll(client, reply["polling_url"]))["result"]["sample"]
    assert urlsplit(sample).path.endswith(f"/sample.{fmt}")
    image = await client.get(sample)
    assert image.headers["content-type"] == content_type
    assert image.content.startswith(magic)
    assert len(image.content) == int(image.headers["content-length"]) == sim.config.image_bytes


def image_size(data: bytes) -> tuple[int, int]:
    """Return the width and height an image declares, checking its structure on the way."""
    if data.startswith(PNG_SIGNATURE):
        offset, pixels = 8, b""
        while offset < len(data):
            (length,) = struct.unpack(">I", data[offset : offset + 4])
            kind = data[offset + 4 : offset + 8]
            payload = data[offset + 8 : offset + 8 + length]
            (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
            assert crc == zlib.crc32(kind + payload), kind
            if kind == b"IHDR":
                width, height = struct.unpack(">II", payload[:8])
            pixels += payload if kind == b"IDAT" else b""
            offset += 12 + length
        assert len(zlib.decompress(pixels)) == height * (1 + -(-width // 8))
        return width, height
    if data.startswith(b"RIFF"):
        assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
        vp8l = data.index(b"VP8L") + 8
        bits = int.from_bytes(data[vp8l + 1 : vp8l + 5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    assert data.startswith(JPEG_SOI)
    assert data.endswith(b"\xff\xd9")
    offset = 2
    while data[offset + 1] != 0xC0:  # walk the segments up to the frame header
        assert data[offset] == 0xFF
        offset += 2 + struct.unpack(">H", data[offset + 2 : offset + 4])[0]
    height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
    return width, height


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
async def test_images_have_the_requested_size(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient, fmt: str
) -> None:
    sim.plan_next(duration=1.0)
    reply = await submit(client, width=512, height=256, output_format=fmt)
    clock.advance(1.0)
    sample = (await poll(client, reply["polling_url"]))["result"]["sample"]
    assert image_size((await client.get(sample)).content) == (512, 256)


async def test_range_request_returns_the_slice(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    sim.plan_next(duration=1.0)
    reply = await submit(client)
    clock.advance(1.0)
    sample = (await poll(client, reply["polling_url"]))["result"]["sample"]
    whole = (await client.get(sample)).content
    part = await client.get(sample, headers={"range": "bytes=100-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    assert part.content == whole[100:]
    bad = await client.get(sample, headers={"range": f"bytes={len(whole)}-"})
    assert bad.status_code == 416


async def test_polling_the_submit_host_stays_pending(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    sim.plan_next(duration=1.0)
    reply = await submit(client)
    clock.advance(5.0)
    assert (await poll(client, f"/v1/get_result?id={reply['id']}"))["status"] == "Pending"
    assert (await poll(client, reply["polling_url"]))["status"] == "Ready"
    sim.config.global_poll_pending = False
    assert (await poll(client, f"/v1/get_result?id={reply['id']}"))["status"] == "Ready"


async def test_auth(sim: Simulator, client: httpx.AsyncClient) -> None:
    body = {"prompt": "fox"}
    assert (await client.post("/v1/flux-2-pro", json=body)).status_code == 401
    wrong = await client.post("/v1/flux-2-pro", json=body, headers={"x-key": "sim-wrong-key"})
    assert wrong.status_code == 403
    assert isinstance(wrong.json()["detail"], str)
    assert (await client.get("/v1/credits")).status_code == 401
    reply = await submit(client)
    assert (await client.get(reply["polling_url"])).status_code == 200
    bad_poll = await client.get(reply["polling_url"], headers={"x-key": "sim-wrong-key"})
    assert bad_poll.status_code == 403
    assert sim.active_count() == 1


async def test_credits_run_out_with_402(clock: ManualClock) -> None:
    sim = Simulator(SimulatorConfig(credits=7.0, cost=3.0), clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        await submit(c)
        await submit(c)
        refused = await c.post("/v1/flux-2-pro", json={"prompt": "fox"}, headers=KEY)
        assert refused.status_code == 402
        assert refused.json() == {"detail": "Insufficient credits"}
        assert (await c.get("/v1/credits", headers=KEY)).json() == {"credits": 1.0}
        assert sim.active_count() == 2


async def test_moderated_tasks_are_refunded_when_they_end(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    sim.plan_next(duration=2.0, status="Request Moderated", cost=5.0)
    await submit(client)
    assert sim.credits == 995.0
    clock.advance(2.0)
    assert sim.credits == 1000.0


async def test_active_limit_429_then_free_again(clock: ManualClock) -> None:
    sim = Simulator(SimulatorConfig(active_limit=2), clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        for duration in (5.0, 10.0):
            sim.plan_next(duration=duration)
            await submit(c)
        refused = await c.post("/v1/flux-2-pro", json={"prompt": "fox"}, headers=KEY)
        assert refused.status_code == 429
        assert isinstance(refused.json()["detail"], str)
        assert sim.records.rejected_429 == 1
        clock.advance(5.0)  # the first task ends, whether or not anyone polled it
        assert sim.active_count() == 1
        await submit(c)
        assert sim.records.max_active_seen == 2


async def test_kontext_max_has_its_own_limit(sim: Simulator, client: httpx.AsyncClient) -> None:
    for _ in range(6):
        await submit(client, "flux-kontext-max")
    refused = await client.post("/v1/flux-kontext-max", json={"prompt": "x"}, headers=KEY)
    assert refused.status_code == 429
    await submit(client, "flux-2-pro")
    assert sim.active_count() == 7


@pytest.mark.parametrize(
    ("model", "body", "loc", "kind"),
    [
        ("flux-2-pro", {}, ["body", "prompt"], "missing"),
        (
            "flux-2-pro",
            {"prompt": "x", "safety_tolerance": 6},
            ["body", "safety_tolerance"],
            "less_than_equal",
        ),
        ("flux-2-pro", {"prompt": "x", "width": 1000}, ["body", "width"], "multiple_of"),
        ("flux-2-pro", {"prompt": "x", "height": 32}, ["body", "height"], "greater_than_equal"),
        ("flux-2-pro", {"prompt": "x", "seed": "7"}, ["body", "seed"], "int_type"),
        ("flux-2-pro", {"prompt": "x", "output_format": "gif"}, ["body", "output_format"], "enum"),
        ("flux-pro-1.1", {"prompt": "x", "width": 1472}, ["body", "width"], "less_than_equal"),
        ("flux-2-pro", ["not", "an", "object"], ["body"], "model_attributes_type"),
        (
            "flux-kontext-pro",
            {"prompt": "x", "aspect_ratio": "5:1"},
            ["body", "aspect_ratio"],
            "value_error",
        ),
    ],
)
async def test_validation_errors_have_fastapi_shape(
    sim: Simulator, client: httpx.AsyncClient, model: str, body: Any, loc: list[str], kind: str
) -> None:
    refused = await client.post(f"/v1/{model}", json=body, headers=KEY)
    assert refused.status_code == 422
    (problem,) = refused.json()["detail"]
    assert (problem["loc"], problem["type"]) == (loc, kind)
    assert isinstance(problem["msg"], str)
    assert sim.active_count() == 0


async def test_missing_prompt_detail_is_exact(client: httpx.AsyncClient) -> None:
    refused = await client.post("/v1/flux-2-pro", json={}, headers=KEY)
    assert refused.json() == {
        "detail": [{"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"}]
    }
    broken = await client.post("/v1/flux-2-pro", content=b"{oops", headers=KEY)
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["type"] == "json_invalid"


async def test_unknown_routes(client: httpx.AsyncClient) -> None:
    unknown_model = await client.post("/v1/flux-9-ultra", json={"prompt": "x"}, headers=KEY)
    assert (unknown_model.status_code, unknown_model.json()) == (404, {"detail": "Not Found"})
    assert (await client.get("/v2/anything")).status_code == 404
    assert (await client.get("/v1/flux-2-pro", headers=KEY)).status_code == 405
    missing_id = await client.get("/v1/get_result")
    assert missing_id.status_code == 422
    assert missing_id.json()["detail"][0]["loc"] == ["query", "id"]


@pytest.mark.parametrize(
    ("planned", "details"),
    [
        ("Ready", None),
        ("Request Moderated", dict),
        ("Content Moderated", dict),
        ("Error", None),
        ("Failed", None),
        ("Exploded", None),
    ],
)
async def test_every_planned_status(
    sim: Simulator,
    clock: ManualClock,
    client: httpx.AsyncClient,
    planned: str,
    details: type | None,
) -> None:
    sim.plan_next(duration=3.0, status=planned)
    reply = await submit(client)
    assert (await poll(client, reply["polling_url"]))["status"] == "Pending"
    assert sim.status(reply["id"]) == "Pending"
    clock.advance(3.0)
    for _ in range(2):  # terminal statuses, known or not, stay put
        final = await poll(client, reply["polling_url"])
        assert final["status"] == planned
        assert (final["result"] is not None) == (planned == "Ready")
        assert (type(final["details"]) if details else final["details"]) == details
    assert sim.active_count() == 0


async def test_planned_not_found_is_answered_from_the_start(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    sim.plan_next(duration=3.0, status="Task not found")
    reply = await submit(client)
    assert (await poll(client, reply["polling_url"]))["status"] == "Task not found"
    assert sim.active_count() == 1
    clock.advance(3.0)
    assert (await poll(client, reply["polling_url"]))["status"] == "Task not found"
    assert sim.active_count() == 0


async def test_plans_queue_in_order_and_progress_can_be_off(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    sim.plan_next(duration=1.0, status="Error")
    sim.plan_next(duration=2.0, progress=False)
    first, second = await submit(client), await submit(client)
    assert (await poll(client, second["polling_url"]))["progress"] is None
    clock.advance(2.0)
    assert (await poll(client, first["polling_url"]))["status"] == "Error"
    assert (await poll(client, second["polling_url"]))["status"] == "Ready"
    assert sim.task(second["id"]).duration == 2.0


async def test_unknown_id_and_replication_lag(clock: ManualClock) -> None:
    config = SimulatorConfig(not_found_grace=2.0, not_found_status_code=404)
    sim = Simulator(config, clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        unknown = await c.get(f"{sim.config.poll_base}/v1/get_result?id=nope")
        assert (unknown.status_code, unknown.json()["status"]) == (404, "Task not found")
        sim.plan_next(duration=10.0)
        reply = await submit(c)
        lagging = await c.get(reply["polling_url"])
        assert (lagging.status_code, lagging.json()["status"]) == (404, "Task not found")
        clock.advance(2.0)
        assert (await poll(c, reply["polling_url"]))["status"] == "Pending"


async def test_finished_tasks_are_forgotten_after_retention(clock: ManualClock) -> None:
    sim = Simulator(SimulatorConfig(task_retention=60.0), clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        sim.plan_next(duration=1.0)
        reply = await submit(c)
        await poll(c, reply["polling_url"])
        clock.advance(61.0)
        assert (await poll(c, reply["polling_url"]))["status"] == "Task not found"
        with pytest.raises(KeyError):
            sim.task(reply["id"])


@pytest.mark.parametrize("refresh", [False, True])
async def test_repoll_after_expiry(clock: ManualClock, refresh: bool) -> None:
    sim = Simulator(SimulatorConfig(refresh_url_on_poll=refresh), clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        sim.plan_next(duration=1.0)
        reply = await submit(c)
        clock.advance(1.0)
        old = (await poll(c, reply["polling_url"]))["result"]["sample"]
        clock.advance(700.0)
        new = (await poll(c, reply["polling_url"]))["result"]["sample"]
        assert (new != old) == refresh
        assert (await c.get(new)).status_code == (200 if refresh else 403)


async def test_injected_status_creates_nothing(sim: Simulator, client: httpx.AsyncClient) -> None:
    sim.inject("submit", status=503, retry_after="7", body={"detail": "maintenance"}, times=2)
    for _ in range(2):
        refused = await client.post("/v1/flux-2-pro", json={"prompt": "fox"}, headers=KEY)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "7"
        assert refused.json() == {"detail": "maintenance"}
    assert sim.active_count() == 0
    assert [(r.task_id, r.status) for r in sim.records.submits] == [(None, 503)] * 2
    await submit(client)  # the third request behaves
    sim.inject("credits", status=500)
    assert (await client.get("/v1/credits", headers=KEY)).json() == {
        "detail": "Internal Server Error"
    }


async def test_dropped_submit_raises_and_may_have_created_the_task(
    sim: Simulator, client: httpx.AsyncClient
) -> None:
    sim.inject("submit", drop=True)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await client.post("/v1/flux-2-pro", json={"prompt": "fox"}, headers=KEY)
    assert sim.active_count() == 1
    assert sim.records.submits[-1].task_id is not None


@pytest.mark.parametrize("target", ["poll", "delivery"])
async def test_truncated_body_is_shorter_than_content_length(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient, target: Any
) -> None:
    sim.plan_next(duration=1.0)
    reply = await submit(client)
    clock.advance(1.0)
    url = reply["polling_url"]
    if target == "delivery":
        url = (await poll(client, url))["result"]["sample"]
    sim.inject(target, truncate=True)
    chunks: list[bytes] = []
    async with client.stream("GET", url) as response:
        declared = int(response.headers["content-length"])
        with pytest.raises(httpx.RemoteProtocolError, match=CUT_SHORT):
            await collect(response, chunks)
    assert 0 < sum(map(len, chunks)) < declared


async def test_delay_waits_on_the_simulator_clock(
    sim: Simulator, clock: ManualClock, client: httpx.AsyncClient
) -> None:
    reply = await submit(client)
    sim.inject("poll", delay=30.0)
    answers: list[int] = []

    async def slow_poll() -> None:
        answers.append((await client.get(reply["polling_url"])).status_code)

    async with anyio.create_task_group() as group:
        group.start_soon(slow_poll)
        await anyio.wait_all_tasks_blocked()
        assert answers == []
        clock.advance(30.0)
    assert answers == [200]


async def test_random_fault_rates_are_seeded(clock: ManualClock) -> None:
    async def statuses(seed: int) -> list[int]:
        config = SimulatorConfig(seed=seed, poll_5xx=0.5)
        sim = Simulator(config, clock=clock)
        async with httpx.AsyncClient(transport=sim.transport(), base_url=config.api_base) as c:
            reply = await submit(c)
            return [(await c.get(reply["polling_url"])).status_code for _ in range(30)]

    first = await statuses(1)
    assert first == await statuses(1)
    assert set(first) > {200}
    assert set(first) <= {200, 500, 502, 503}


async def test_random_drops(clock: ManualClock) -> None:
    sim = Simulator(SimulatorConfig(drop_connection=1.0), clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/v1/get_result?id=x")


async def test_same_seed_same_tasks(clock: ManualClock) -> None:
    async def run(seed: int) -> list[tuple[str, int, float]]:
        sim = Simulator(SimulatorConfig(seed=seed), clock=clock)
        async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
            ids = [(await submit(c))["id"] for _ in range(3)]
        return [(i, sim.task(i).seed, sim.task(i).duration) for i in ids]

    assert await run(3) == await run(3)
    assert await run(3) != await run(4)


async def test_records(sim: Simulator, clock: ManualClock, client: httpx.AsyncClient) -> None:
    sim.plan_next(duration=1.0)
    reply = await submit(client, input_image="A" * 10_000)
    clock.advance(1.0)
    await poll(client, reply["polling_url"])
    sample = (await poll(client, reply["polling_url"]))["result"]["sample"]
    await client.get(sample, headers={"user-agent": "probe"})

    record = sim.records.submits[0]
    assert (record.model, record.task_id, record.status) == ("flux-2-pro", reply["id"], 200)
    assert record.headers["x-key"] == FAKE_API_KEY
    assert FAKE_API_KEY not in repr(record)
    assert record.body["input_image"].startswith("<10000 chars, sha256 ")
    assert sim.records.polls_by_task == {reply["id"]: 2}
    (delivery_headers,) = sim.records.delivery_headers
    assert delivery_headers["user-agent"] == "probe"
    assert "x-key" not in delivery_headers
    hosts = [(r.method, r.host, r.path.split("/")[1]) for r in sim.records.requests]
    assert hosts == [
        ("POST", "api.sim.invalid", "v1"),
        ("GET", "api.eu2.sim.invalid", "v1"),
        ("GET", "api.eu2.sim.invalid", "v1"),
        ("GET", "delivery.sim.invalid", "results"),
    ]


async def test_large_bodies_stream_in_bounded_chunks(clock: ManualClock) -> None:
    sim = Simulator(SimulatorConfig(image_bytes=3_000_000, slow_delivery_seconds=4.6), clock=clock)
    sim.plan_next(duration=0.0)
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        sample = (await poll(c, (await submit(c))["polling_url"]))["result"]["sample"]
    url = urlsplit(sample)
    scope = {
        "type": "http",
        "method": "GET",
        "path": url.path,
        "query_string": url.query.encode(),
        "headers": [(b"host", url.netloc.encode())],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async with anyio.create_task_group() as group:
        group.start_soon(sim, scope, receive, send)
        while not sent or sent[-1].get("more_body", True):
            await anyio.wait_all_tasks_blocked()
            clock.advance(0.1)  # the body is paced over 4.6 s of simulator time
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert max(len(b) for b in bodies) <= 65_536
    assert sum(len(b) for b in bodies) == 3_000_000
    assert clock.monotonic() >= 4.6


async def test_lifespan_and_config_checks(sim: Simulator) -> None:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    outbox: list[str] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        outbox.append(message["type"])

    await sim({"type": "lifespan"}, receive, send)
    assert outbox == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    with pytest.raises(ValueError, match="probability"):
        SimulatorConfig(poll_5xx=1.5)
    with pytest.raises(ValueError, match="either"):
        sim.inject("delivery", drop=True, truncate=True)
    with pytest.raises(ValueError, match="unknown target"):
        sim.inject("webhook", status=500)  # type: ignore[arg-type]
    assert FAKE_API_KEY not in repr(sim)
