"""The OpenAI-style relay dialect over httpx.MockTransport: bodies, replies, errors, keys."""

from __future__ import annotations

import base64
import hashlib
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from flux_async import (
    AmbiguousSubmitError,
    APIError,
    AsyncFlux,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConnectError,
    DownloadError,
    InsufficientCreditsError,
    RateLimitError,
    ScaledClock,
    ServerError,
    ValidationError,
)
from flux_async._core._clock import ManualClock
from flux_async._engine._download import Downloader
from flux_async._providers import ApiKey, OpenAIProvider, get_preset
from flux_async._request._build import build_request
from flux_async._request._models import Status, Task
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig
from flux_async.testing._images import render

pytestmark = pytest.mark.anyio

KEY = "sim-fake-key-openai-tests"
Handler = Callable[[httpx.Request], httpx.Response]
DELIVERY = "https://delivery-eu.bfl.invalid/results/x/sample.jpeg?se=2026-01-01T00%3A10%3A00Z&sig=s"


def provider(handler: Handler, preset: str = "apiyi") -> OpenAIProvider:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider(http, preset=get_preset(preset), key=ApiKey(KEY), clock=ManualClock())


def url_reply(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={"created": 1_000, "data": [{"url": DELIVERY}]},
        headers={"x-request-id": "req-1"},
    )


class Recorder:
    def __init__(self, answer: Handler = url_reply) -> None:
        self.seen: list[httpx.Request] = []
        self.answer = answer

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return self.answer(request)

    def body(self, index: int = 0) -> object:
        return json.loads(self.seen[index].content)


def png_bytes() -> bytes:
    return b"".join(render("png", 32, 32, seed=1, target=0).chunks())


async def test_apiyi_gets_size_and_only_documented_fields_with_a_bearer_token() -> None:
    rec = Recorder()
    p = provider(rec)
    req = build_request(
        "flux-2-pro", "a fox", width=1024, height=768, seed=7, output_format="png",
        input_image="https://ref.invalid/a.png",
    )  # fmt: skip
    task = await p.submit(req)
    sent = rec.seen[0]
    assert str(sent.url) == "https://api.apiyi.com/v1/images/generations"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert "x-key" not in sent.headers
    assert rec.body() == {
        "model": "flux-2-pro",
        "prompt": "a fox",
        "size": "1024x768",
        "seed": 7,
        "output_format": "png",
        "input_image": "https://ref.invalid/a.png",
    }
    assert (task.id, task.polling_url, task.provider, task.model) == (
        "req-1",
        None,
        "apiyi",
        "flux-2-pro",
    )
    assert task.immediate is not None
    assert task.immediate.status == Status.READY
    sample = task.immediate.sample()
    assert sample is not None
    assert (sample.sample, sample.seed, sample.end_time) == (DELIVERY, 7, 1_000.0)
    assert await p.poll(task) is task.immediate
    assert KEY not in repr(p)
    # The Bearer token is per request, never a default of the (shared) client.
    assert "authorization" not in p._http.headers


async def test_apiyi_keeps_aspect_ratio_and_sends_a_lone_side_as_itself() -> None:
    rec = Recorder()
    p = provider(rec)
    await p.submit(build_request("flux-kontext-pro", "a fox", aspect_ratio="16:9"))
    await p.submit(build_request("flux-2-pro", "a fox", width=512))
    assert rec.body(0) == {"model": "flux-kontext-pro", "prompt": "a fox", "aspect_ratio": "16:9"}
    assert rec.body(1) == {"model": "flux-2-pro", "prompt": "a fox", "width": 512}
    with pytest.raises(ValidationError, match="from 64 to 2048"):
        await p.submit(build_request("flux-2-pro", "a fox", width=2560))
    assert len(rec.seen) == 2


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"output_format": "webp"}, "output_format", "serves jpeg or png"),
        ({"webhook_url": "https://hooks.invalid/x"}, "webhook_url", "documents only"),
    ],
)
async def test_apiyi_refuses_what_it_does_not_document(
    fields: dict[str, object], field: str, rule: str
) -> None:
    rec = Recorder()
    with pytest.raises(ValidationError, match=rule) as info:
        await provider(rec).submit(build_request("flux-2-pro", "a fox", **fields))
    assert info.value.field == field
    assert rec.seen == []


