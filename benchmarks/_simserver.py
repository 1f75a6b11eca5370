"""Run the loopback simulator in its own process for a benchmark (not a benchmark itself).

    python benchmarks/_simserver.py '{"speed": 5, "epoch": ..., "config": {...}, "plans": [...]}'

Prints the base URL on one line, then serves until its stdin closes. The simulator and
the benchmark's client share time through :class:`_clock.SharedClock` (same ``epoch``
and ``speed``), and so agree on every task's timeline. ``GET /bench/stats`` answers what
the simulator saw: 429s, polls per task, each task's submit and end time.

Running the server in a separate process keeps its CPU and memory out of the client's
figures (CPU per task, RSS growth, event-loop lag) and gives each its own core.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Any

import anyio
import anyio.to_thread
from _clock import SharedClock

from flux_async.testing import Simulator, SimulatorConfig, _server, serve

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


class BenchSimulator(Simulator):
    """The simulator with one extra route, ``GET /bench/stats``."""

    def __init__(self, config: SimulatorConfig, *, clock: SharedClock) -> None:
        super().__init__(config, clock=clock)
        self.delivery_started: dict[str, float] = {}  # task id -> first request for its image

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
        await super().__call__(scope, receive, send)

    def stats(self) -> dict[str, Any]:
        """Return the figures a benchmark reads off the server."""
        tasks = {
            task_id: {"submitted_at": t.submitted_at, "end_at": t.end_at, "duration": t.duration}
            for task_id, t in self._state.tasks.items()
        }
        return {
            "rejected_429": self.records.rejected_429,
            "max_active_seen": self.records.max_active_seen,
            "polls_by_task": dict(self.records.polls_by_task),
            "tasks": tasks,
            "delivery_started": self.delivery_started,
            "prompts": {task_id: t.prompt for task_id, t in self._state.tasks.items()},
        }


async def main(spec: dict[str, Any]) -> None:
    clock = SharedClock(spec["speed"], epoch=spec["epoch"])
    sim = BenchSimulator(SimulatorConfig(**spec.get("config", {})), clock=clock)
    for plan in spec.get("plans", []):
        sim.plan_next(**plan)
    async with serve(sim) as base_url, anyio.create_task_group() as tg:
        print(base_url, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # the parent closes stdin to stop us
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
