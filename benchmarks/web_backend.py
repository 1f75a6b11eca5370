"""A web backend's load: N concurrent callers of one AsyncFlux, polling-only vs webhooks.

    .venv/bin/python benchmarks/web_backend.py [--callers 1000] [--cap 24] [--speed 5]

N callers each ``await flux.generate(...)`` at once through one client (as N requests
of a web app would); the account allows ``--cap`` active tasks, so all but ``cap`` of
them queue. The simulator runs in a child process on loopback with every task's
duration planned from one seeded lognormal (median 6 s, sigma 0.4: flux-2-pro), so each
mode sees the same durations in acceptance order. In the webhook modes the simulator
POSTs each ending to the client's ``webhook_app()``, served by uvicorn in the client's
process, over loopback HTTP.

Modes: polling only (the default hazard-shaped schedule); hybrid (webhooks, fallback
polls from 30 s after submit); hybrid with 10 % of the webhooks lost (the fallback finds
them), with the default 30 s fallback and with 10 s.

Figures, in simulated seconds: p50/p95 of the time from a caller's call to its saved
image, beside the ideal for the same durations and cap (FIFO, zero detection lag, zero
round trip, all callers arriving at once); poll requests per task as the simulator
counted them (webhook confirmations included) and the share saved against polling
only; client CPU per caller and client peak-RSS growth (the webhook server included,
the simulator not; each mode runs in a fresh process). Client and simulator share one
clock at ``--speed`` times real time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
from _clock import SharedClock
from _harness import Meter, lognormal_durations, percentile, table

from flux_async import AsyncFlux, FluxError
from flux_async.testing import FAKE_API_KEY, serve

SELF = Path(__file__).resolve()
MODEL = "flux-2-pro"
COLUMNS = [
    ("p50 (s)", "p50", ".1f"),
    ("p50 / ideal", "p50_ratio", ".3f"),
    ("p95 (s)", "p95", ".1f"),
    ("p95 / ideal", "p95_ratio", ".3f"),
    ("polls / task", "polls", ".2f"),
    ("polls saved", "saved", ".0%"),
    ("CPU / caller (ms)", "cpu_ms", ".2f"),
    ("RSS growth (MiB)", "rss_mib", ".1f"),
]


def ideal_latencies(durations: Sequence[float], cap: int) -> list[float]:
    """Return each caller's call-to-image seconds under ideal FIFO over ``cap`` slots."""
    slots = [0.0] * cap
    done = []
    for d in durations:
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + d)
        done.append(start + d)
    return done


@contextlib.asynccontextmanager
async def simulator(clock: SharedClock, spec: dict[str, Any]) -> AsyncIterator[str]:
    """Serve a simulator (webhooks on) in a child process; yield its base URL."""
    spec = {**spec, "speed": clock.speed, "epoch": clock.epoch}
    command = [sys.executable, str(SELF), "--serve-sim", json.dumps(spec)]
    process = await anyio.open_process(command, stdin=-1, stdout=-1, stderr=None)
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        yield line.decode().strip()
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


