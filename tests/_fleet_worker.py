"""One process of a test fleet: a batch of prompts against a loopback simulator.

    python tests/_fleet_worker.py '{"base_url": ..., "redis": ..., "out": ..., ...}'

Prints ``ready`` once it joined the fleet, ``done <saved>`` when its own prompts are
finished, then stays in the fleet (heartbeating, adopting the tasks of processes that
die) until its stdin closes; then it drains for up to ``drain`` seconds and exits.
``events`` (a file path, optional) receives one JSON line per saved image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from flux_async import AsyncFlux, Coordinator, Event, ImageSaved
from flux_async._polling._policy import FixedIntervalPolicy
from flux_async.testing import FAKE_API_KEY


def _stdin_closed() -> None:
    while sys.stdin.readline():
        pass


async def main(options: dict[str, Any]) -> None:
    out = Path(options["out"])
    out.mkdir(parents=True, exist_ok=True)
    saved_log = out.parent / f"{out.name}.saved.jsonl"

    def hook(event: Event) -> None:
        if isinstance(event, ImageSaved):
            line = {"task_id": event.task_id, "path": str(event.path), "orphan": event.orphan}
            with saved_log.open("a", encoding="utf-8") as file:
                file.write(json.dumps(line) + "\n")

    coordinator = Coordinator(
        options["redis"],
        heartbeat=options.get("heartbeat", 0.3),
        ttl=options.get("ttl", 1.5),
        timeout=options.get("timeout", 0.5),
        pump_interval=options.get("pump_interval", 0.02),
    )
    prompts = [f"{options['name']}-{n}" for n in range(options["prompts"])]
    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=options["base_url"],
        max_active=options["cap"],
        coordinator=coordinator,
        orphan_dir=out.parent / "orphans",
        event_hooks=[hook],
        drain_timeout=options.get("drain", 30.0),
        # The simulator's tasks take a fraction of a real second: poll at that pace.
        poll_policy=FixedIntervalPolicy(options.get("poll_interval", 0.05)),
    ) as flux:
        print("ready", flush=True)
        saved = 0
        async for outcome in flux.generate_many(prompts, output_dir=out):
            if outcome.error is None:
                saved += 1
            else:
                print(f"error {outcome.index} {outcome.error!r}", flush=True)
        print(f"done {saved}", flush=True)
        await anyio.to_thread.run_sync(_stdin_closed, abandon_on_cancel=True)


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
