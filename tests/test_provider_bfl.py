"""The BFL dialect over httpx.MockTransport: URLs, where the key goes, error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from flux_async import (
    AmbiguousSubmitError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConnectError,
    InsufficientCreditsError,
    MalformedReplyError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)
from flux_async._core._clock import ManualClock
from flux_async._errors import APIError
from flux_async._providers import ApiKey, BFLProvider, get_preset, make_provider, resolve_api_key
from flux_async._request._build import build_request
from flux_async._request._models import Task

pytestmark = pytest.mark.anyio

KEY = "sim-fake-key-provider-tests"
Handler = Callable[[httpx.Request], httpx.Response]


def provider(handler: Handler, preset: str = "bfl", base_url: str | None = None) -> BFLProvider:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return BFLProvider(
        http, preset=get_preset(preset), key=ApiKey(KEY), clock=ManualClock(), base_url=base_url
    )


def task(polling_url: str | None) -> Task:
    return Task(id="abc", polling_url=polling_url, model="flux-2-pro", provider="bfl")


async def test_submit_posts_the_body_with_the_key_and_reads_the_reply() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "abc",
                "polling_url": "https://api.eu2.bfl.ai/v1/get_result?id=abc",
                "cost": 3.0,
                "surprise": True,
            },
        )

    p = provider(handler)
    req = build_request("flux-2-pro", "a red fox", width=1024, height=768, seed=7)
    t = await p.submit(req)
    assert str(seen[0].url) == "https://api.bfl.ai/v1/flux-2-pro"
    assert seen[0].headers["x-key"] == KEY
    assert json.loads(seen[0].content) == {
        "prompt": "a red fox",
        "width": 1024,
        "height": 768,
        "seed": 7,
    }
    assert (t.id, t.cost, t.model, t.prompt) == ("abc", 3.0, "flux-2-pro", "a red fox")
    assert t.polling_url == "https://api.eu2.bfl.ai/v1/get_result?id=abc"
    assert t.reply["surprise"] is True
    assert KEY not in repr(p)


@pytest.mark.parametrize(
    ("preset", "polling_url", "expect_key"),
    [
        ("bfl", "https://api.eu2.bfl.ai/v1/get_result?id=abc", True),
        ("bfl", "https://api.bfl.ai/v1/get_result?id=abc", True),
        ("bfl", "http://api.eu2.bfl.ai/v1/get_result?id=abc", False),  # never in clear text
        ("bfl", "https://evil.example/v1/get_result?id=abc", False),
        ("bfl", "https://api.bfl.ai.evil.example/v1/get_result?id=abc", False),
        ("dmxapi", "https://api.us3.bfl.ai/v1/get_result?id=abc", False),  # relay key stays home
        ("dmxapi", "https://www.dmxapi.cn/flux/v1/get_result?id=abc", True),
    ],
)
async def test_the_key_goes_only_to_trusted_polling_hosts(
    preset: str, polling_url: str, expect_key: bool
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "abc", "status": "Pending", "progress": 0.5})

    reply = await provider(handler, preset).poll(task(polling_url))
    assert reply.status == "Pending"
    assert reply.progress == 0.5
    assert str(seen[0].url) == polling_url
    assert ("x-key" in seen[0].headers) is expect_key


async def test_poll_falls_back_to_get_result_when_no_polling_url() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(
            200, json={"id": "abc", "status": "Ready", "result": {"sample": "https://d/x"}}
        )

    p = provider(handler, base_url="https://proxy.example/")
    for url in (None, "ftp://weird/x"):
        await p.poll(task(url))
    assert seen == ["https://proxy.example/v1/get_result?id=abc"] * 2


@pytest.mark.parametrize(
    ("status", "body", "error", "phase"),
    [
        (400, {"detail": "bad"}, BadRequestError, "submit"),
        (
            422,
            {"detail": [{"loc": ["body", "width"], "msg": "too big", "type": "x"}]},
            BadRequestError,
            "submit",
        ),
        (401, {"detail": "no key"}, AuthenticationError, "submit"),
        (403, "<Error/>", AuthenticationError, "submit"),
        (402, {"detail": "Insufficient credits"}, InsufficientCreditsError, "submit"),
        (429, {"detail": "too many"}, RateLimitError, "submit"),
        (503, {"detail": "maintenance"}, ServerError, "submit"),
        (500, {"detail": "boom"}, AmbiguousSubmitError, "submit"),
        (502, "bad gateway", AmbiguousSubmitError, "submit"),
        (504, "", AmbiguousSubmitError, "submit"),
        (500, {"error": {"message": "boom"}}, ServerError, "poll"),
        (418, {"message": "teapot"}, APIError, "poll"),
    ],
)
async def test_http_errors_map_onto_the_tree(
    status: int, body: object, error: type[Exception], phase: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"x-request-id": "req-1", "retry-after": "7"}
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    p = provider(handler)
    with pytest.raises(error) as info:
        if phase == "submit":
            await p.submit(build_request("flux-2-pro", "x"))
        else:
            await p.poll(task("https://api.eu2.bfl.ai/v1/get_result?id=abc"))
    exc = info.value
    assert getattr(exc, "status_code", None) == status
    assert KEY not in str(exc)
    if isinstance(exc, APIError):
        assert exc.request_id == "req-1"
    if isinstance(exc, RateLimitError):
        assert exc.retry_after == 7.0
    if status == 422:
        assert "width: too big" in str(exc)
        assert isinstance(exc, BadRequestError)
        assert exc.detail[0]["msg"] == "too big"
    if isinstance(exc, AmbiguousSubmitError):
        assert exc.may_be_billed
        assert "may have been created and billed" in str(exc)


@pytest.mark.parametrize(
    ("exc", "phase", "error"),
    [
        (httpx.ConnectError("refused"), "submit", ConnectError),
        (httpx.ConnectTimeout("slow"), "submit", ConnectError),
        (httpx.PoolTimeout("full"), "submit", RequestTimeoutError),
        (httpx.ReadTimeout("slow"), "submit", AmbiguousSubmitError),
        (httpx.RemoteProtocolError("dropped"), "submit", AmbiguousSubmitError),
        (httpx.WriteError("broken"), "submit", AmbiguousSubmitError),
        (httpx.ReadTimeout("slow"), "poll", RequestTimeoutError),
        (httpx.ReadError("reset"), "poll", TransportError),
    ],
)
async def test_transport_errors_say_whether_a_submit_may_have_been_billed(
    exc: httpx.TransportError, phase: str, error: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    p = provider(handler)
    with pytest.raises(error) as info:
        if phase == "submit":
            await p.submit(build_request("flux-2-pro", "x"))
        else:
            await p.poll(task("https://api.eu2.bfl.ai/v1/get_result?id=abc"))
    assert info.value.__cause__ is exc


async def test_unreadable_replies() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>proxy page</html>")

    p = provider(handler)
    with pytest.raises(AmbiguousSubmitError, match="not JSON: b'<html>proxy page"):
        await p.submit(build_request("flux-2-pro", "x"))
    with pytest.raises(MalformedReplyError, match="malformed poll reply: not JSON") as polled:
        await p.poll(task(None))
    assert polled.value.task_id is not None
    with pytest.raises(MalformedReplyError, match="malformed credits reply"):
        await p.credits()


async def test_credits() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/credits"
        assert request.headers["x-key"] == KEY
        return httpx.Response(200, json={"credits": 1234.5})

    assert await provider(handler, "bfl-eu").credits() == 1234.5


def test_presets_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="known providers: apiyi, bfl"):
        get_preset("nope")
    monkeypatch.delenv("BFL_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="BFL_API_KEY"):
        resolve_api_key(None, get_preset("bfl"))
    monkeypatch.setenv("DMXAPI_API_KEY", "sim-fake-key-from-env")
    key = resolve_api_key(None, get_preset("dmxapi"))
    assert key.reveal() == "sim-fake-key-from-env"
    assert "sim-fake-key-from-env" not in repr(key) + str(key)
    assert resolve_api_key(key, get_preset("bfl")) is key
    assert key == ApiKey("sim-fake-key-from-env")
    assert len({key, ApiKey("sim-fake-key-from-env")}) == 1
    with pytest.raises(ConfigurationError):
        ApiKey(" padded ")
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(key)
    with pytest.raises(ValueError, match="base_url"):
        BFLProvider(
            httpx.AsyncClient(),
            preset=get_preset("bfl"),
            key=key,
            clock=ManualClock(),
            base_url="nope",
        )


async def test_make_provider_dispatches_on_the_dialect() -> None:
    async with httpx.AsyncClient() as http:
        made = make_provider(get_preset("apiyi"), http, key=ApiKey(KEY), clock=ManualClock())
        assert type(made).__name__ == "OpenAIProvider"
        assert isinstance(
            make_provider(get_preset("dmxapi"), http, key=ApiKey(KEY), clock=ManualClock()),
            BFLProvider,
        )
