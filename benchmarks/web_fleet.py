"""8 web workers on one key and one webhook URL: every caller answered, no webhook ignored.

    python benchmarks/web_fleet.py [--workers 8] [--callers 125] [--cap 24] [--speed 5]
                                   [--json benchmarks/results/web_fleet.json]

A web backend deployed as N worker processes (as gunicorn or uvicorn ``--workers`` run
it): each worker holds one ``AsyncFlux`` with the same Redis coordinator, the same
``webhook_url`` and ``webhook_secret``, and serves the client's ``webhook_app()`` with
uvicorn on one shared loopback port (``SO_REUSEPORT``: the kernel spreads the provider's
deliveries over the workers, as a load balancer would, so most land on a worker that
does not own the task). Each worker has ``--callers`` concurrent callers, each awaiting
``flux.generate(...)`` as one request of the web app would; all start at one ``go``.

The simulator (a child process, webhooks on, active-task limit ``--cap``) plans every
task's duration from one seeded lognormal (median 6 s, sigma 0.4: flux-2-pro) and POSTs
each ending to the shared URL. Figures: callers answered and failed; webhook deliveries
verified, of which forwarded to the owning worker through Redis and ignored (no worker
of the fleet owned the task), and tasks resolved by a webhook (confirmed by one poll of
the owner); polls per
task, 429s and the most tasks active as the simulator saw them; p50/p95 of a caller's
wait and the makespan beside ideal FIFO over the cap for the same durations. Times are
simulated seconds at ``--speed`` x real time (one clock shared by every process).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
from _clock import SharedClock
from _harness import lognormal_durations, percentile, table
from fleet import Proc, start_redis
from web_backend import ideal_latencies, simulator, webhook_server

MODEL = "flux-2-pro"
SECRET = "sim-fleet-webhook-secret"  # the simulator's; obviously not a real one


def shared_socket(port: int) -> socket.socket:
    """Return a socket bound to ``127.0.0.1:port`` that other processes may bind too."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def worker(options: dict[str, Any]) -> None:
    """One web worker (run by the benchmark, not by hand)."""
    from flux_async import AsyncFlux, Coordinator, FluxError
    from flux_async.testing import FAKE_API_KEY

    clock = SharedClock(options["speed"], epoch=options["epoch"])
    actions: Counter[str] = Counter()

    def hook(event: Any) -> None:
        if type(event).__name__ == "WebhookReceived":
            actions[event.action] += 1

    flux = AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=options["base_url"],
        clock=clock,
        max_active=options["cap"],
        coordinator=Coordinator(options["redis"], heartbeat=1.0, ttl=10.0, timeout=2.0),
        webhook_url=f"http://127.0.0.1:{options['port']}/webhooks/flux",
        webhook_secret=SECRET,
        event_hooks=[hook],
        drain_timeout=120.0,
    )
    sock = shared_socket(options["port"])
    latencies: list[float] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as out:
        async with webhook_server(flux.webhook_app(), sock), flux:
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)

            async def caller(index: int) -> None:
                called = clock.monotonic()
                try:
                    prompt = f"{options['name']} caller {index}"
                    await flux.generate(prompt, model=MODEL, output_dir=out)
                except FluxError as exc:
                    failures.append(type(exc).__name__)
                    return
                latencies.append(clock.monotonic() - called)

            async with anyio.create_task_group() as tg:
                for index in range(options["callers"]):
                    tg.start_soon(caller, index)
            print(f"done {clock.monotonic()!r}", flush=True)
            # Keep serving webhooks (other workers' tasks land here too) until told to go.
            await anyio.to_thread.run_sync(sys.stdin.read)
            hooks = flux.statistics().webhooks
            figures = {
                "latencies": latencies,
                "failures": failures,
                "actions": dict(actions),
                "resolved": hooks.resolved if hooks is not None else 0,
                "confirm_polls": hooks.confirm_polls if hooks is not None else 0,
                "ignored": hooks.ignored if hooks is not None else 0,
                "rejected": hooks.deliveries.rejected_total if hooks is not None else 0,
                "accepted": hooks.deliveries.accepted if hooks is not None else 0,
            }
    sock.close()
    print(f"figures {json.dumps(figures)}", flush=True)