async def test_models_a_relay_does_not_serve_fail_before_sending() -> None:
    rec = Recorder()
    with pytest.raises(ValidationError, match="not served by provider 'apiyi'") as info:
        await provider(rec).submit(build_request("flux-pro-1.0-fill", image="https://x.invalid/a"))
    assert info.value.field == "model"
    with pytest.raises(ValidationError, match="flux-kontext-max, flux-kontext-pro"):
        await provider(rec, "dmxapi-openai").submit(build_request("flux-2-pro", "a fox"))
    assert rec.seen == []


@pytest.mark.parametrize(
    ("ratio", "size"),
    [("16:9", "16x9"), ("3:4", "3x4"), ("1:1", "1x1"), ("21:9", "1568x672")],
)
async def test_dmxapi_openai_sends_ratio_sizes_and_pixels_for_others(ratio: str, size: str) -> None:
    rec = Recorder()
    p = provider(rec, "dmxapi-openai")
    await p.submit(build_request("flux-kontext-pro", "a shop sign", aspect_ratio=ratio, seed=5))
    assert str(rec.seen[0].url) == "https://www.dmxapi.cn/v1/images/generations"
    assert rec.body() == {
        "model": "flux-kontext-pro",
        "prompt": "a shop sign",
        "size": size,
        "seed": 5,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"input_image": "https://ref.invalid/a.png"},
        {"output_format": "png"},
        {"prompt_upsampling": True},
    ],
)
async def test_dmxapi_openai_documents_only_model_prompt_size_seed(
    fields: dict[str, object],
) -> None:
    rec = Recorder()
    with pytest.raises(ValidationError, match="documents only model, prompt, seed, size"):
        await provider(rec, "dmxapi-openai").submit(
            build_request("flux-kontext-pro", "a fox", **fields)
        )
    assert rec.seen == []


async def test_b64_json_becomes_a_data_url_of_the_sniffed_type() -> None:
    image = png_bytes()

    def b64_reply(request: httpx.Request) -> httpx.Response:
        item = {"b64_json": base64.b64encode(image).decode(), "seed": 99}
        return httpx.Response(200, json={"data": [item]})

    p = provider(Recorder(b64_reply), "dmxapi-openai")
    task = await p.submit(build_request("flux-kontext-pro", "a fox"))
    sample = task.immediate.sample() if task.immediate else None
    assert sample is not None
    assert sample.sample is not None
    assert sample.sample.startswith("data:image/png;base64,")
    assert base64.b64decode(sample.sample.split(",", 1)[1]) == image
    assert sample.seed == 99
    assert task.id.startswith("dmxapi-openai-")
    assert "b64_json" not in json.dumps(task.reply)


async def test_raw_base64_reference_fields_are_sent_as_data_urls() -> None:
    rec = Recorder()
    raw = base64.b64encode(png_bytes()).decode()
    await provider(rec).submit(build_request("flux-2-pro", "edit", input_image=raw))
    assert rec.body()["input_image"] == f"data:image/png;base64,{raw}"  # type: ignore[index]
    with pytest.raises(ValidationError, match="base64 of a PNG"):
        await provider(rec).submit(build_request("flux-2-pro", "edit", input_image="cat.png"))


@pytest.mark.parametrize(
    "payload",
    [{"data": []}, {"created": 1}, {"error": {"message": "upstream busy"}}, "not json"],
)
async def test_a_2xx_without_an_image_is_ambiguous(payload: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(payload, str):
            return httpx.Response(200, text=payload)
        return httpx.Response(200, json=payload)

    with pytest.raises(AmbiguousSubmitError) as info:
        await provider(handler).submit(build_request("flux-2-pro", "a fox"))
    assert info.value.may_be_billed


def openai_error(status: int, message: str, code: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
        return httpx.Response(status, json=body, headers={"retry-after": "2"})

    return handler


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (429, RateLimitError),
        (500, AmbiguousSubmitError),
        (502, AmbiguousSubmitError),
        (503, ServerError),
        (307, APIError),
    ],
)
async def test_openai_error_shapes_map_to_the_exception_tree(
    status: int, error: type[Exception]
) -> None:
    p = provider(openai_error(status, "size 1000x1000 is not a multiple of 16", "bad"))
    with pytest.raises(error) as info:
        await p.submit(build_request("flux-2-pro", "a fox"))
    if error is not AmbiguousSubmitError:
        assert "multiple of 16" in str(info.value)
    if error is RateLimitError:
        assert info.value.retry_after == 2.0  # type: ignore[attr-defined]
    assert KEY not in str(info.value)


