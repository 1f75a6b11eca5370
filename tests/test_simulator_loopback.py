"""The simulator served on loopback: real HTTP, real sockets, real failures."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from flux_async.testing import FAKE_API_KEY, ManualClock, Simulator, SimulatorConfig, serve

pytestmark = pytest.mark.anyio

KEY = {"x-key": FAKE_API_KEY}
# The words httpx uses when a socket closes mid-body; the in-process transport copies them.
CUT_SHORT = r"without sending complete message body \(received \d+ bytes"


async def collect(response: httpx.Response, into: list[bytes]) -> None:
    async for chunk in response.aiter_raw():
        into.append(chunk)


async def ready_sample(sim: Simulator, clock: ManualClock, client: httpx.AsyncClient) -> str:
    sim.plan_next(duration=2.0)
    submitted = await client.post("/v1/flux-2-pro", json={"prompt": "a red fox"}, headers=KEY)
    assert submitted.status_code == 200
    clock.advance(2.0)
    reply: dict[str, Any] = (await client.get(submitted.json()["polling_url"])).json()
    assert reply["status"] == "Ready"
    sample: str = reply["result"]["sample"]
    return sample


async def test_full_round_trip_over_http() -> None:
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(image_bytes=300_000), clock=clock)
    async with serve(sim) as base:
        port = urlsplit(base).port
        assert base == f"http://127.0.0.1:{port}" == sim.config.api_base
        assert sim.config.poll_base == f"http://localhost:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            sim.plan_next(duration=2.0)
            submitted = await client.post("/v1/flux-2-pro", json={"prompt": "fox"}, headers=KEY)
            polling_url = submitted.json()["polling_url"]
            assert urlsplit(polling_url).hostname == "localhost"
            pending = (await client.get(polling_url)).json()
            assert (pending["status"], pending["progress"]) == ("Pending", 0.0)
            clock.advance(2.0)
            sample = (await client.get(polling_url)).json()["result"]["sample"]
            received = bytearray()
            async with client.stream("GET", sample) as response:
                assert response.headers["content-type"] == "image/jpeg"
                declared = int(response.headers["content-length"])
                async for chunk in response.aiter_bytes():
                    received += chunk
            assert len(received) == declared == 300_000
            assert received.startswith(b"\xff\xd8\xff")
    hosts = {record.host.split(":")[0] for record in sim.records.requests}
    assert hosts == {"127.0.0.1", "localhost"}
    assert sim.config.api_base == "https://api.sim.invalid"


async def test_drop_closes_the_socket_without_an_answer() -> None:
    clock = ManualClock()
    sim = Simulator(clock=clock)
    async with serve(sim) as base, httpx.AsyncClient(base_url=base) as client:
        sim.inject("submit", drop=True)
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.post("/v1/flux-2-pro", json={"prompt": "fox"}, headers=KEY)
        assert sim.active_count() == 1  # the task exists: the failure was ambiguous
        credits = await client.get("/v1/credits", headers=KEY)
        assert credits.json() == {"credits": 997.0}


async def test_truncate_stops_short_of_content_length() -> None:
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(image_bytes=200_000), clock=clock)
    async with serve(sim) as base, httpx.AsyncClient(base_url=base) as client:
        sample = await ready_sample(sim, clock, client)
        sim.inject("delivery", truncate=True)
        chunks: list[bytes] = []
        async with client.stream("GET", sample) as response:
            declared = int(response.headers["content-length"])
            with pytest.raises(httpx.RemoteProtocolError, match=CUT_SHORT):
                await collect(response, chunks)
        assert 0 < sum(map(len, chunks)) < declared == 200_000
        again = await client.get(sample)
        assert len(again.content) == 200_000


async def test_server_stops_when_the_body_fails() -> None:
    sim = Simulator(clock=ManualClock())
    with pytest.raises(RuntimeError, match="boom"):
        async with serve(sim) as base:
            raise RuntimeError("boom")
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{base}/v1/credits", headers=KEY)
    assert sim.config.poll_base == "https://api.eu2.sim.invalid"
