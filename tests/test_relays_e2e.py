"""Every provider through the same AsyncFlux API against the simulator, in process and on
loopback: generate, generate_many, editing, errors, and where each credential may go.

``bfl`` is BFL itself; ``dmxapi`` the BFL-native relay (its own key, polled keyless on a
BFL host); ``apiyi`` and ``dmxapi-openai`` the synchronous OpenAI-style endpoints (a URL
and a ``b64_json`` reply).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from flux_async import (
    AmbiguousSubmitError,
    APIError,
    AsyncFlux,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    RateLimitError,
    ScaledClock,
    ValidationError,
)
from flux_async._polling._policy import FixedIntervalPolicy
from flux_async._providers import PRESETS, get_preset
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig, serve
from flux_async.testing._images import render

pytestmark = pytest.mark.anyio

REF_URL = "https://static.example.invalid/ref.jpeg"
FAST = {"flux-2-pro": (0.4, 0.3), "flux-kontext-pro": (0.4, 0.3)}
MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"RIFF": "webp"}


@dataclass(frozen=True)
class Relay:
    """How one provider is set up against the simulator."""

    name: str
    model: str
    config: dict[str, Any] = field(default_factory=dict)
    prefix: str = ""  # the path the client's base_url adds (DMXAPI's /flux)
    edits: bool = True  # does the endpoint document reference images?

    @property
    def openai(self) -> bool:
        return get_preset(self.name).dialect == "openai"

    @property
    def key_header(self) -> str:
        return "authorization" if self.openai else "x-key"


RELAYS = [
    Relay("bfl", "flux-2-pro"),
    Relay(
        "dmxapi",
        "flux-2-pro",
        {
            "api_base": "https://www.dmxapi.sim.invalid",
            "poll_base": "https://api.us3.bfl.sim.invalid",
            "api_prefix": "/flux",
            "keyless_poll": True,
        },
        prefix="/flux",
    ),
    Relay("apiyi", "flux-2-pro", {"api_base": "https://api.apiyi.sim.invalid"}),
    Relay(
        "dmxapi-openai",
        "flux-kontext-pro",
        {"api_base": "https://www.dmxapi.sim.invalid", "openai_response": "b64_json"},
        edits=False,
    ),
]


@pytest.fixture(params=RELAYS, ids=[r.name for r in RELAYS])
def relay(request: pytest.FixtureRequest) -> Relay:
    value: Relay = request.param
    return value


def make_sim(relay: Relay, **overrides: Any) -> Simulator:
    config = SimulatorConfig(latency=dict(FAST), **{**relay.config, **overrides})
    return Simulator(config, clock=ScaledClock(40.0))


def client(sim: Simulator, relay: Relay, *, key: str = FAKE_API_KEY, **options: Any) -> AsyncFlux:
    return AsyncFlux(
        api_key=key,
        provider=relay.name,
        base_url=sim.config.api_base + relay.prefix,
        transport=options.pop("transport", sim.transport()),
        clock=sim.clock,
        poll_policy=FixedIntervalPolicy(0.25),
        **options,
    )


@pytest.fixture
def sim(relay: Relay) -> Simulator:
    return make_sim(relay)


@pytest.fixture
async def flux(sim: Simulator, relay: Relay) -> AsyncIterator[AsyncFlux]:
    async with client(sim, relay) as opened:
        yield opened


def host(url: str) -> str:
    return httpx.URL(url).netloc.decode()


def assert_keys_went_only_to_the_api(sim: Simulator, relay: Relay, api_base: str) -> None:
    """The key reached the submit host, and no other host at all."""
    api_host = host(api_base)
    assert sim.keys_seen, "the key was never sent"
    assert {(s.host, s.header, s.configured) for s in sim.keys_seen} == {
        (api_host, relay.key_header, True)
    }
    assert all(not ({"x-key", "authorization"} & set(h)) for h in sim.records.delivery_headers)


def image_kind(path: Path) -> str | None:
    head = path.read_bytes()[:4]
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


# --- generate, generate_many ------------------------------------------------------------


async def test_generate(sim: Simulator, relay: Relay, flux: AsyncFlux, tmp_path: Path) -> None:
    img = await flux.generate("a red fox", model=relay.model, seed=7, output_dir=tmp_path)
    assert img.path.parent == tmp_path
    assert image_kind(img.path) == img.path.suffix.lstrip(".")
    assert img.path.stat().st_size == sim.config.image_bytes == img.size
    assert (img.model, img.prompt, img.seed) == (relay.model, "a red fox", 7)
    submit = sim.records.submits[0]
    assert submit.model == relay.model
    if relay.openai:
        assert submit.body == {"model": relay.model, "prompt": "a red fox", "seed": 7}
        assert img.task_id == submit.task_id  # the relay's x-request-id
        assert not sim.records.polls_by_task  # synchronous: nothing to poll
    else:
        assert submit.body == {"prompt": "a red fox", "seed": 7}
        assert sim.records.polls_by_task[img.task_id] >= 1
    assert_keys_went_only_to_the_api(sim, relay, sim.config.api_base)
    assert flux.statistics().limiter.in_flight == 0


async def test_generate_many(sim: Simulator, relay: Relay, flux: AsyncFlux, tmp_path: Path) -> None:
    items: list[Any] = [f"prompt {i}" for i in range(6)]
    items.insert(2, {"prompt": "too many images", "images": [REF_URL] * 9})
    outcomes = [o async for o in flux.generate_many(items, model=relay.model, output_dir=tmp_path)]
    assert sorted(o.index for o in outcomes) == list(range(7))
    bad = [o for o in outcomes if not o.ok]
    assert [o.index for o in bad] == [2]
    assert isinstance(bad[0].error, ValidationError)
    assert all(o.path is not None and o.path.exists() for o in outcomes if o.ok)
    assert len(sim.records.submits) == 6
    stats = flux.statistics()
    assert (stats.limiter.in_flight, stats.scheduler.pending, stats.downloader.completed) == (
        0,
        0,
        6,
    )


async def test_the_active_limit_covers_synchronous_calls_too(relay: Relay, tmp_path: Path) -> None:
    # The server takes 2 at a time; the client believes 4: its 429s are waited out.
    sim = make_sim(relay, active_limit=2)
    async with client(sim, relay, max_active=4) as flux:
        outcomes = [
            o
            async for o in flux.generate_many(
                ["a", "b", "c", "d", "e"], model=relay.model, output_dir=tmp_path
            )
        ]
    assert all(o.ok for o in outcomes)
    assert sim.records.max_active_seen <= 2


# --- editing ----------------------------------------------------------------------------


async def test_editing_with_a_local_file_and_a_url(
    sim: Simulator, relay: Relay, flux: AsyncFlux, tmp_path: Path
) -> None:
    ref = tmp_path / "ref.png"
    ref.write_bytes(b"".join(render("png", 64, 64, seed=5, target=0).chunks()))
    b64 = base64.b64encode(ref.read_bytes()).decode()
    images: list[Any] = [ref, REF_URL]
    if not relay.edits:
        with pytest.raises(ValidationError) as info:
            await flux.generate("edit", model=relay.model, images=images[:1], output_dir=tmp_path)
        assert info.value.field == "input_image"
        assert "documents only" in info.value.rule
        assert not sim.records.submits  # refused before anything was sent or paid for
        return
    img = await flux.generate("edit", model=relay.model, images=images, output_dir=tmp_path)
    assert img.path.exists()
    body = sim.records.submits[0].body
    expected = f"data:image/png;base64,{b64}" if relay.openai else b64
    assert (body["input_image"], body["input_image_2"]) == (expected, REF_URL)
    # generate_many: each item brings its own images; submit() takes them too.
    items = [
        {"prompt": "edit one", "images": [str(ref)]},
        {"prompt": "edit two", "images": [REF_URL]},
    ]
    outcomes = [o async for o in flux.generate_many(items, model=relay.model, output_dir=tmp_path)]
    assert all(o.ok for o in outcomes)
    task = await flux.submit(prompt="edit three", model=relay.model, images=[ref.read_bytes()])
    assert (await flux.wait(task)).task_id == task.id
    bodies = [s.body for s in sim.records.submits]
    assert sorted(b["input_image"] for b in bodies[1:3]) == sorted([expected, REF_URL])
    assert bodies[3]["input_image"] == expected


async def test_a_bad_reference_fails_before_anything_is_sent(
    sim: Simulator, relay: Relay, flux: AsyncFlux, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(ValidationError) as info:
        await flux.generate(
            "edit", model=relay.model, images=[REF_URL, missing], output_dir=tmp_path
        )
    assert (info.value.field, "no such file" in info.value.rule) == ("images[1]", True)
    assert not sim.records.submits
    assert flux.statistics().limiter.in_flight == 0


# --- errors -----------------------------------------------------------------------------


def refusal(relay: Relay, status: int, message: str) -> Any:
    if relay.openai:
        return {"error": {"message": message, "type": "invalid_request_error", "code": "x"}}
    if status == 422:
        return {"detail": [{"loc": ["body", "prompt"], "msg": message, "type": "value_error"}]}
    return {"detail": message}


async def test_a_wrong_key_is_an_authentication_error(
    sim: Simulator, relay: Relay, tmp_path: Path
) -> None:
    wrong = "sim-fake-key-but-wrong"
    async with client(sim, relay, key=wrong) as flux:
        with pytest.raises(AuthenticationError) as info:
            await flux.generate("a fox", model=relay.model, output_dir=tmp_path)
    assert info.value.status_code in (401, 403)
    assert wrong not in str(info.value)
    assert wrong not in repr(flux)


async def test_out_of_credits_is_a_402(relay: Relay, tmp_path: Path) -> None:
    sim = make_sim(relay, credits=1.0)
    async with client(sim, relay) as flux:
        with pytest.raises(InsufficientCreditsError) as info:
            await flux.generate("a fox", model=relay.model, output_dir=tmp_path)
    assert info.value.status_code == 402


async def test_a_refused_request_is_a_bad_request(
    sim: Simulator, relay: Relay, flux: AsyncFlux, tmp_path: Path
) -> None:
    status = 400 if relay.openai else 422
    sim.inject("submit", status=status, body=refusal(relay, status, "prompt is not allowed"))
    with pytest.raises(BadRequestError, match="prompt is not allowed") as info:
        await flux.generate("a fox", model=relay.model, output_dir=tmp_path)
    assert info.value.status_code == status


async def test_a_429_is_waited_out_and_then_given_up_on(
    sim: Simulator, relay: Relay, tmp_path: Path
) -> None:
    body = refusal(relay, 429, "too many requests")
    sim.inject("submit", status=429, retry_after="1", body=body, times=2)
    async with client(sim, relay) as flux:
        img = await flux.generate("a fox", model=relay.model, output_dir=tmp_path)
    assert img.path.exists()
    assert [s.status for s in sim.records.submits] == [429, 429, 200]
    sim.inject("submit", status=429, retry_after="5", body=body, times=5)
    async with client(sim, relay, rate_limit_timeout=1.0) as flux:
        with pytest.raises(RateLimitError):
            await flux.generate("a fox", model=relay.model, output_dir=tmp_path)


@pytest.mark.parametrize("how", ["500", "dropped", "read timeout"])
async def test_an_ambiguous_failure_is_reported_and_not_replayed(
    sim: Simulator, relay: Relay, tmp_path: Path, how: str
) -> None:
    transport = sim.transport()
    if how == "500":
        sim.inject("submit", status=500, body=refusal(relay, 500, "upstream failed"))
    elif how == "dropped":
        sim.inject("submit", drop=True)  # the relay generated (and billed), then hung up
    else:
        inner = transport

        class TimingOut(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if request.method == "POST":
                    await inner.handle_async_request(request)
                    raise httpx.ReadTimeout("no answer in time", request=request)
                return await inner.handle_async_request(request)

        transport = TimingOut()
    async with client(sim, relay, transport=transport) as flux:
        with pytest.raises(AmbiguousSubmitError) as info:
            await flux.generate("a fox", model=relay.model, output_dir=tmp_path)
        assert flux.statistics().limiter.in_flight == 0
    assert info.value.may_be_billed
    assert len(sim.records.submits) == 1
    assert list(tmp_path.iterdir()) == []


async def test_a_real_read_timeout_on_loopback_is_ambiguous(
    relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = dataclasses.replace(get_preset(relay.name), request_timeout=0.1)
    monkeypatch.setitem(PRESETS, relay.name, fast)
    sim = make_sim(relay)
    sim.inject("submit", delay=12.0)  # 0.3 s of real time at 40x
    async with (
        serve(sim) as base_url,
        AsyncFlux(
            api_key=FAKE_API_KEY,
            provider=relay.name,
            base_url=base_url + relay.prefix,
            clock=sim.clock,
        ) as flux,
    ):
        with pytest.raises(AmbiguousSubmitError, match="ReadTimeout"):
            await flux.generate("a fox", model=relay.model, output_dir=tmp_path)


# --- credentials: never to another host --------------------------------------------------


async def test_the_relay_key_never_reaches_the_bfl_polling_host(tmp_path: Path) -> None:
    relay = RELAYS[1]
    sim = make_sim(relay)
    async with serve(sim) as base_url:
        poll_host = host(sim.config.poll_base)
        assert poll_host != host(base_url)
        async with AsyncFlux(
            api_key=FAKE_API_KEY,
            provider="dmxapi",
            base_url=base_url + "/flux",
            clock=sim.clock,
            poll_policy=FixedIntervalPolicy(0.25),
        ) as flux:
            outcomes = [o async for o in flux.generate_many(["a", "b", "c"], output_dir=tmp_path)]
    assert all(o.ok for o in outcomes)
    polled = {r.host for r in sim.records.requests if r.path == "/v1/get_result"}
    assert polled == {poll_host}
    assert not [s for s in sim.keys_seen if s.host == poll_host]
    assert_keys_went_only_to_the_api(sim, relay, base_url)
    # And the simulator would have refused the key there, as BFL's host would not know it.
    async with httpx.AsyncClient(transport=sim.transport()) as raw:
        answer = await raw.get(
            f"{sim.config.poll_base}/v1/get_result?id=x", headers={"x-key": FAKE_API_KEY}
        )
    assert answer.status_code == 403


@pytest.mark.parametrize("name", ["apiyi", "dmxapi-openai"])
async def test_a_bearer_token_never_follows_a_redirect(name: str, tmp_path: Path) -> None:
    relay = next(r for r in RELAYS if r.name == name)
    sim = make_sim(relay)
    async with serve(sim) as base_url:
        sim.config.openai_redirect = sim.config.poll_base  # the same server, another host name
        async with AsyncFlux(
            api_key=FAKE_API_KEY, provider=name, base_url=base_url, clock=sim.clock
        ) as flux:
            with pytest.raises(APIError) as info:
                await flux.generate("a fox", model=relay.model, output_dir=tmp_path)
    assert info.value.status_code == 307
    other = host(sim.config.poll_base)
    assert [r.host for r in sim.records.requests] == [host(base_url)]
    assert not [s for s in sim.keys_seen if s.host == other]


async def test_over_real_http(relay: Relay, tmp_path: Path) -> None:
    sim = make_sim(relay)
    async with (
        serve(sim) as base_url,
        AsyncFlux(
            api_key=FAKE_API_KEY,
            provider=relay.name,
            base_url=base_url + relay.prefix,
            clock=sim.clock,
            poll_policy=FixedIntervalPolicy(0.25),
        ) as flux,
    ):
        img = await flux.generate("a fox over loopback", model=relay.model, output_dir=tmp_path)
        outcomes = [
            o async for o in flux.generate_many(["a", "b"], model=relay.model, output_dir=tmp_path)
        ]
        api_base = base_url
    assert img.path.stat().st_size == sim.config.image_bytes
    assert all(o.ok for o in outcomes)
    assert_keys_went_only_to_the_api(sim, relay, api_base)


# --- the relay's defaults ---------------------------------------------------------------


async def test_dmxapi_defaults_fit_a_slow_relay(tmp_path: Path) -> None:
    """Generation there "usually takes 60-120 s": the defaults wait long enough, politely."""
    preset = get_preset("dmxapi")
    assert preset.task_timeout >= 600.0
    assert preset.request_timeout >= 60.0
    assert not preset.key_on_poll
    relay = RELAYS[1]
    sim = Simulator(
        SimulatorConfig(**relay.config, latency={"flux-2-pro": (100.0, 0.1)}),
        clock=ScaledClock(2000.0),
    )
    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        provider="dmxapi",
        base_url=sim.config.api_base + "/flux",
        transport=sim.transport(),
        clock=sim.clock,
    ) as flux:
        img = await flux.generate("a slow fox", output_dir=tmp_path)
    assert img.path.exists()
    assert sim.records.polls_by_task[img.task_id] <= 12


# --- the batch command --------------------------------------------------------------------


async def test_a_batch_run(relay: Relay, tmp_path: Path) -> None:
    from flux_async._batching._batch import run_batch

    ref = tmp_path / "ref.png"
    ref.write_bytes(b"".join(render("png", 64, 64, seed=5, target=0).chunks()))
    lines = ['{"prompt": "first"}', '{"prompt": "second"}']
    if relay.edits:
        lines.append('{"prompt": "edited", "images": ["ref.png"]}')
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    sim = make_sim(relay)
    async with client(sim, relay) as flux:
        summary = await run_batch(flux, prompts, tmp_path / "out", model=relay.model)
    assert summary.exit_code == 0
    text = (tmp_path / "out" / "results.jsonl").read_text()
    results = [json.loads(line) for line in text.splitlines()]
    assert [r["status"] for r in results] == ["ok"] * len(lines)
    assert all((tmp_path / "out" / r["path"]).is_file() for r in results)
    if relay.edits:
        body = next(s.body for s in sim.records.submits if s.body["prompt"] == "edited")
        assert body["input_image"].endswith(base64.b64encode(ref.read_bytes()).decode())
    assert_keys_went_only_to_the_api(sim, relay, sim.config.api_base)