async def test_bfl_detail_shapes_are_understood_too() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        detail = [{"loc": ["body", "width"], "msg": "must be a multiple of 16", "type": "x"}]
        return httpx.Response(422, json={"detail": detail})

    with pytest.raises(BadRequestError, match="width: must be a multiple of 16"):
        await provider(handler).submit(build_request("flux-2-pro", "a fox"))


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (httpx.ReadTimeout("slow"), AmbiguousSubmitError),
        (httpx.RemoteProtocolError("dropped"), AmbiguousSubmitError),
        (httpx.ConnectError("refused"), ConnectError),
    ],
)
async def test_transport_failures_after_sending_may_have_been_billed(
    exc: Exception, error: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(error):
        await provider(handler).submit(build_request("flux-2-pro", "a fox"))


async def test_the_read_timeout_is_minutes_and_redirects_are_not_followed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(307, headers={"location": "https://elsewhere.invalid/v1/x"})

    p = provider(handler)
    with pytest.raises(APIError) as info:
        await p.submit(build_request("flux-2-pro", "a fox"))
    assert info.value.status_code == 307
    assert len(seen) == 1
    assert seen[0].extensions["timeout"]["read"] == get_preset("apiyi").request_timeout >= 120.0


async def test_poll_without_a_reply_and_credits() -> None:
    p = provider(url_reply)
    lost = Task(id="t", polling_url=None, model="flux-2-pro", provider="apiyi")
    assert (await p.poll(lost)).status == Status.NOT_FOUND
    with pytest.raises(ConfigurationError, match="no credit-balance endpoint"):
        await p.credits()


# --- saving an inline (data: URL) image: decoded in chunks straight to disk -------------


def downloader(handler: Handler, chunk_size: int = 1024) -> Downloader:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Downloader(http, clock=ManualClock(), chunk_size=chunk_size)


@pytest.mark.parametrize("padding", [True, False])
async def test_a_data_url_is_decoded_to_disk_in_chunks(tmp_path: Path, padding: bool) -> None:
    image = b"".join(render("png", 64, 64, seed=2, target=10_001).chunks())
    b64 = base64.b64encode(image).decode()
    if not padding:
        b64 = b64.rstrip("=")
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500)

    loader = downloader(refuse, chunk_size=999)
    saved = await loader.download(f"data:image/png;base64,{b64}", tmp_path / "fox", deadline=1e12)
    assert saved.path == tmp_path / "fox.png"
    assert saved.path.read_bytes() == image
    assert saved.sha256 == hashlib.sha256(image).hexdigest()
    assert seen == []  # no request at all
    assert [p.name for p in tmp_path.iterdir()] == ["fox.png"]


async def test_a_corrupt_data_url_leaves_no_file_and_no_image_in_the_error(
    tmp_path: Path,
) -> None:
    head = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(3000)).decode()
    url = "data:image/png;base64," + head + "!!!!"
    with pytest.raises(DownloadError) as info:
        await downloader(url_reply).download(url, tmp_path / "fox", deadline=1e12)
    assert "corrupt" in str(info.value)
    assert "AAAA" not in str(info.value)
    assert info.value.url is not None
    assert "chars>" in info.value.url
    assert list(tmp_path.iterdir()) == []


