"""examples/fastapi_app.py, in process: the app, its client and the simulator in one loop.

The app's client talks to the simulator through ``Simulator.transport()``; the simulator
delivers its webhooks into the same FastAPI app through ``httpx.ASGITransport``, so
nothing leaves the process.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from flux_async import AsyncFlux, ScaledClock
from flux_async.testing import FAKE_API_KEY, Simulator, SimulatorConfig

pytestmark = pytest.mark.anyio

MODEL = "flux-2-klein-4b"
SECRET = "whsec-example-secret"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


def load_example() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sim() -> Simulator:
    cfg = SimulatorConfig(latency={MODEL: (0.5, 0.3)}, image_bytes=0)
    return Simulator(cfg, clock=ScaledClock(100.0))


@pytest.fixture
async def http(sim: Simulator, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    example = load_example()

    def flux_factory() -> AsyncFlux:
        return AsyncFlux(
            api_key=FAKE_API_KEY,
            base_url=sim.config.api_base,
            transport=sim.transport(),
            clock=sim.clock,
            webhook_url="http://backend.test/webhooks/flux",
            webhook_secret=SECRET,
            drain_timeout=5.0,
        )

    app = example.create_app(flux_factory, output_dir=tmp_path / "images")
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        sim.webhooks.running(sink=app),
        httpx.AsyncClient(transport=transport, base_url="http://backend.test") as http,
    ):
        yield http


async def test_the_endpoint_returns_the_generated_image(
    sim: Simulator, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    response = await http.post("/images", json={"prompt": "a red fox", "model": MODEL, "seed": 7})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content[:2] == b"\xff\xd8"
    task_id = response.headers["x-task-id"]
    assert response.headers["x-seed"] == "7"
    saved = tmp_path / "images" / f"{task_id}.jpeg"
    assert saved.read_bytes() == response.content
    # The webhook came through the app's own route, so one confirming poll was all.
    assert sim.records.polls_by_task[task_id] == 1
    assert [d.http_status for d in sim.webhooks.deliveries] == [202]
    metrics = (await http.get("/metrics")).json()
    assert metrics["webhooks.resolved"] == 1
    assert metrics["scheduler.polls"] == 0


async def test_many_concurrent_requests_share_one_client(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    statuses: list[int] = []

    async def request(i: int) -> None:
        response = await http.post("/images", json={"prompt": f"fox {i}", "model": MODEL})
        statuses.append(response.status_code)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(request, i)
    assert statuses == [200] * 60
    assert sim.records.max_active_seen <= 24
    metrics = (await http.get("/metrics")).json()
    assert metrics["limiter.in_flight"] == metrics["scheduler.pending"] == 0


async def test_bad_requests_and_forged_webhooks_are_refused(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    response = await http.post("/images", json={"prompt": "a fox", "model": MODEL, "width": 1000})
    assert response.status_code == 422
    assert response.json()["detail"]["field"] == "width"
    forged = await http.post(
        "/webhooks/flux",
        json={"id": "x", "status": "Ready"},
        headers={"x-webhook-secret": "a guess"},
    )
    assert forged.status_code == 401
    sim.plan_next(status="Content Moderated", duration=0.2)
    moderated = await http.post("/images", json={"prompt": "refused", "model": MODEL})
    assert moderated.status_code == 422
    assert not sim.records.polls_by_task.keys() - {s.task_id for s in sim.records.submits}
