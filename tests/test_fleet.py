"""A fleet in one test process: clients sharing one cap through a real loopback Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import anyio.abc
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from flux_async import (
    AsyncFlux,
    ConfigurationError,
    CoordinatorChanged,
    Event,
    GeneratedImage,
    ImageSaved,
    ManualClock,
    TaskOrphaned,
    run_batch,
)
from flux_async._batching._ledger import Ledger
from flux_async._cli import main
from flux_async._fleet import COORDINATOR_ENV, Coordinator, fleet_id, scripts
from flux_async._fleet.coordinator import FleetSession
from flux_async._fleet.limiter import FleetLimiter
from flux_async._fleet.registry import TaskRegistry
from flux_async._request._models import Task
from flux_async.testing import FAKE_API_KEY, KNOWN_MODELS, ScaledClock, Simulator, SimulatorConfig
from tests._redis import RedisServer

pytestmark = pytest.mark.anyio

SPEED = 20.0  # simulated seconds per real second


def fast_config(**changes: Any) -> SimulatorConfig:
    latency = dict.fromkeys(KNOWN_MODELS, (2.0, 0.3))
    return SimulatorConfig(latency=latency, image_bytes=1024, **changes)


def coordinator(url: str, timeout: float = 1.0) -> Coordinator:
    # Scaled seconds (SPEED x real): a 1 s real stall of a loaded machine is not a death.
    return Coordinator(url, heartbeat=1.0, ttl=20.0, timeout=timeout, pump_interval=1.0)


@asynccontextmanager
async def fleet(
    sim: Simulator, url: str, n: int, cap: int, **options: Any
) -> AsyncIterator[list[AsyncFlux]]:
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                AsyncFlux(
                    api_key=FAKE_API_KEY,
                    base_url=sim.config.api_base,
                    transport=sim.transport(),
                    clock=sim.clock,
                    max_active=cap,
                    coordinator=coordinator(url),
                    **options,
                )
            )
            for _ in range(n)
        ]
        yield clients


async def run_all(flux: AsyncFlux, prompts: Sequence[str], out: Path) -> int:
    saved = 0
    async for outcome in flux.generate_many(prompts, output_dir=out):
        assert outcome.error is None, outcome.error
        saved += 1
    return saved


async def test_two_clients_share_one_cap_without_a_429(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    sim = Simulator(fast_config(active_limit=4), clock=ScaledClock(SPEED))
    counts = [0, 0]
    async with fleet(sim, redis_server.url, 2, cap=4) as (a, b):

        async def one(index: int, flux: AsyncFlux) -> None:
            prompts = [f"fox {index}-{n}" for n in range(12)]
            out = tmp_path / str(index)
            out.mkdir()
            counts[index] = await run_all(flux, prompts, out)

        with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, 0, a)
                tg.start_soon(one, 1, b)
        assert a.statistics().limiter.in_flight == b.statistics().limiter.in_flight == 0
    assert counts == [12, 12]
    assert len(list(tmp_path.glob("*/*.jpeg"))) == 24
    assert sim.records.max_active_seen == 4  # the whole cap was used, never more
    assert sim.records.rejected_429 <= 1  # near zero (a 429 creates nothing)


async def test_the_key_never_reaches_redis(redis_server: RedisServer, tmp_path: Path) -> None:
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    async with fleet(sim, redis_server.url, 1, cap=2) as (flux,):
        await run_all(flux, ["a fox", "a hare"], tmp_path)
        redis = Redis.from_url(redis_server.url, decode_responses=True)
        try:
            dump: list[str] = []
            async for key in redis.scan_iter("*"):
                dump.append(str(key))
                kind = await redis.type(key)
                if kind == "hash":
                    fields = await redis.hgetall(key)
                    dump += [f"{k!s}={v!s}" for k, v in fields.items()]
            assert dump, "the fleet wrote nothing to Redis"
            assert all(FAKE_API_KEY not in entry for entry in dump)
            assert any(fleet_id("bfl", FAKE_API_KEY) in entry for entry in dump)
        finally:
            await redis.aclose()


def test_fleet_id_is_a_keyed_hash_per_provider_and_key() -> None:
    one = fleet_id("bfl", "key-one")
    assert len(one) == 32
    assert "key-one" not in one
    assert one == fleet_id("bfl", "key-one")
    assert one != fleet_id("bfl", "key-two") != fleet_id("dmxapi", "key-one")


def test_coordinator_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COORDINATOR_ENV, raising=False)
    assert Coordinator.resolve(None) is None
    monkeypatch.setenv(COORDINATOR_ENV, "redis://:sekrit@127.0.0.1:1/0")
    found = Coordinator.resolve(None)
    assert found is not None
    assert found.redis == "redis://:sekrit@127.0.0.1:1/0"
    assert "sekrit" not in repr(found)
    given = Coordinator("rediss://example.invalid:6380/1")
    assert Coordinator.resolve(given) is given
    with pytest.raises(ConfigurationError, match="redis://"):
        Coordinator("http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="heartbeat"):
        Coordinator("redis://127.0.0.1", heartbeat=5.0, ttl=5.0)


async def test_a_client_without_redis_runs_on_one_slot_and_says_so(tmp_path: Path) -> None:
    # Nothing listens on the port: the client still works, on the share of an unknown
    # fleet (one slot), and emits one event saying the coordinator is lost.
    events: list[Event] = []

    def hook(event: Event) -> None:
        events.append(event)

    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=sim.config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
        max_active=4,
        coordinator=coordinator("redis://127.0.0.1:9/0", timeout=0.5),
        event_hooks=[hook],
    ) as flux:
        assert await run_all(flux, ["a", "b", "c"], tmp_path) == 3
    assert sim.records.max_active_seen == 1
    changes = [e for e in events if isinstance(e, CoordinatorChanged)]
    assert [c.state for c in changes] == ["lost"]


@pytest.mark.parametrize("command", ["generate", "batch"])
def test_cli_coordinator_option_joins_the_fleet(
    command: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\na hare\n", encoding="utf-8")
    fast = ["--simulate", "--sim-speed", "300", "--coordinator", redis_server.url]
    if command == "generate":
        argv = ["generate", "a fox", "--out", str(tmp_path), *fast]
    else:
        argv = ["batch", str(prompts), "--out", str(tmp_path / "out"), "--no-progress", *fast]
    assert main(argv) == 0
    redis = SyncRedis.from_url(redis_server.url, decode_responses=True)
    try:
        owners = f"flux_async:{{{fleet_id('bfl', FAKE_API_KEY)}}}:owners"
        # The process joined, then left (score 0: the fleet may adopt what it left).
        assert redis.zrange(owners, 0, -1, withscores=True) == [(ANY, 0.0)]
        assert redis.hlen(owners.replace("owners", "leases")) == 0
    finally:
        redis.close()


async def test_a_closed_clients_unfinished_tasks_are_adopted_and_saved(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A client that leaves with tasks still running (a worker shut down for a deploy)
    # hands them to the fleet: another client polls them to their end and saves them.
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    events: list[Event] = []
    handed: list[GeneratedImage] = []

    def hook(event: Event) -> None:
        events.append(event)

    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=sim.config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
        coordinator=coordinator(redis_server.url),
        orphan_dir=tmp_path / "orphans",
        on_orphan=handed.append,
        event_hooks=[hook],
    ) as survivor:
        async with AsyncFlux(
            api_key=FAKE_API_KEY,
            base_url=sim.config.api_base,
            transport=sim.transport(),
            clock=sim.clock,
            coordinator=coordinator(redis_server.url),
        ) as leaver:
            sim.plan_next(duration=30.0)
            sim.plan_next(duration=30.0)
            left = {(await leaver.submit(prompt=p)).id for p in ("a fox", "a hare")}
        with anyio.fail_after(30):
            while len(handed) < 2:  # noqa: ASYNC110 - the hook has no event to wait on
                await anyio.sleep(0.02)
        orphans = survivor.statistics().orphans
        assert orphans is not None
        assert orphans.saved == 2
    assert {image.task_id for image in handed} == left
    assert {path.stem for path in (tmp_path / "orphans").iterdir()} == left
    orphaned = [e.task_id for e in events if isinstance(e, TaskOrphaned)]
    assert sorted(orphaned) == sorted(left)
    assert {e.task_id for e in events if isinstance(e, ImageSaved) and e.orphan} == left
    assert len(sim.records.submits) == 2  # adopted, never submitted again


async def test_redis_killed_and_restarted_mid_run_loses_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    sim = Simulator(fast_config(active_limit=4), clock=ScaledClock(SPEED))
    events: list[Event] = []

    def hook(event: Event) -> None:
        events.append(event)

    counts = [0, 0]
    async with fleet(sim, redis_server.url, 2, cap=4, event_hooks=[hook]) as clients:

        async def one(index: int, flux: AsyncFlux) -> None:
            out = tmp_path / str(index)
            out.mkdir()
            counts[index] = await run_all(flux, [f"fox {index}-{n}" for n in range(16)], out)

        async def outage() -> None:
            while len(sim.records.submits) < 6:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.01)
            redis_server.kill()
            while len(sim.records.submits) < 14:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            redis_server.start()

        with anyio.fail_after(30):
            # Both have seen the other: each one's share while Redis is away is 4 / 2.
            while any(getattr(flux._limiter, "fleet_size", 0) != 2 for flux in clients):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
            async with anyio.create_task_group() as tg:
                tg.start_soon(outage)
                for index, flux in enumerate(clients):
                    tg.start_soon(one, index, flux)
        # Both come back: the heartbeat rejoins after the restart.
        with anyio.fail_after(30):
            while [e.state for e in events if isinstance(e, CoordinatorChanged)].count(  # noqa: ASYNC110
                "rejoined"
            ) < 2:
                await anyio.sleep(0.02)
    assert counts == [16, 16]
    submitted = [r.body["prompt"] for r in sim.records.submits if r.task_id is not None]
    assert sorted(submitted) == sorted(set(submitted))  # nothing submitted twice
    assert len(submitted) == 32
    assert sim.records.max_active_seen <= 4  # two processes on 2 slots each meanwhile
    changes = [e.state for e in events if isinstance(e, CoordinatorChanged)]
    assert changes.count("lost") >= 2  # once per process and outage (a stale connection
    assert changes.count("rejoined") == changes.count("lost")  # may add a brief one)
    lost = [e for e in events if isinstance(e, CoordinatorChanged) and e.state == "lost"]
    assert all((e.fleet_size, e.local_share) == (2, 2) for e in lost)


async def test_a_webhook_delivered_to_the_wrong_worker_reaches_its_owner(
    redis_server: RedisServer,
) -> None:
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    hooks = {
        "webhook_url": "https://workers.example.invalid/hook",
        "webhook_secret": "fleet-wide-test-secret",
        "webhook_fallback": 3600.0,  # no fallback poll would find the ending in this test
    }
    async with fleet(sim, redis_server.url, 2, cap=2, **hooks) as (owner, other):
        sim.plan_next(duration=1.0)
        task = await owner.submit(prompt="a fox")
        await anyio.sleep(2.0 / SPEED)  # the task is Ready on the server now
        body = json.dumps({"id": task.id, "status": "Ready"}).encode()
        headers = {"x-webhook-secret": "fleet-wide-test-secret"}
        assert await other.handle_webhook(headers, body) == (202, {"status": "forwarded"})
        with anyio.fail_after(10):
            result = await owner.wait(task)
        assert result.task.id == task.id
        owner_hooks = owner.statistics().webhooks
        other_hooks = other.statistics().webhooks
        assert owner_hooks is not None
        assert other_hooks is not None
        assert (owner_hooks.confirm_polls, owner_hooks.resolved) == (1, 1)
        assert other_hooks.ignored == 0
        # A delivery for a task nobody in the fleet owns is still ignored.
        stray = json.dumps({"id": "no-such-task", "status": "Ready"}).encode()
        assert await other.handle_webhook(headers, stray) == (200, {"status": "ignored"})


async def test_a_429_cuts_the_window_of_the_whole_fleet(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # The account allows 3, the processes were told 6: the first 429 (whoever draws it)
    # lowers the shared window to what the server accepted, and both stay under it.
    sim = Simulator(fast_config(active_limit=3), clock=ScaledClock(SPEED))
    async with fleet(sim, redis_server.url, 2, cap=6, limit_quiet_period=3600.0) as clients:

        async def one(index: int, flux: AsyncFlux) -> None:
            out = tmp_path / str(index)
            out.mkdir()
            assert await run_all(flux, [f"fox {index}-{n}" for n in range(10)], out) == 10

        with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
            async with anyio.create_task_group() as tg:
                for index, flux in enumerate(clients):
                    tg.start_soon(one, index, flux)
        windows = [flux.statistics().limiter.window for flux in clients]
    # One shared window, at most what the server allows (a 429 answered while one of our
    # tasks was ending may cut one step lower, as in one process; probing raises it later).
    assert windows[0] == windows[1] in (2, 3)
    # The first burst is 6 submits for 3 places; after the cut the fleet keeps under it
    # (two processes finding their share alone would go on drawing 429s).
    assert 1 <= sim.records.rejected_429 <= 6
    submitted = [r.body["prompt"] for r in sim.records.submits if r.task_id is not None]
    assert len(submitted) == len(set(submitted)) == 20


async def test_a_submit_queued_in_another_process_puts_this_one_in_throughput(
    redis_server: RedisServer,
) -> None:
    # A slot freed here goes to whichever process queued first: while any process of the
    # fleet waits, this one's polls free slots (the throughput regime), even with no
    # waiter of its own.
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    async with fleet(sim, redis_server.url, 2, cap=1) as (a, b):
        limiter_a, limiter_b = a._limiter, b._limiter
        assert a._fleet is not None
        heartbeat = a._fleet.heartbeat
        assert heartbeat is not None
        assert a._policy.regime() == "frugal"  # type: ignore[attr-defined]
        with anyio.fail_after(30):  # a stuck fleet fails here instead of hanging CI
            slot = await limiter_a.acquire("flux-2-pro")
            async with anyio.create_task_group() as tg:
                granted: list[Any] = []

                async def queue_in_b() -> None:
                    granted.append(await limiter_b.acquire("flux-2-pro"))

                tg.start_soon(queue_in_b)
                while limiter_b.waiting == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                assert limiter_a.waiting == 0  # a has not heard of b's ticket yet
                await heartbeat.beat()  # the beat reports the fleet's queue
                assert limiter_a.waiting == 1
                assert a._policy.regime() == "throughput"  # type: ignore[attr-defined]
                slot.release()  # b's ticket is granted; the release reports the queue
                while not granted:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            granted[0].release()
            await heartbeat.beat()
        assert limiter_a.waiting == limiter_b.waiting == 0
        assert a._policy.regime() == b._policy.regime() == "frugal"  # type: ignore[attr-defined]


def fleet_client(sim: Simulator, url: str, **options: Any) -> AsyncFlux:
    """Return one more process of the fleet (an unopened client) on ``sim``."""
    return AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=sim.config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
        coordinator=coordinator(url),
        **options,
    )


async def orphans_saved(flux: AsyncFlux, count: int) -> None:
    """Return once ``flux`` has saved ``count`` adopted (orphaned) images."""
    while True:
        orphans = flux.statistics().orphans
        assert orphans is not None
        if orphans.saved >= count:
            return
        await anyio.sleep(0.02)


async def test_a_resumed_batch_takes_what_the_fleet_saved_without_paying_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A batch stops with its tasks still generating and its process leaves (a deploy, a
    # crash): the fleet adopts them and saves each image under its item's own name in
    # the batch folder; the resumed batch records those files, submitting and
    # downloading nothing again.
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na hare\na heron\n", encoding="utf-8")
    out = tmp_path / "out"
    client = partial(fleet_client, sim, redis_server.url)

    with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
        async with client(orphan_dir=tmp_path / "orphans") as survivor:
            for _ in range(3):
                sim.plan_next(duration=30.0)
            async with client() as batcher:
                stop = anyio.Event()
                async with anyio.create_task_group() as tg:

                    async def stop_once_submitted() -> None:
                        while len(sim.records.submits) < 3:  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                        stop.set()

                    tg.start_soon(stop_once_submitted)
                    first = await run_batch(batcher, prompts, out, stop=stop)
            assert (first.stopped, first.ok, first.pending) == ("interrupted", 0, 3)
            await orphans_saved(survivor, 3)
            assert len(sim.records.delivery_headers) == 3
            async with client() as resumer:
                again = await run_batch(resumer, prompts, out)
    assert (again.ok, again.failed, again.pending) == (3, 0, 0)
    assert len(sim.records.submits) == 3  # nothing paid twice
    assert len(sim.records.delivery_headers) == 3  # nor downloaded twice
    assert sorted(p.name for p in out.glob("*.jpeg")) == sorted(
        json.loads(line)["path"] for line in (out / "results.jsonl").read_text().splitlines()
    )
    assert not (tmp_path / "orphans").exists() or not any((tmp_path / "orphans").iterdir())


async def test_a_resumed_batch_takes_an_interrupted_submits_image_the_fleet_saved(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # The batch's process stopped between a submit's answer and the ledger's "submitted":
    # the item is left "submitting", with no task id. Its fleet record named the item's
    # file, so the survivor that adopted the task saved the image there; the resume
    # records it instead of reporting a possibly billed submit, and pays nothing again.
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n", encoding="utf-8")
    out = tmp_path / "out"
    client = partial(fleet_client, sim, redis_server.url)

    with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
        stopped = anyio.Event()
        stopped.set()
        async with client() as batcher:
            await run_batch(batcher, prompts, out, stop=stopped)  # the ledger, nothing paid
        assert not sim.records.submits
        async with await Ledger.open(out, run_config={}) as ledger:
            await ledger.mark_submitting(0)
        async with client(orphan_dir=tmp_path / "orphans") as survivor:
            sim.plan_next(duration=30.0)
            async with client() as batcher:
                # As the batch runner submits: with the item's file name for the record.
                request = batcher.build_request("a fox", model="flux-2-pro")
                await batcher._submit(request, output=(out, "00000-a-fox"))
            await orphans_saved(survivor, 1)
        async with client() as resumer:
            again = await run_batch(resumer, prompts, out)
    assert (again.ok, again.failed, again.possibly_billed) == (1, 0, 0)
    assert len(sim.records.submits) == 1  # nothing paid twice
    assert len(sim.records.delivery_headers) == 1  # nor downloaded twice
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (row["status"], row["path"]) == ("ok", "00000-a-fox.jpeg")


async def test_a_crowd_of_submits_in_one_process_never_loses_the_coordinator(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # 150 callers queue at once (a web worker under load): each waits for one of the
    # process's few Redis connections; none fails, so the fleet never falls back to
    # its local share (redis-py's plain pool raised MaxConnectionsError past 100).
    sim = Simulator(fast_config(active_limit=50), clock=ScaledClock(SPEED))
    events: list[Event] = []
    async with fleet(sim, redis_server.url, 1, cap=50, event_hooks=[events.append]) as (flux,):
        with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
            async with anyio.create_task_group() as tg:
                for n in range(150):
                    tg.start_soon(partial(flux.generate, f"fox {n}", output_dir=tmp_path))
        assert flux.statistics().limiter.in_flight == 0
    assert not [e for e in events if isinstance(e, CoordinatorChanged)]
    assert len(list(tmp_path.glob("*.jpeg"))) == 150
    assert sim.records.rejected_429 == 0


async def test_a_silent_process_is_granted_no_slot_before_it_is_declared_dead(
    redis_server: RedisServer,
) -> None:
    # A process killed with submits queued would take every slot freed until its
    # heartbeat expires (ttl) and hold it until adoption. Once silent for stale_ms it is
    # skipped (its tickets keep their place); when it beats again it is served first.
    clock = ManualClock()
    timings = Coordinator(redis_server.url, heartbeat=1.0, ttl=10.0, timeout=5.0)
    assert timings.stale_ms == 5000
    alive, silent = (
        FleetSession(timings, provider="bfl", api_key=FAKE_API_KEY, clock=clock) for _ in "ab"
    )
    with anyio.fail_after(30):
        for session in (alive, silent):
            await session.open()

        async def beat(session: FleetSession) -> None:
            await session.script(scripts.BEAT, session.owner, 10_000)

        async def enqueue(session: FleetSession, ticket: str) -> None:
            await session.script(scripts.ENQUEUE, session.owner, ticket, "flux-2-pro", 1, 0)

        async def pump(session: FleetSession) -> list[str]:
            reply = await session.script(scripts.PUMP, session.owner, 1, timings.stale_ms)
            return [str(t) for t in reply[4:]]

        try:
            await beat(alive)
            await beat(silent)
            await enqueue(alive, "held")
            assert await pump(alive) == ["held"]  # the one slot
            await enqueue(silent, "first")
            await enqueue(alive, "second")
            clock.advance(6.0)  # past stale_ms, well inside ttl: silent is not dead yet
            await beat(alive)
            await alive.script(scripts.RELEASE, "held", 1, 1, 30_000)
            assert await pump(alive) == ["second"]  # "first" skipped, not dropped
            assert await pump(silent) == []
            await alive.script(scripts.RELEASE, "second", 1, 1, 30_000)
            await beat(silent)  # it was only slow: its ticket is next
            assert await pump(silent) == ["first"]
        finally:
            for session in (alive, silent):
                await session.aclose()


async def test_slots_go_to_processes_in_arrival_order_so_none_starves(
    redis_server: RedisServer,
) -> None:
    # Fairness between processes: one process that queues many submits first and asks
    # for slots far more often than the others cannot jump their later tickets; a slot
    # freed anywhere goes to the oldest ticket in the fleet, whoever pumps.
    clock = ManualClock()
    timings = Coordinator(redis_server.url, heartbeat=1.0, ttl=30.0, timeout=5.0)
    greedy, b, c = (
        FleetSession(timings, provider="bfl", api_key=FAKE_API_KEY, clock=clock) for _ in "abc"
    )
    sessions = {"greedy": greedy, "b": b, "c": c}
    with anyio.fail_after(30):
        for session in sessions.values():
            await session.open()
        try:
            for session in sessions.values():
                await session.script(scripts.BEAT, session.owner, 30_000)
            arrivals = [("greedy", "g1"), ("greedy", "g2"), ("greedy", "g3"), ("b", "b1")]
            arrivals += [("c", "c1"), ("greedy", "g4"), ("b", "b2")]
            for name, ticket in arrivals:
                session = sessions[name]
                await session.script(scripts.ENQUEUE, session.owner, ticket, "flux-2-pro", 1, 0)
            granted: list[str] = []
            while len(granted) < len(arrivals):
                # The greedy process pumps first, every time; the others after it.
                got = [
                    str(t)
                    for session in sessions.values()
                    for t in (await session.script(scripts.PUMP, session.owner, 1, 60_000))[4:]
                ]
                assert len(got) == 1  # a cap of one: exactly one slot per round
                granted += got
                await greedy.script(scripts.RELEASE, got[0], 1, 1, 30_000)
            assert granted == [ticket for _, ticket in arrivals]
        finally:
            for session in sessions.values():
                await session.aclose()


async def test_a_task_record_is_written_while_every_other_redis_call_waits(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A paid task is lost if its process dies before its record lands, so the write
    # takes one of the connections kept for records, never a turn behind the process's
    # other calls: here every general connection is held (a crowd of submits queueing)
    # and the record still reaches Redis.
    clock = ManualClock()
    timings = Coordinator(redis_server.url, timeout=0.2, connections=2)
    session = FleetSession(timings, provider="bfl", api_key=FAKE_API_KEY, clock=clock)
    limiter = FleetLimiter(4, session, clock=clock)
    registry = TaskRegistry(session, limiter, clock=clock, task_timeout=600.0)
    await session.open()
    try:
        async with anyio.create_task_group() as tg:
            limiter.bind(tg)
            crowd = session._gate
            for _ in range(timings.connections):
                await crowd.acquire()  # every general connection busy
            task = Task(id="task-1", polling_url=None, model="flux-2-pro", provider="bfl")
            registry.register(task, None, tmp_path / "00001")
            await registry.written("task-1")
            for _ in range(timings.connections):
                crowd.release()
            tg.cancel_scope.cancel()
        reader = Redis.from_url(redis_server.url, decode_responses=True)
        record = await reader.hgetall(session.prefix + "task:task-1")
        await reader.aclose()
    finally:
        await session.aclose()
    assert (record["owner"], record["dest"]) == (session.owner, str(tmp_path / "00001"))


async def test_a_survivor_closing_before_it_saved_an_adopted_task_hands_it_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A survivor shut down (drain 0) while a task it adopted is still generating does
    # not drop the task's record: its leave hands the task on, and a third process
    # saves the image where the first one meant it to go. Nothing is paid twice.
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    client = partial(fleet_client, sim, redis_server.url)

    def adopted(flux: AsyncFlux) -> int:
        orphans = flux.statistics().orphans
        return orphans.adopted if orphans is not None else 0

    def saved(flux: AsyncFlux) -> int:
        orphans = flux.statistics().orphans
        return orphans.saved if orphans is not None else 0

    # The adopter runs in a task of its own, so that it can close while the others run.
    close_adopter, adopter_closed = anyio.Event(), anyio.Event()
    adopters: list[AsyncFlux] = []

    async def adopter_process(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with client(orphan_dir=tmp_path / "orphans") as flux:  # closes with drain 0
            adopters.append(flux)
            task_status.started()
            await close_adopter.wait()
        adopter_closed.set()

    with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
        async with anyio.create_task_group() as tg:
            await tg.start(adopter_process)
            (adopter,) = adopters
            sim.plan_next(duration=1e6)  # ends when the test says so (below)
            async with client() as first:
                request = first.build_request("a fox", model="flux-2-pro")
                task = await first._submit(request, output=(tmp_path, "fox"))
            while not adopted(adopter):  # noqa: ASYNC110 - counters, no event to wait on
                await anyio.sleep(0.02)
            async with client(orphan_dir=tmp_path / "orphans") as last:
                close_adopter.set()
                await adopter_closed.wait()
                # Only now does the task end: the adopter never had its image.
                running = sim.task(task.id)
                running.duration = sim.clock.monotonic() - running.submitted_at
                while saved(last) < 1:  # noqa: ASYNC110 - counters, no event to wait on
                    await anyio.sleep(0.02)
    assert (tmp_path / "fox.jpeg").is_file()  # saved by the last process only
    assert not (tmp_path / "orphans").exists() or not any((tmp_path / "orphans").iterdir())
    assert len(sim.records.submits) == 1


async def test_a_process_adopts_a_dead_ones_task_while_it_is_still_opening(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A worker starting while the fleet holds a dead process's task adopts it in its
    # first heartbeat, before its own opening is done: it must see the task through,
    # not fail to open ("the client is unopened").
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    client = partial(fleet_client, sim, redis_server.url)

    with anyio.fail_after(60):  # a stuck fleet fails here instead of hanging CI
        sim.plan_next(duration=1e6)  # ends when the test says so (below)
        async with client() as first:  # leaves alone: nobody adopts yet
            request = first.build_request("a fox", model="flux-2-pro")
            task = await first._submit(request, output=(tmp_path, "fox"))
        async with client(orphan_dir=tmp_path / "orphans") as starter:
            running = sim.task(task.id)
            running.duration = sim.clock.monotonic() - running.submitted_at
            orphans = starter.statistics().orphans
            while orphans is None or orphans.saved < 1:
                await anyio.sleep(0.02)
                orphans = starter.statistics().orphans
    assert (tmp_path / "fox.jpeg").is_file()
    assert len(sim.records.submits) == 1
