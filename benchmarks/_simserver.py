"""Run the loopback simulator in its own process for a benchmark (not a benchmark itself).

    python benchmarks/_simserver.py '{"speed": 5, "epoch": ..., "config": {...}, "plans": [...]}'

Prints the base URL on one line, then serves until its stdin closes. The simulator and
the benchmark's client share time through :class:`_clock.SharedClock` (same ``epoch``
and ``speed``), and so agree on every task's timeline. ``GET /bench/stats`` answers what
the simulator saw: 429s, polls per task, each task's submit and end time.

Two benchmark-only knobs in the spec: ``"delivery_mb_s"`` caps the bytes of every image
body together at that many MB per simulated second (a shared link), and a plan with a
``"model"`` key is consumed only by submits of that model (mixed-model workloads, whose
submits do not arrive in a fixed model order).

Running the server in a separate process keeps its CPU and memory out of the client's
figures (CPU per task, RSS growth, event-loop lag) and gives each its own core.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import sys
from typing import Any

import anyio
import anyio.to_thread
from _clock import SharedClock

from flux_async.testing import Simulator, SimulatorConfig, _server, serve
from flux_async.testing._account import SimAccount

_linked_protocol = _server._linked_protocol


def _no_delay_protocol() -> type[asyncio.Protocol]:
    """Return the server's protocol with Nagle's algorithm off on each connection.

    ``serve()`` binds a socket made with protocol number 0, so asyncio does not set
    TCP_NODELAY on accepted connections; a response written in parts then waits for
    the client's delayed ACK, 40 ms a request on Linux. Until ``_server.py`` sets it,
    the benchmarks set it here.
    """
    base: Any = _linked_protocol()

    class NoDelay(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    return NoDelay


_server._linked_protocol = _no_delay_protocol


class BenchAccount(SimAccount):
    """The simulated account, where a plan may be kept for the submits of one model."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.model_plans: dict[str, collections.deque[Any]] = {}

    def create(self, request: Any, model: str, body: Any) -> Any:
        if self.model_plans:
            # The parent reads and pops ``_plans[0]``: point it at this model's queue.
            self._plans = self.model_plans.setdefault(model, collections.deque())
        return super().create(request, model, body)


class BenchSimulator(Simulator):
    """The simulator with one extra route, ``GET /bench/stats``."""

    def __init__(
        self, config: SimulatorConfig, *, clock: SharedClock, delivery_mb_s: float = 0.0
    ) -> None:
        super().__init__(config, clock=clock)
        self._account = self._bench = BenchAccount(self.config, self.clock, self.records)
        self.webhooks = self._account.webhooks
        self.delivery_started: dict[str, float] = {}  # task id -> first request for its image
        self._byte_time = 1.0 / (delivery_mb_s * 1e6) if delivery_mb_s > 0 else 0.0
        self._link_free_at = 0.0  # clock second the shared link has sent its queue

    def plan_for(self, model: str, **plan: Any) -> None:
        """Script the next submit of ``model`` (its own first-in-first-out queue)."""
        self.plan_next(**plan)
        queue = self._bench.model_plans.setdefault(model, collections.deque())
        queue.append(self._bench._plans.pop())

    async def _paced(self, send: Any, message: Any) -> None:
        """Send one message; an image body's bytes wait their turn on the shared link."""
        body = message.get("body", b"") if message["type"] == "http.response.body" else b""
        if self._byte_time and body:
            now = self.clock.monotonic()
            self._link_free_at = max(now, self._link_free_at) + len(body) * self._byte_time
            await self.clock.sleep(self._link_free_at - now)
        await send(message)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/stats":
            body = json.dumps(self.stats()).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["path"].startswith("/results/"):
            task_id = scope["path"].split("/")[2]
            self.delivery_started.setdefault(task_id, self.clock.monotonic())
            if self._byte_time:

                async def paced(message: Any) -> None:
                    await self._paced(send, message)

                await super().__call__(scope, receive, paced)
                return
        await super().__call__(scope, receive, send)

    def stats(self) -> dict[str, Any]:
        """Return the figures a benchmark reads off the server."""
        tasks = {
            task_id: {
                "submitted_at": t.submitted_at,
                "end_at": t.end_at,
                "duration": t.duration,
                "model": t.model,
            }
            for task_id, t in self._bench.state.tasks.items()
        }
        return {
            "rejected_429": self.records.rejected_429,
            "max_active_seen": self.records.max_active_seen,
            "polls_by_task": dict(self.records.polls_by_task),
            "tasks": tasks,
            "delivery_started": self.delivery_started,
            "prompts": {task_id: t.prompt for task_id, t in self._bench.state.tasks.items()},
        }


async def main(spec: dict[str, Any]) -> None:
    clock = SharedClock(spec["speed"], epoch=spec["epoch"])
    config = SimulatorConfig(**spec.get("config", {}))
    sim = BenchSimulator(config, clock=clock, delivery_mb_s=spec.get("delivery_mb_s", 0.0))
    for plan in spec.get("plans", []):
        if "model" in plan:
            sim.plan_for(**plan)
        else:
            sim.plan_next(**plan)
    async with serve(sim) as base_url, anyio.create_task_group() as tg:
        print(base_url, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # the parent closes stdin to stop us
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
