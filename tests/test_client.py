"""AsyncFlux end to end against the simulator, in process (httpx transport) and on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

from flux_async import (
    AmbiguousSubmitError,
    APIError,
    AsyncFlux,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    FluxError,
    GenerationError,
    IncompleteDownloadError,
    InsufficientCreditsError,
    ModerationError,
    Outcome,
    ResultExpiredError,
    ScaledClock,
    TaskNotFoundError,
    UnknownStatusError,
    ValidationError,
    build_request,
)
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig, serve

pytestmark = pytest.mark.anyio

FAST = dict.fromkeys(("flux-2-pro", "flux-2-klein-4b", "flux-kontext-max", "flux-dev"), (0.4, 0.3))


def make_sim(**config: object) -> Simulator:
    clock = ScaledClock(40.0)
    cfg = SimulatorConfig(latency=dict(FAST), **config)  # type: ignore[arg-type]
    return Simulator(cfg, clock=clock)


def client(sim: Simulator, **options: object) -> AsyncFlux:
    return AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=sim.config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def sim() -> Simulator:
    return make_sim()


@pytest.fixture
async def flux(sim: Simulator) -> AsyncIterator[AsyncFlux]:
    async with client(sim) as opened:
        yield opened


def no_credentials(headers: dict[str, str]) -> bool:
    lowered = {k.lower() for k in headers}
    return not lowered & {"x-key", "authorization", "x-api-key", "api-key"}


async def test_generate_saves_a_valid_image_and_reports_it(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    img = await flux.generate(
        "a red fox", model="flux-2-pro", width=1024, height=768, seed=7, output_dir=tmp_path
    )
    assert img.path.parent == tmp_path
    assert img.path.suffix == ".jpeg"
    data = img.path.read_bytes()
    assert data[:2] == b"\xff\xd8"
    assert img.size == len(data) == sim.config.image_bytes
    assert (img.task_id, img.model, img.prompt, img.seed, img.cost) == (
        img.task_id,
        "flux-2-pro",
        "a red fox",
        7,
        3.0,
    )
    submit = sim.records.submits[0]
    assert submit.body == {"prompt": "a red fox", "width": 1024, "height": 768, "seed": 7}
    assert submit.headers["x-key"] == FAKE_API_KEY
    assert sim.records.delivery_headers
    assert all(no_credentials(h) for h in sim.records.delivery_headers)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


async def test_output_format_and_filename_pick_the_file_name(
    flux: AsyncFlux, tmp_path: Path
) -> None:
    img = await flux.generate("a fox", output_format="png", output_dir=tmp_path, filename="fox")
    assert img.path == tmp_path / "fox.png"
    assert img.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_submit_wait_save_step_by_step(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    task = await flux.submit(build_request("flux-2-pro", "a fox", seed=3))
    assert task.polling_url is not None
    assert httpx.URL(task.polling_url).host != httpx.URL(sim.config.api_base).host
    result = await flux.wait(task)
    assert result.task_id == task.id
    assert "sig=" not in repr(result)
    path = await flux.save(result, tmp_path / "fox.jpeg")
    assert path == tmp_path / "fox.jpeg"
    assert path.stat().st_size == sim.config.image_bytes
    # Fields form of submit, and a folder as the save target.
    task2 = await flux.submit(prompt="a second fox", model="flux-2-klein-4b")
    saved = await flux.save(await flux.wait(task2), tmp_path)
    assert saved.parent == tmp_path
    assert saved.name.startswith(task2.id)


async def test_bad_requests_fail_before_anything_is_sent(sim: Simulator, flux: AsyncFlux) -> None:
    with pytest.raises(ValidationError) as info:
        await flux.generate("a fox", model="flux-2-pro", width=1000)
    assert info.value.field == "width"
    assert "multiple of 16" in str(info.value)
    with pytest.raises(ConfigurationError, match="flux-9"):
        await flux.generate("a fox", model="flux-9")
    assert not sim.records.submits


async def test_generate_many_yields_each_outcome_and_one_bad_item_fails_alone(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    items: list[object] = [f"prompt {i}" for i in range(10)]
    items.insert(3, {"prompt": "too wide", "width": 1000})
    items.insert(5, build_request("flux-2-klein-4b", "a klein item"))
    outcomes: list[Outcome] = [
        o
        async for o in flux.generate_many(items, output_dir=tmp_path, seed=1)  # type: ignore[arg-type]
    ]
    assert sorted(o.index for o in outcomes) == list(range(12))
    bad = [o for o in outcomes if not o.ok]
    assert [o.index for o in bad] == [3]
    assert isinstance(bad[0].error, ValidationError)
    assert bad[0].prompt == "too wide"
    assert not bad[0].may_be_billed
    good = [o for o in outcomes if o.ok]
    assert all(o.path is not None and o.path.exists() for o in good)
    assert len(sim.records.submits) == 11
    stats = flux.statistics()
    assert stats.limiter.in_flight == 0
    assert stats.scheduler.pending == 0
    assert stats.downloader.completed == 11


async def test_generate_many_stops_cleanly_when_the_consumer_leaves(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    agen = flux.generate_many([f"p{i}" for i in range(30)], output_dir=tmp_path)
    first = await agen.__anext__()
    await agen.aclose()
    assert first.index >= 0
    # Tasks already submitted keep their slots until they end on the server.
    with anyio.fail_after(10):
        while flux.statistics().limiter.in_flight:  # noqa: ASYNC110 - server time passes
            await anyio.sleep(0.01)


async def test_a_429_waits_and_resubmits(sim: Simulator, flux: AsyncFlux, tmp_path: Path) -> None:
    sim.inject("submit", status=429, retry_after="1", times=2)
    img = await flux.generate("a fox", output_dir=tmp_path)
    statuses = [s.status for s in sim.records.submits]
    assert statuses == [429, 429, 200]
    assert img.path.exists()
    assert flux.statistics().limiter.rate_limited_total == 2


async def test_an_ambiguous_submit_is_not_replayed(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    sim.inject("submit", drop=True)  # the server made (and billed) the task, then dropped us
    with pytest.raises(AmbiguousSubmitError) as info:
        await flux.generate("a fox", output_dir=tmp_path)
    assert info.value.may_be_billed
    assert len(sim.records.submits) == 1
    assert sim.records.submits[0].task_id is not None
    sim.inject("submit", status=502)
    with pytest.raises(AmbiguousSubmitError):
        await flux.generate("a fox", output_dir=tmp_path)
    assert len(sim.records.submits) == 2
    assert flux.statistics().limiter.in_flight == 0


async def test_retry_ambiguous_opts_in_to_replaying(sim: Simulator, tmp_path: Path) -> None:
    sim.inject("submit", status=500)
    async with client(sim, retry_ambiguous=True) as flux:
        img = await flux.generate("a fox", output_dir=tmp_path)
    assert img.path.exists()
    assert [s.status for s in sim.records.submits] == [500, 200]


async def test_a_503_at_the_door_is_retried(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    sim.inject("submit", status=503)
    await flux.generate("a fox", output_dir=tmp_path)
    assert [s.status for s in sim.records.submits] == [503, 200]


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (402, {"detail": "Insufficient credits"}, InsufficientCreditsError),
        (
            422,
            {"detail": [{"loc": ["body", "prompt"], "msg": "bad prompt", "type": "x"}]},
            BadRequestError,
        ),
        (401, {"detail": "Not authenticated"}, AuthenticationError),
    ],
)
async def test_submit_errors_reach_the_caller(
    sim: Simulator,
    flux: AsyncFlux,
    tmp_path: Path,
    status: int,
    body: object,
    error: type[Exception],
) -> None:
    sim.inject("submit", status=status, body=body)
    with pytest.raises(error) as info:
        await flux.generate("a fox", output_dir=tmp_path)
    assert getattr(info.value, "status_code", None) == status
    assert FAKE_API_KEY not in str(info.value)
    assert flux.statistics().limiter.in_flight == 0


async def test_running_out_of_credits_is_a_402(tmp_path: Path) -> None:
    sim = make_sim(credits=4.0)
    async with client(sim) as flux:
        await flux.generate("one", output_dir=tmp_path)
        assert await flux.credits() == pytest.approx(1.0)
        with pytest.raises(InsufficientCreditsError):
            await flux.generate("two", output_dir=tmp_path)


async def test_a_wrong_key_is_an_authentication_error(sim: Simulator, tmp_path: Path) -> None:
    wrong = "sim-fake-key-but-wrong"
    async with AsyncFlux(
        api_key=wrong, base_url=sim.config.api_base, transport=sim.transport(), clock=sim.clock
    ) as flux:
        assert wrong not in repr(flux)
        with pytest.raises(AuthenticationError) as info:
            await flux.generate("a fox", output_dir=tmp_path)
    assert wrong not in str(info.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("Request Moderated", ModerationError),
        ("Content Moderated", ModerationError),
        ("Error", GenerationError),
        ("Failed", GenerationError),
        ("Task not found", TaskNotFoundError),
        ("Exploded", UnknownStatusError),
    ],
)
async def test_every_terminal_status_ends_the_wait(
    sim: Simulator, tmp_path: Path, status: str, error: type[FluxError]
) -> None:
    sim.plan_next(duration=0.2, status=status)
    async with client(sim, task_timeout=600.0) as flux:
        flux._scheduler._not_found_grace = 2.0  # type: ignore[union-attr]
        flux._scheduler._unknown_tolerance = 5.0  # type: ignore[union-attr]
        with pytest.raises(error) as info:
            await flux.generate("a fox", output_dir=tmp_path)
        assert info.value.task_id is not None
        assert flux.statistics().limiter.in_flight == 0
    assert list(tmp_path.iterdir()) == []


async def test_a_truncated_download_leaves_no_file(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    sim.inject("delivery", truncate=True, times=100)
    with pytest.raises(IncompleteDownloadError):
        await flux.generate("a fox", output_dir=tmp_path, filename="fox")
    assert list(tmp_path.iterdir()) == []


async def test_a_truncated_download_is_retried(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    sim.inject("delivery", truncate=True, times=1)
    img = await flux.generate("a fox", output_dir=tmp_path)
    assert img.size == sim.config.image_bytes
    assert flux.statistics().downloader.retries == 1


async def test_an_expired_url_is_repolled_once_for_a_fresh_one(tmp_path: Path) -> None:
    sim = make_sim(refresh_url_on_poll=True)
    async with client(sim) as flux:
        task = await flux.submit(prompt="a fox")
        result = await flux.wait(task)
        polls = sim.records.polls_by_task[task.id]
        sim.inject("delivery", status=403, body="<Error><Code>AuthenticationFailed</Code></Error>")
        path = await flux.save(result, tmp_path / "fox")
        assert path.exists()
        assert sim.records.polls_by_task[task.id] == polls + 1
        # Expired again after the re-poll: its own error, and still exactly one re-poll.
        sim.inject("delivery", status=403, times=2)
        with pytest.raises(ResultExpiredError):
            await flux.save(result, tmp_path / "again")
        assert sim.records.polls_by_task[task.id] == polls + 2
    assert not (tmp_path / "again.jpeg").exists()


async def test_an_expired_url_without_a_fresh_one_fails_with_its_own_error(
    sim: Simulator, flux: AsyncFlux, tmp_path: Path
) -> None:
    sim.inject("delivery", status=403, times=2)
    with pytest.raises(ResultExpiredError) as info:
        await flux.generate("a fox", output_dir=tmp_path)
    assert "sig=" not in str(info.value)


async def test_the_key_never_follows_a_redirect_to_another_host(
    sim: Simulator, tmp_path: Path
) -> None:
    inner = sim.transport()
    seen: list[httpx.Request] = []

    class Redirecting(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            if request.url.host == httpx.URL(sim.config.delivery_base).host:
                target = request.url.copy_with(host="cdn.elsewhere.invalid")
                return httpx.Response(302, headers={"location": str(target)})
            if request.url.host == "cdn.elsewhere.invalid":
                back = request.url.copy_with(host=httpx.URL(sim.config.delivery_base).host)
                forwarded = httpx.Request(request.method, back, headers=request.headers)
                return await inner.handle_async_request(forwarded)
            return await inner.handle_async_request(request)

    async with AsyncFlux(
        api_key=FAKE_API_KEY, base_url=sim.config.api_base, transport=Redirecting(), clock=sim.clock
    ) as flux:
        img = await flux.generate("a fox", output_dir=tmp_path)
    assert img.path.exists()
    cdn = [r for r in seen if r.url.host == "cdn.elsewhere.invalid"]
    assert cdn
    assert all(no_credentials(dict(r.headers)) for r in cdn)
    delivery = [r for r in seen if "results" in r.url.path]
    assert all(no_credentials(dict(r.headers)) for r in delivery)


async def test_the_api_client_does_not_follow_redirects(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": "https://elsewhere.invalid/v1/flux-2-pro"})

    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url="https://api.sim.invalid",
        transport=httpx.MockTransport(handler),
    ) as flux:
        with pytest.raises(APIError) as info:
            await flux.generate("a fox", output_dir=tmp_path)
    assert info.value.status_code == 307


async def test_leaving_the_client_leaves_nothing_running(sim: Simulator, tmp_path: Path) -> None:
    before = set(asyncio.all_tasks())
    flux = client(sim)
    assert "unopened" in repr(flux)
    with pytest.raises(ClientClosedError):
        await flux.generate("a fox")
    async with flux:
        assert len(set(asyncio.all_tasks()) - before) >= 1  # the scheduler loop
        await flux.submit(prompt="left pending when the client closes")
        api_http = flux._provider._http  # type: ignore[union-attr]
    assert api_http.is_closed
    assert set(asyncio.all_tasks()) - before == set()
    assert "closed" in repr(flux)
    with pytest.raises(ClientClosedError):
        await flux.generate("a fox")
    with pytest.raises(ClientClosedError):
        async with flux:
            pass
    await flux.aclose()  # idempotent


async def test_waiters_are_released_when_the_client_closes(sim: Simulator) -> None:
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg, client(sim) as flux:
        task = await flux.submit(prompt="never waited for long")

        async def waiter() -> None:
            try:
                await flux.wait(task)
            except ClientClosedError as exc:
                errors.append(exc)

        tg.start_soon(waiter)
        await anyio.lowlevel.checkpoint()
    assert len(errors) == 1


async def test_on_loopback_over_real_http(tmp_path: Path) -> None:
    sim = make_sim()
    async with serve(sim) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        async with AsyncFlux(api_key=FAKE_API_KEY, base_url=base_url, clock=sim.clock) as flux:
            img = await flux.generate("a fox over loopback", output_dir=tmp_path)
            outcomes = [o async for o in flux.generate_many(["a", "b", "c"], output_dir=tmp_path)]
            assert await flux.credits() > 0
    assert img.path.stat().st_size == sim.config.image_bytes
    assert all(o.ok for o in outcomes)
    assert all(no_credentials(h) for h in sim.records.delivery_headers)
    hosts = {r.host.split(":")[0] for r in sim.records.requests if "get_result" in r.path}
    assert hosts == {"localhost"}  # polled exactly where the submit reply said


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", "sim-fake-key-from-environment")
    flux = AsyncFlux()
    assert "sim-fake-key-from-environment" not in repr(flux)
    assert flux.provider_name == "bfl"
    assert flux.base_url == "https://api.bfl.ai"
    monkeypatch.delenv("BFL_API_KEY")
    with pytest.raises(ConfigurationError, match="BFL_API_KEY"):
        AsyncFlux()
