"""Event hooks, statistics as metrics, and what the ``flux_async`` logger may say."""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from flux_async import AsyncFlux, GenerationError, ManualClock, ScaledClock
from flux_async._web._events import (
    Event,
    EventEmitter,
    ImageSaved,
    TaskFailed,
    TaskPolled,
    TaskReady,
    TaskSubmitted,
    WebhookReceived,
    flatten_statistics,
)
from flux_async._web._webhooks import sign_body
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig

from ._util import move_time

pytestmark = pytest.mark.anyio

MODEL = "flux-2-klein-4b"
SECRET = "whsec-events-test-secret"


def make_sim(**config: Any) -> Simulator:
    cfg = SimulatorConfig(latency={MODEL: (0.5, 0.3)}, image_bytes=0, **config)
    return Simulator(cfg, clock=ScaledClock(100.0))


def client(sim: Simulator, **options: Any) -> AsyncFlux:
    return AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=sim.config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
        **options,
    )


async def test_hooks_see_a_task_from_submit_to_saved_image(tmp_path: Path) -> None:
    sim = make_sim()
    events: list[Event] = []
    async with client(sim, event_hooks=[events.append]) as flux:
        img = await flux.generate("a fox", model=MODEL, output_dir=tmp_path)
    mine = [e for e in events if getattr(e, "task_id", None) == img.task_id]
    kinds = [type(e) for e in mine]
    assert kinds[0] is TaskSubmitted
    assert kinds[-2:] == [TaskReady, ImageSaved]
    assert TaskPolled in kinds
    polled = [e for e in mine if isinstance(e, TaskPolled)]
    assert polled[-1].status == "Ready"
    assert len(polled) == sim.records.polls_by_task[img.task_id]
    saved = mine[-1]
    assert isinstance(saved, ImageSaved)
    assert (saved.path, saved.size, saved.orphan) == (img.path, img.size, False)
    assert saved.elapsed > 0
    submitted = mine[0]
    assert isinstance(submitted, TaskSubmitted)
    assert (submitted.model, submitted.cost, submitted.webhook) == (MODEL, 3.0, False)


async def test_a_failed_task_is_an_event_and_still_raises(tmp_path: Path) -> None:
    sim = make_sim()
    sim.plan_next(duration=0.2, status="Error")
    events: list[Event] = []
    async with client(sim, event_hooks=[events.append]) as flux:
        with pytest.raises(GenerationError) as info:
            await flux.generate("a fox", model=MODEL, output_dir=tmp_path)
    failed = [e for e in events if isinstance(e, TaskFailed)]
    assert len(failed) == 1
    assert (failed[0].task_id, failed[0].model) == (info.value.task_id, MODEL)
    assert failed[0].error == "GenerationError"
    assert not any(isinstance(e, ImageSaved) for e in events)


async def test_a_failing_hook_is_logged_and_never_breaks_the_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_sim()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("the metrics backend is down")

    async with client(sim, event_hooks=[broken, seen.append]) as flux:
        with caplog.at_level(logging.ERROR, logger="flux_async"):
            img = await flux.generate("a fox", model=MODEL, output_dir=tmp_path)
    assert img.path.exists()
    assert seen  # the hook after the broken one still ran
    failures = [r for r in caplog.records if "event hook" in r.getMessage()]
    assert len(failures) == len(seen)
    assert all(r.exc_info is not None for r in failures)


def test_events_are_frozen_and_slotted() -> None:
    event = TaskReady("t1", MODEL, 1.5, 1_800_000_000.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.task_id = "t2"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


def test_an_emitter_refuses_what_is_not_callable() -> None:
    with pytest.raises(TypeError):
        EventEmitter(["not a hook"], clock=ScaledClock())  # type: ignore[list-item]


async def test_statistics_flatten_to_numbers_for_a_metrics_backend(tmp_path: Path) -> None:
    sim = make_sim()
    async with client(sim, webhook_url="https://backend.test/hook", webhook_secret=SECRET) as flux:
        await flux.generate("a fox", model=MODEL, output_dir=tmp_path)
        status, _ = await flux.handle_webhook({}, b"{}")
        assert status == 401
        metrics = flux.statistics().as_dict()
    assert metrics["limiter.limit"] == 24
    assert metrics["downloader.completed"] == 1
    assert metrics["scheduler.resolved"] == 1
    assert metrics["webhooks.deliveries.rejected.missing_signature"] == 1
    assert metrics["orphans.adopted"] == 0
    assert "scheduler.next_due_in" not in metrics  # None: nothing due
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())


def test_flatten_statistics_nests_and_refuses_non_records() -> None:
    @dataclasses.dataclass(frozen=True)
    class Inner:
        ok: bool
        per: dict[str, int]

    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Inner
        name: str
        gone: float | None

    flat = flatten_statistics(Outer(Inner(True, {"a b": 2}), "text", None))
    assert flat == {"inner.ok": 1, "inner.per.a_b": 2}
    with pytest.raises(TypeError):
        flatten_statistics(3)


async def test_no_log_record_carries_the_key_or_a_signed_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Was flaky under load: on a ScaledClock(100) the 1 s webhook fallback was 10 ms of
    # real time, so a slow machine let its poll resolve the task before the webhook came
    # (no "resolved" WebhookReceived). On a ManualClock that moves only below the 30 s
    # fallback, the 1 s tasks are always resolved by their webhooks.
    clock = ManualClock()
    cfg = SimulatorConfig(latency={MODEL: (0.5, 0.3)}, image_bytes=0)
    sim = Simulator(cfg, clock=clock)
    for _ in range(2):
        sim.plan_next(duration=1.0)
    fallback = 30.0
    caplog.set_level(logging.DEBUG)
    events: list[Event] = []
    url = "https://backend.test/hook"
    done = anyio.Event()
    async with (
        client(
            sim,
            webhook_url=url,
            webhook_secret=SECRET,
            webhook_fallback=fallback,
            event_hooks=[events.append],
        ) as flux,
        sim.webhooks.running(sink=flux.webhook_app()),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(functools.partial(move_time, clock, done, below=fallback))
        with anyio.fail_after(60):
            await flux.generate("a fox", model=MODEL, output_dir=tmp_path)
            sim.inject("delivery", status=403)  # an expired URL, then a re-poll: logged paths
            await flux.generate("a second fox", model=MODEL, output_dir=tmp_path)
        done.set()
        forged = b'{"id": "nope", "status": "Ready"}'
        await flux.handle_webhook({"x-bfl-signature": sign_body(forged, "wrong")}, forged)
    assert any(isinstance(e, WebhookReceived) and e.action == "resolved" for e in events)
    ours = [r for r in caplog.records if r.name.startswith("flux_async")]
    assert ours
    for record in ours:
        text = record.getMessage() + repr(vars(record))
        assert FAKE_API_KEY not in text
        assert SECRET not in text
        assert "sig=" not in text
    structured = [r for r in ours if getattr(r, "event", None) == "saved"]
    assert len(structured) == 2
    assert all(getattr(r, "task_id", None) for r in structured)