async def run(args: argparse.Namespace, redis: str) -> dict[str, Any]:
    total = args.workers * args.callers
    durations = lognormal_durations(total, seed=17, median=6.0, sigma=0.4)
    clock = SharedClock(args.speed)
    config = {
        "image_bytes": 16 * 1024,
        "active_limit": args.cap,
        "credits": 1e9,
        "record_limit": 4 * total,
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = {"config": config, "durations": durations}
    async with simulator(clock, spec) as base_url, anyio.create_task_group() as tg:
        procs: list[Proc] = []
        for index in range(args.workers):
            options = {
                "speed": args.speed,
                "epoch": clock.epoch,
                "redis": redis,
                "base_url": base_url,
                "port": port,
                "cap": args.cap,
                "callers": args.callers,
                "name": f"w{index}",
            }
            command = [sys.executable, __file__, "worker", json.dumps(options)]
            proc = Proc(await anyio.open_process(command, stderr=None))
            procs.append(proc)
            tg.start_soon(proc.read)
        with anyio.fail_after(120):
            for proc in procs:
                await proc.wait_for("ready")
        start = clock.monotonic()
        for proc in procs:
            assert proc.process.stdin is not None
            await proc.process.stdin.send(b"go\n")
        with anyio.fail_after(600):  # a stuck fleet fails instead of hanging
            finishes = [float((await p.wait_for("done")).split()[1]) - start for p in procs]
        async with httpx.AsyncClient(timeout=30.0) as http:
            stats = (await http.get(f"{base_url}/bench/stats")).json()
        for proc in procs:
            assert proc.process.stdin is not None
            await proc.process.stdin.aclose()
        with anyio.fail_after(120):
            results = [json.loads((await p.wait_for("figures "))[8:]) for p in procs]
            for proc in procs:
                await proc.process.wait()
        tg.cancel_scope.cancel()
    latencies = [x for r in results for x in r["latencies"]]
    actions: Counter[str] = Counter()
    for r in results:
        actions.update(r["actions"])
    ideal = ideal_latencies(durations, args.cap)
    tasks = len(stats["tasks"])
    return {
        "callers": total,
        "answered": len(latencies),
        "failed": sum(len(r["failures"]) for r in results),
        "deliveries": sum(r["accepted"] for r in results),
        "actions": dict(actions),
        "forwarded": actions.get("forwarded", 0),
        "ignored": sum(r["ignored"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "resolved_by_webhook": sum(r["resolved"] for r in results),
        "confirm_polls": sum(r["confirm_polls"] for r in results),
        "tasks": tasks,
        "polls_per_task": sum(stats["polls_by_task"].values()) / max(1, tasks),
        "rejected_429": stats["rejected_429"],
        "max_active_seen": stats["max_active_seen"],
        "p50_over_ideal": percentile(latencies, 0.5) / percentile(ideal, 0.5),
        "p95_over_ideal": percentile(latencies, 0.95) / percentile(ideal, 0.95),
        "makespan_over_ideal": max(finishes) / max(ideal),
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis_process, url = start_redis(Path(tmp))
        try:
            result = await run(args, url)
        finally:
            redis_process.kill()
            redis_process.wait()
    columns = [
        ("answered", "answered", "d"),
        ("failed", "failed", "d"),
        ("webhooks", "deliveries", "d"),
        ("forwarded", "forwarded", "d"),
        ("ignored", "ignored", "d"),
        ("resolved by webhook", "resolved_by_webhook", "d"),
        ("polls / task", "polls_per_task", ".2f"),
        ("429s", "rejected_429", "d"),
        ("max active", "max_active_seen", "d"),
        ("p50 / ideal", "p50_over_ideal", ".3f"),
        ("p95 / ideal", "p95_over_ideal", ".3f"),
        ("makespan / ideal", "makespan_over_ideal", ".3f"),
    ]
    name = f"{args.workers} workers x {args.callers} callers"
    print(table([(name, result)], columns))
    print({"webhook actions": result["actions"]})
    if args.json:
        text = json.dumps(result, indent=2) + "\n"
        await anyio.Path(args.json).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        anyio.run(worker, json.loads(sys.argv[2]))
    else:
        parser = argparse.ArgumentParser(description=__doc__)
        parser.add_argument("--workers", type=int, default=8)
        parser.add_argument("--callers", type=int, default=125)
        parser.add_argument("--cap", type=int, default=24)
        parser.add_argument("--speed", type=float, default=5.0)
        parser.add_argument("--json", help="write the figures to this file")
        anyio.run(main, parser.parse_args())