async def test_an_inline_image_is_never_decoded_whole(tmp_path: Path) -> None:
    image = b"".join(render("png", 64, 64, seed=4, target=3_000_000).chunks())
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    loader = downloader(url_reply, chunk_size=64 * 1024)
    tracemalloc.start()
    try:
        saved = await loader.download(url, tmp_path / "big", deadline=1e12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert saved.size == len(image)
    # Chunks of 64 KiB: far below one copy of the 3 MB image (let alone two).
    assert peak < len(image) // 4


# --- the simulator's OpenAI-style route, spoken to directly -----------------------------


async def sim_post(
    sim: Simulator, body: object, headers: dict[str, str] | None = None
) -> httpx.Response:
    auth = {"authorization": f"Bearer {FAKE_API_KEY}"} if headers is None else headers
    async with httpx.AsyncClient(transport=sim.transport()) as http:
        return await http.post(
            f"{sim.config.api_base}/v1/images/generations", json=body, headers=auth
        )


BASE = {"model": "flux-2-pro", "prompt": "x"}
BEARER = {"authorization": f"Bearer {FAKE_API_KEY}"}


@pytest.mark.parametrize(
    ("extra", "headers", "status", "code"),
    [
        ({}, {}, 401, "missing_api_key"),
        ({}, {"x-key": FAKE_API_KEY}, 401, "missing_api_key"),
        ({}, {"authorization": "Bearer nope"}, 401, "invalid_api_key"),
        ({"webhook_url": "https://h.invalid"}, BEARER, 400, "unknown_parameter"),
        ({"model": "flux-9"}, BEARER, 400, "model_not_found"),
        ({"n": 2}, BEARER, 400, "invalid_value"),
        ({"size": "1000x1000"}, BEARER, 400, "invalid_value"),
        ({"size": "big"}, BEARER, 400, "invalid_value"),
        ({"input_image": "cat.png"}, BEARER, 400, "invalid_image"),
        ({"prompt": ""}, BEARER, 400, "invalid_value"),
    ],
)
async def test_the_simulated_relay_refuses_in_openai_shape(
    extra: dict[str, object], headers: dict[str, str], status: int, code: str
) -> None:
    sim = Simulator(SimulatorConfig(), clock=ScaledClock(1000.0))
    answer = await sim_post(sim, {**BASE, **extra}, headers)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert sim.records.submits[-1].status == status
    assert not sim.records.submits[-1].task_id


@pytest.mark.parametrize(
    ("size", "shape"), [("16x9", (1360, 768)), ("1024x512", (1024, 512)), (None, (1024, 1024))]
)
async def test_the_simulated_relay_reads_sizes_and_answers_inline(
    size: str | None, shape: tuple[int, int]
) -> None:
    sim = Simulator(SimulatorConfig(openai_response="b64_json"), clock=ScaledClock(1000.0))
    body = {"model": "flux-2-pro", "prompt": "x", "seed": -1, "n": 1}
    if size is not None:
        body["size"] = size
    answer = await sim_post(sim, body)
    assert answer.status_code == 200
    item = answer.json()["data"][0]
    task = sim.task(answer.headers["x-request-id"])
    assert (task.width, task.height) == shape
    assert item["seed"] == task.seed  # -1 asked for a random one
    image = base64.b64decode(item["b64_json"])
    assert image[:3] == b"\xff\xd8\xff"
    assert len(image) == sim.config.image_bytes


@pytest.mark.parametrize(
    ("default", "asked", "key"),
    [("url", "b64_json", "b64_json"), ("b64_json", "url", "url"), ("b64_json", None, "b64_json")],
)
async def test_the_simulated_relay_honours_response_format(
    default: str, asked: str | None, key: str
) -> None:
    sim = Simulator(SimulatorConfig(openai_response=default), clock=ScaledClock(1000.0))
    body = {"model": "flux-2-pro", "prompt": "x"}
    if asked is not None:
        body["response_format"] = asked
    answer = await sim_post(sim, body)
    assert answer.status_code == 200
    assert list(answer.json()["data"][0]) == [key, "seed"]


async def test_the_simulated_relay_refuses_an_unknown_response_format() -> None:
    sim = Simulator(SimulatorConfig(), clock=ScaledClock(1000.0))
    answer = await sim_post(sim, {"model": "flux-2-pro", "prompt": "x", "response_format": "png"})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == (
        "response_format must be 'url' or 'b64_json', got 'png'."
    )


@pytest.mark.parametrize(
    ("outcome", "status", "error"),
    [("Content Moderated", 400, BadRequestError), ("Error", 500, AmbiguousSubmitError)],
)
async def test_a_failed_generation_on_the_simulated_relay(
    outcome: str, status: int, error: type[Exception], tmp_path: Path
) -> None:
    sim = Simulator(
        SimulatorConfig(api_base="https://api.apiyi.sim.invalid"), clock=ScaledClock(1000.0)
    )
    sim.plan_next(duration=1.0, status=outcome)
    async with AsyncFlux(
        api_key=FAKE_API_KEY, provider="apiyi", base_url=sim.config.api_base,
        transport=sim.transport(), clock=sim.clock,
    ) as flux:  # fmt: skip
        with pytest.raises(error):
            await flux.generate("a fox", output_dir=tmp_path)
    assert sim.records.submits[0].status == status
