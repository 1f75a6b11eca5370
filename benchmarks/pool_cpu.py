"""CPU per poll against the API client's pool size: what httpcore's pool scan costs.

    .venv/bin/python benchmarks/pool_cpu.py [--polls 800] [--streams 8]

Against the loopback simulator in a child process: for each ``keep_alive`` size, open
40 connections at once (a burst of submits and polls), then send ``--polls`` polls from
``--streams`` concurrent streams through ``_providers._http.api_client`` and report the
client's CPU per poll. httpcore checks every connection its pool holds on every
request, so the idle connections kept alive cost CPU on each poll.
"""

from __future__ import annotations

import argparse
import time

import anyio
from _clock import SharedClock
from _harness import simulator

from flux_async._providers._http import api_client


async def cpu_per_poll(base_url: str, keep_alive: int, polls: int, streams: int) -> float:
    url = f"{base_url}/v1/get_result"
    async with api_client(None, timeout=30.0, busy=40, keep_alive=keep_alive) as http:
        async with anyio.create_task_group() as burst:
            for _ in range(40):
                burst.start_soon(http.get, url)
        start = time.process_time()

        async def stream() -> None:
            for _ in range(polls // streams):
                await http.get(url, params={"id": "x"})

        async with anyio.create_task_group() as tg:
            for _ in range(streams):
                tg.start_soon(stream)
        return (time.process_time() - start) / (polls // streams * streams)


async def main(args: argparse.Namespace) -> None:
    async with simulator(SharedClock(1.0), []) as server:
        for keep_alive in (40, 16, 8, 40, 16, 8):
            cpu = await cpu_per_poll(server.base_url, keep_alive, args.polls, args.streams)
            print(f"keep-alive {keep_alive:2d}: {cpu * 1000:.2f} ms CPU per poll", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=800)
    parser.add_argument("--streams", type=int, default=8)
    anyio.run(main, parser.parse_args())