async def serve_simulator(spec: dict[str, Any]) -> None:
    """The child process: the simulator on loopback, sending webhooks over real HTTP."""
    from _simserver import BenchSimulator  # also switches Nagle off on its connections

    from flux_async.testing import SimulatorConfig

    clock = SharedClock(spec["speed"], epoch=spec["epoch"])
    sim = BenchSimulator(SimulatorConfig(**spec["config"]), clock=clock)
    for duration in spec["durations"]:
        sim.plan_next(duration=duration)
    async with serve(sim) as base_url, sim.webhooks.running(), anyio.create_task_group() as tg:
        print(base_url, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # the parent closes stdin to stop us
        tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def webhook_server(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` (the client's webhook app) with uvicorn on ``sock``."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class NoDelay(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    config = uvicorn.Config(
        app, http=NoDelay, lifespan="off", log_config=None, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
            await anyio.sleep(0.01)
        try:
            yield
        finally:
            server.should_exit = True


async def one_mode(
    args: argparse.Namespace,
    durations: list[float],
    *,
    webhooks: bool,
    loss: float,
    fallback: float = 30.0,
) -> dict[str, float]:
    clock = SharedClock(args.speed)
    config = {
        "image_bytes": 64 * 1024,
        "active_limit": args.cap,
        "credits": 1e9,
        "webhook_loss": loss,
        "record_limit": 4 * args.callers,
    }
    spec = {"config": config, "durations": durations}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    hook_url = f"http://127.0.0.1:{sock.getsockname()[1]}/webhooks/flux" if webhooks else None
    latencies: list[float] = []
    failures = 0
    meter = Meter()
    try:
        async with simulator(clock, spec) as base_url:
            flux = AsyncFlux(
                api_key=FAKE_API_KEY,
                base_url=base_url,
                clock=clock,
                max_active=args.cap,
                webhook_url=hook_url,
                webhook_fallback=fallback,
            )
            with tempfile.TemporaryDirectory() as out:
                async with (
                    meter.measure(),
                    webhook_server(flux.webhook_app(), sock),
                    flux,
                    anyio.create_task_group() as tg,
                ):

                    async def caller(index: int) -> None:
                        nonlocal failures
                        called = clock.monotonic()
                        try:
                            await flux.generate(f"caller {index}", model=MODEL, output_dir=out)
                        except FluxError:
                            failures += 1
                            return
                        latencies.append(clock.monotonic() - called)

                    for index in range(args.callers):
                        tg.start_soon(caller, index)
            async with httpx.AsyncClient(timeout=30.0) as http:
                stats = (await http.get(f"{base_url}/bench/stats")).json()
    finally:
        sock.close()
    ideal = ideal_latencies(durations, args.cap)
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return {
        "ok": float(len(latencies)),
        "failed": float(failures),
        "p50": p50,
        "p95": p95,
        "p50_ratio": p50 / percentile(ideal, 0.5),
        "p95_ratio": p95 / percentile(ideal, 0.95),
        "polls": sum(stats["polls_by_task"].values()) / args.callers,
        "max_active": float(stats["max_active_seen"]),
        "r429": float(stats["rejected_429"]),
        "cpu_ms": 1000.0 * meter.cpu / args.callers,
        "rss_mib": meter.rss_growth / 2**20,
    }


async def in_fresh_process(
    args: argparse.Namespace, *, webhooks: bool, loss: float, fallback: float
) -> dict[str, float]:
    """Run one mode in a new process, so its memory and CPU are its own; return figures."""
    spec = {**vars(args), "webhooks": webhooks, "loss": loss, "fallback": fallback}
    command = [sys.executable, str(SELF), "--run-mode", json.dumps(spec)]
    result = await anyio.run_process(command, stderr=None)
    figures: dict[str, float] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return figures


async def run_mode(spec: dict[str, Any]) -> None:
    """The child process of :func:`in_fresh_process`: print one mode's figures as JSON."""
    args = argparse.Namespace(**{k: spec[k] for k in ("callers", "cap", "speed", "seed")})
    durations = lognormal_durations(args.callers, args.seed, median=6.0, sigma=0.4)
    figures = await one_mode(
        args, durations, webhooks=spec["webhooks"], loss=spec["loss"], fallback=spec["fallback"]
    )
    print(json.dumps(figures))


async def main(args: argparse.Namespace) -> None:
    durations = lognormal_durations(args.callers, args.seed, median=6.0, sigma=0.4)
    ideal = ideal_latencies(durations, args.cap)
    print(
        f"{args.callers} concurrent callers of one AsyncFlux, cap {args.cap}, {MODEL} "
        f"durations lognormal(median 6 s, sigma 0.4) seed {args.seed}; clock at "
        f"{args.speed:g}x real time. Ideal call-to-image: p50 "
        f"{percentile(ideal, 0.5):.1f} s, p95 {percentile(ideal, 0.95):.1f} s."
    )
    modes = [
        ("polling only", False, 0.0, 30.0),
        ("hybrid: webhooks, fallback 30 s", True, 0.0, 30.0),
        ("hybrid, 10 % lost, fallback 30 s", True, 0.1, 30.0),
        ("hybrid, 10 % lost, fallback 10 s", True, 0.1, 10.0),
    ]
    rows: list[tuple[str, dict[str, float]]] = []
    for name, webhooks, loss, fallback in modes:
        wall = time.perf_counter()
        figures = await in_fresh_process(args, webhooks=webhooks, loss=loss, fallback=fallback)
        rows.append((name, figures))
        print(
            f"  {name}: {figures['ok']:.0f} ok, {figures['failed']:.0f} failed, "
            f"max active {figures['max_active']:.0f}, 429s {figures['r429']:.0f}, "
            f"{time.perf_counter() - wall:.1f} s real",
            flush=True,
        )
    baseline = rows[0][1]["polls"]
    for _, figures in rows:
        figures["saved"] = 1.0 - figures["polls"] / baseline
    print()
    print(table(rows, COLUMNS))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--serve-sim", "--run-mode"):
        child = serve_simulator if sys.argv[1] == "--serve-sim" else run_mode
        anyio.run(child, json.loads(sys.argv[2]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=24)
    parser.add_argument("--speed", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    anyio.run(main, parser.parse_args())
