"""Webhooks end to end: the simulator sends them, the client verifies, confirms, resolves."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from flux_async import AsyncFlux, ConfigurationError, GenerationError, ManualClock, ScaledClock
from flux_async._web._events import Event, WebhookReceived
from flux_async._web._webhook_app import asgi_app
from flux_async._web._webhooks import sign_body
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig, serve

from ._util import settle

pytestmark = pytest.mark.anyio

MODEL = "flux-2-klein-4b"
SECRET = "whsec-integration-secret"
HOOK_URL = "https://backend.test/webhooks/flux"


def make_sim(speed: float = 100.0, median: float = 0.5, **config: Any) -> Simulator:
    cfg = SimulatorConfig(latency={MODEL: (median, 0.3)}, image_bytes=0, **config)
    return Simulator(cfg, clock=ScaledClock(speed))


def client(sim: Simulator, base_url: str | None = None, **options: Any) -> AsyncFlux:
    options.setdefault("webhook_url", HOOK_URL)
    options.setdefault("webhook_secret", SECRET)
    return AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=base_url or sim.config.api_base,
        transport=None if base_url else sim.transport(),
        clock=sim.clock,
        **options,
    )


async def generate_all(flux: AsyncFlux, n: int, out: Path) -> list[str]:
    ids: list[str] = []

    async def one(i: int) -> None:
        ids.append((await flux.generate(f"p{i}", model=MODEL, output_dir=out)).task_id)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    return ids


async def drive(clock: ManualClock, done: anyio.Event, *, below: float) -> None:
    """Move ``clock`` from one sleeper's deadline to the next while they lie ``below``.

    Time moves only when every task is blocked, and never to ``below`` or past it: work
    that waits on real things (threads writing files) just finishes, however slow the
    machine, and anything due at ``below`` (the webhook fallback's first poll) never runs.
    """
    while not done.is_set():
        await settle()
        due = clock.next_deadline
        if due is not None and due < below:
            clock.advance(max(due - clock.monotonic(), 0.0))
        else:
            await anyio.sleep(0.001)  # a real pause: let worker threads finish


async def test_webhooks_resolve_tasks_after_one_confirming_poll(tmp_path: Path) -> None:
    # Was flaky (1 in 20): on a ScaledClock(100) the 30 s webhook fallback is 0.3 s of
    # real time, and a loaded machine let it fire before some webhooks were confirmed.
    # On a ManualClock time moves only between deadlines below the fallback, so the
    # fallback can never fire, whatever the machine's speed.
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(latency={MODEL: (0.5, 0.3)}, image_bytes=0), clock=clock)
    events: list[Event] = []
    fallback = 30.0
    async with client(sim, event_hooks=[events.append], webhook_fallback=fallback) as flux:
        async with sim.webhooks.running(sink=flux.webhook_app()):
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(drive, clock, done, below=fallback))
                ids = await generate_all(flux, 30, tmp_path)
                done.set()
        stats = flux.statistics()
    assert clock.monotonic() < fallback
    assert stats.webhooks is not None
    assert (stats.webhooks.resolved, stats.webhooks.confirm_polls) == (30, 30)
    assert stats.scheduler.polls == 0  # the fallback never had to poll
    assert all(sim.records.polls_by_task[i] == 1 for i in ids)
    bodies = [s.body for s in sim.records.submits]
    assert all(b["webhook_url"] == HOOK_URL and b["webhook_secret"] == SECRET for b in bodies)
    assert {d.http_status for d in sim.webhooks.deliveries} == {202}
    actions = [e.action for e in events if isinstance(e, WebhookReceived)]
    assert actions.count("confirming") == actions.count("resolved") == 30


@pytest.mark.parametrize(("auth", "shape"), [("hmac", "task_id"), ("both", "get_result")])
async def test_both_signatures_and_both_body_shapes(tmp_path: Path, auth: str, shape: str) -> None:
    sim = make_sim(webhook_auth=auth, webhook_shape=shape)
    async with client(sim) as flux, sim.webhooks.running(sink=flux.webhook_app()):
        ids = await generate_all(flux, 5, tmp_path)
        assert flux.statistics().scheduler.polls == 0
    assert all(sim.records.polls_by_task[i] == 1 for i in ids)


async def test_the_fallback_polling_catches_lost_webhooks(tmp_path: Path) -> None:
    sim = make_sim(webhook_loss=1.0)
    async with client(sim, webhook_fallback=5.0) as flux:
        async with sim.webhooks.running(sink=flux.webhook_app()):
            started = sim.clock.monotonic()
            ids = await generate_all(flux, 10, tmp_path)
            elapsed = sim.clock.monotonic() - started
        stats = flux.statistics()
    assert stats.webhooks is not None
    assert stats.webhooks.resolved == 0
    assert len(sim.webhooks.lost) == 10
    assert not sim.webhooks.deliveries
    assert elapsed >= 5.0  # nothing polled before the fallback's first poll
    assert all(sim.records.polls_by_task[i] == 1 for i in ids)


async def test_a_long_task_is_polled_only_at_the_fallback_cadence(tmp_path: Path) -> None:
    sim = make_sim(speed=200.0, webhook_loss=1.0)
    sim.plan_next(duration=60.0)
    async with client(sim, webhook_fallback=10.0) as flux:
        img = await flux.generate("slow", model=MODEL, output_dir=tmp_path)
    # First poll at 10 s, then every 10-20 s: at most 6 polls for a 60 s task.
    assert 3 <= sim.records.polls_by_task[img.task_id] <= 6


async def test_wrong_secrets_are_refused_and_the_fallback_finishes(tmp_path: Path) -> None:
    sim = make_sim(webhook_wrong_secret=1.0)
    async with client(sim, webhook_fallback=2.0) as flux:
        async with sim.webhooks.running(sink=flux.webhook_app()):
            await generate_all(flux, 5, tmp_path)
        stats = flux.statistics()
    assert stats.webhooks is not None
    assert stats.webhooks.deliveries.rejected == {"bad signature": 5}
    assert stats.webhooks.resolved == 0
    assert {d.http_status for d in sim.webhooks.deliveries} == {401}


async def test_duplicates_are_ignored_without_another_poll(tmp_path: Path) -> None:
    sim = make_sim(webhook_duplicate=1.0, webhook_delay=0.5)
    async with client(sim) as flux:
        async with sim.webhooks.running(sink=flux.webhook_app()):
            ids = await generate_all(flux, 5, tmp_path)
            with anyio.fail_after(5):
                while len(sim.webhooks.deliveries) < 10:  # noqa: ASYNC110 - sim time passes
                    await anyio.sleep(0.005)
        stats = flux.statistics()
    assert stats.webhooks is not None
    assert stats.webhooks.deliveries.duplicates == 5
    assert all(sim.records.polls_by_task[i] == 1 for i in ids)
    answers = sorted(d.http_status or 0 for d in sim.webhooks.deliveries if d.duplicate)
    assert answers == [200] * 5


async def test_a_failed_task_ends_the_callers_wait_through_its_webhook(tmp_path: Path) -> None:
    sim = make_sim()
    sim.plan_next(duration=0.3, status="Error")
    async with client(sim) as flux, sim.webhooks.running(sink=flux.webhook_app()):
        with anyio.fail_after(5), pytest.raises(GenerationError) as info:
            await flux.generate("fails", model=MODEL, output_dir=tmp_path)
        assert flux.statistics().scheduler.polls == 0
    assert info.value.task_id is not None
    assert sim.records.polls_by_task[info.value.task_id] == 1


def signed(payload: dict[str, Any], secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = json.dumps(payload).encode()
    return {"x-bfl-signature": sign_body(body, secret)}, body


async def test_forged_replayed_late_and_unknown_deliveries_change_nothing(tmp_path: Path) -> None:
    sim = make_sim(median=30.0, speed=20.0)
    async with client(sim) as flux:
        task = await flux.submit(prompt="pending for a while", model=MODEL)
        claim = {"id": task.id, "status": "Ready", "result": {"sample": "https://evil.test/x.jpg"}}

        # Forged: unsigned, wrong secret echoed, HMAC with the wrong key, HMAC of another body.
        headers, body = signed(claim, "not-the-secret")
        forged = [
            ({}, json.dumps(claim).encode()),
            ({"X-Webhook-Secret": "guess"}, json.dumps(claim).encode()),
            (headers, body),
            (signed({"id": task.id, "status": "Error"})[0], body),
        ]
        for forged_headers, forged_body in forged:
            assert (await flux.handle_webhook(forged_headers, forged_body))[0] == 401
        # Signed but malformed, or stamped long ago.
        headers, body = signed({"status": "Ready"})
        assert (await flux.handle_webhook(headers, body))[0] == 400
        headers, body = signed({"id": task.id, "status": "Error", "n": 1})
        headers["x-webhook-timestamp"] = str(sim.clock.time() - 3600)
        assert (await flux.handle_webhook(headers, body))[0] == 400
        # A task this client never submitted.
        headers, body = signed({"id": "someone-else", "status": "Ready"})
        assert await flux.handle_webhook(headers, body) == (200, {"status": "ignored"})
        # A lying Ready claim: the confirming poll says Pending, so nothing ends.
        headers, body = signed(claim)
        assert await flux.handle_webhook(headers, body) == (202, {"status": "confirming"})
        with anyio.fail_after(5):
            while flux.statistics().webhooks.unconfirmed == 0:  # type: ignore[union-attr]  # noqa: ASYNC110
                await anyio.sleep(0.005)
        # The same bytes again: a duplicate, no second poll.
        assert await flux.handle_webhook(headers, body) == (200, {"status": "duplicate"})
        assert sim.records.polls_by_task[task.id] == 1
        assert flux.statistics().scheduler.pending == 1
        # Pending claims are noted, nothing more.
        headers, body = signed({"id": task.id, "status": "Pending"})
        assert await flux.handle_webhook(headers, body) == (200, {"status": "noted"})
        assert sim.records.polls_by_task[task.id] == 1
        # The task ends; a true claim (new bytes) is confirmed and ends the wait at once.
        sim.task(task.id).duration = 0.0
        headers, body = signed({"id": task.id, "status": "Ready", "attempt": 2})
        assert (await flux.handle_webhook(headers, body))[0] == 202
        with anyio.fail_after(5):
            result = await flux.wait(task)
        # Once the task has ended, a late delivery is ignored.
        polls = sim.records.polls_by_task[task.id]
        headers, body = signed({"id": task.id, "status": "Ready", "late": True})
        assert await flux.handle_webhook(headers, body) == (200, {"status": "ignored"})
        await anyio.sleep(0.01)
        assert sim.records.polls_by_task[task.id] == polls
        assert not result.sample_url.startswith("https://evil.test")
        stats = flux.statistics().webhooks
    assert stats is not None
    assert stats.deliveries.rejected == {
        "bad signature": 3,
        "missing signature": 1,
        "malformed body": 1,
        "stale": 1,
    }


async def test_a_claim_that_beats_the_submit_reply_is_confirmed_when_the_task_is_known(
    tmp_path: Path,
) -> None:
    sim = make_sim()
    sim.plan_next(duration=0.0)
    async with client(sim) as flux:
        receiver, provider, scheduler = flux._webhooks, flux._provider, flux._scheduler
        assert provider is not None
        assert scheduler is not None
        # Submit behind the client's back, so the delivery arrives before the task is known.
        request = receiver.prepare(flux.build_request("instant", model=MODEL))
        task, slot = await flux._submitter.submit(provider, request)
        headers, body = signed({"id": task.id, "status": "Ready"})
        assert await flux.handle_webhook(headers, body) == (200, {"status": "ignored"})
        flux._track(scheduler, task, slot)
        with anyio.fail_after(5):
            result = await flux.wait(task)
        stats = receiver.statistics()
        assert stats is not None
        assert stats.resolved == 1
    assert result.task_id == task.id
    assert sim.records.polls_by_task[task.id] == 1


async def test_the_webhook_app_speaks_plain_asgi() -> None:
    sim = make_sim()
    flux = client(sim)
    app = flux.webhook_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://backend.test") as http:
        assert (await http.post("/", content=b"{}")).status_code == 503  # not open yet
        async with flux:
            assert (await http.get("/")).status_code == 405
            response = await http.post("/", content=b"{}")
            assert response.status_code == 401
            assert response.json() == {"detail": "webhook rejected: missing signature"}
            huge = b"x" * (2 * 1024 * 1024)
            headers = {"x-webhook-secret": SECRET}
            assert (await http.post("/", content=huge, headers=headers)).status_code == 413
    async with AsyncFlux(api_key=FAKE_API_KEY, transport=sim.transport()) as plain:
        assert (await plain.handle_webhook({}, b"{}"))[0] == 404


async def test_the_webhook_app_answers_lifespan_messages() -> None:
    async def handler(headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {}

    app = asgi_app(handler, max_body_bytes=10)
    sent: list[dict[str, Any]] = []
    queue = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(queue)

    async def send(message: Any) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_webhook_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        AsyncFlux(api_key=FAKE_API_KEY, webhook_url="ftp://backend.test/hook")
    with pytest.raises(ConfigurationError):
        AsyncFlux(api_key=FAKE_API_KEY, webhook_secret=SECRET)
    with pytest.raises(ConfigurationError, match="BFL"):
        AsyncFlux(api_key=FAKE_API_KEY, provider="apiyi", webhook_url=HOOK_URL)
    with pytest.raises(ValueError, match="webhook_auth"):
        Simulator(SimulatorConfig(webhook_auth="none"))
    flux = AsyncFlux(api_key=FAKE_API_KEY, webhook_url=HOOK_URL, webhook_secret=SECRET)
    assert SECRET not in repr(flux._webhooks)


@contextlib.asynccontextmanager
async def serve_app(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    """Serve an ASGI app with uvicorn on ``sock`` (bound to a loopback port)."""
    import uvicorn

    config = uvicorn.Config(app, lifespan="off", log_config=None, log_level="warning")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        with anyio.fail_after(5):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
                await anyio.sleep(0.005)
        try:
            yield
        finally:
            server.should_exit = True


async def test_webhooks_over_loopback_with_real_http(tmp_path: Path) -> None:
    sim = make_sim(webhook_auth="both")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        hook_url = f"http://127.0.0.1:{sock.getsockname()[1]}/webhooks/flux"
        async with serve(sim) as base_url:
            # A fallback far beyond the test's length: on a loaded machine a real-HTTP
            # delivery can take longer than 30 simulated seconds (0.3 s real at 100x).
            flux = client(sim, base_url, webhook_url=hook_url, webhook_fallback=3000.0)
            async with serve_app(flux.webhook_app(), sock), flux, sim.webhooks.running():
                ids = await generate_all(flux, 10, tmp_path)
                assert flux.statistics().scheduler.polls == 0
    assert all(sim.records.polls_by_task[i] == 1 for i in ids)
    assert {d.http_status for d in sim.webhooks.deliveries} == {202}
