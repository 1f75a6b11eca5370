"""Peak memory and time of one client against a hostile server: issue 9's findings 5 and 6.

Two processes: this script serves :class:`flux_async.testing.HostileServer` on loopback
(from this checkout) and runs the client in a child process, whose ``flux_async`` comes
from ``--client-path`` (default: this checkout; point it at an export of an older commit
to measure the "before"). The child reports its RSS before the request and its peak RSS
(``VmHWM``) after, in MiB, the seconds the generate took, its outcome, and the files left.

    python benchmarks/hostile_rss.py poll-100mb     # a 100 MB poll reply
    python benchmarks/hostile_rss.py gzip-bomb      # 0.5 MB of gzip inflating to 500 MB
    python benchmarks/hostile_rss.py drip-poll      # a poll reply dripping 1 byte / 0.2 s

Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio

from flux_async.testing import HostileReply, HostileServer, serve

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("poll-100mb", "gzip-bomb", "drip-poll")

CHILD = r"""
import asyncio, json, sys, tempfile, time
from pathlib import Path

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0

async def main(base):
    from flux_async import AsyncFlux, FluxError
    out = Path(tempfile.mkdtemp(prefix="hostile-"))
    async with AsyncFlux(api_key="sim-fake-key-rss", base_url=base, task_timeout=30.0,
                         timeout=5.0) as flux:
        before = status("VmRSS")
        start = time.perf_counter()
        try:
            await asyncio.wait_for(flux.generate("a fox", output_dir=out), 120)
            outcome = "ok"
        except (FluxError, asyncio.TimeoutError) as exc:
            outcome = type(exc).__name__ + ": " + str(exc)[:160]
        seconds = time.perf_counter() - start
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    sizes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps({"rss_before_mib": round(before, 1), "peak_rss_mib": round(status("VmHWM"), 1),
                      "seconds": round(seconds, 2), "outcome": outcome,
                      "files_left": left, "bytes_left": sizes}))

asyncio.run(main(sys.argv[1]))
"""


def script(server: HostileServer, scenario: str) -> None:
    if scenario == "poll-100mb":
        server.script("poll", HostileReply.huge(100 * MiB), times=100)
    elif scenario == "gzip-bomb":
        server.script("delivery", HostileReply.gzip_bomb(500 * MiB), times=100)
    else:
        body = json.dumps({"status": "Pending", "pad": "x" * 400}).encode()
        server.script("poll", HostileReply.dripping(body, every=0.2), times=1000)


async def main(scenario: str, client_path: str) -> None:
    server = HostileServer()
    script(server, scenario)
    async with serve(server) as base:
        env = {**os.environ, "PYTHONPATH": client_path}
        with tempfile.TemporaryDirectory():
            start = time.perf_counter()
            done = await anyio.run_process(
                [sys.executable, "-c", CHILD, base], env=env, check=False
            )
            wall = time.perf_counter() - start
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    report.update(scenario=scenario, client=client_path, wall_seconds=round(wall, 2))
    print(json.dumps(report))
    if done.returncode:
        sys.stderr.write(done.stderr.decode()[-2000:])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--client-path", default=str(ROOT))
    args = parser.parse_args()
    anyio.run(main, args.scenario, args.client_path)
