"""Batch at scale: a 100 000-item ``run_batch`` killed halfway and resumed.

The simulator runs in this process, on loopback, with fast settings (tiny images, 50 ms
generations, a high active-task limit). The client runs in a child process, so its
memory is measured alone: the first child is killed with SIGKILL once half the items
were submitted, a second child resumes the same folder. Printed: each child's peak RSS
(``wait4``'s ``ru_maxrss``), items per second, and the time from starting the resuming
process (Python start-up included) to its first submit, seen by the simulator.

    .venv/bin/python benchmarks/batch_scale.py [--items 100000] [--active 256]

Not part of the test run. Takes a few minutes at 100 000 items; start with --items 2000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from flux_async import AsyncFlux
from flux_async._batching._batch import run_batch
from flux_async.testing import FAKE_API_KEY, KNOWN_MODELS, Simulator, SimulatorConfig, serve

MODEL = "flux-2-klein-4b"


class CountingSimulator(Simulator):
    """The simulator, counting every submit that reaches it (its records are bounded)."""

    submits = 0
    _watch: tuple[int, anyio.Event] | None = None

    def reached(self, count: int) -> anyio.Event:
        """Return an event set once ``count`` submits have arrived."""
        event = anyio.Event()
        if self.submits >= count:
            event.set()
        else:
            self._watch = (count, event)
        return event

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST":
            self.submits += 1
            if self._watch is not None and self.submits >= self._watch[0]:
                self._watch[1].set()
        await super().__call__(scope, receive, send)


def simulator() -> CountingSimulator:
    config = SimulatorConfig(
        latency=dict.fromkeys(KNOWN_MODELS, (0.05, 0.2)),
        image_bytes=0,  # each image as small as it encodes (about 600 bytes)
        active_limit=100_000,
        credits=1e12,
        task_retention=120.0,  # forget old tasks: the simulator's memory stays flat too
        record_limit=1_000,
    )
    return CountingSimulator(config)


async def child(base_url: str, prompts: Path, out: Path, active: int) -> None:
    """Run the batch as the client process does (``--child``); print the summary."""
    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=base_url,
        max_active=active,
        max_downloads=64,
        max_concurrent_polls=128,
    ) as flux:
        summary = await run_batch(
            flux,
            prompts,
            out,
            model=MODEL,
            defaults={"width": 64, "height": 64},
            concurrency=2 * active,
        )
    print(json.dumps(summary.as_dict()), flush=True)


def spawn(base_url: str, prompts: Path, out: Path, active: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--child", base_url, str(prompts), str(out), str(active)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # noqa: S603


def reap(process: subprocess.Popen[bytes]) -> tuple[int, float, float]:
    """Wait for ``process``; return its exit status, peak RSS in MB and CPU seconds."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return process.returncode, usage.ru_maxrss * scale / 1e6, usage.ru_utime + usage.ru_stime


async def main(items: int, active: int) -> dict[str, Any]:
    sim = counter = simulator()
    figures: dict[str, Any] = {"items": items, "active": active}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("".join(f"benchmark prompt number {n}\n" for n in range(items)))
        out = Path(tmp) / "out"
        async with serve(sim) as base_url:
            started = time.monotonic()
            first = spawn(base_url, prompts, out, active)
            await counter.reached(items // 2).wait()
            first.send_signal(signal.SIGKILL)
            code, rss, cpu = await anyio.to_thread.run_sync(reap, first)
            killed_after = time.monotonic() - started
            await anyio.sleep(0.5)  # requests the dead client had in flight land now
            figures |= {"killed_at_submits": counter.submits, "run1_seconds": killed_after}
            figures |= {"run1_peak_rss_mb": rss, "run1_exit": code, "run1_cpu_seconds": cpu}
            before = counter.submits
            resumed_at = time.monotonic()
            second = spawn(base_url, prompts, out, active)
            with anyio.move_on_after(120):  # the child may also have nothing left to submit
                await counter.reached(before + 1).wait()
            figures["resume_to_first_submit_seconds"] = time.monotonic() - resumed_at
            code, rss, cpu = await anyio.to_thread.run_sync(reap, second)
            total = time.monotonic() - resumed_at
            assert second.stdout is not None
            summary = json.loads(second.stdout.read() or b"{}")
            figures |= {"run2_seconds": total, "run2_peak_rss_mb": rss, "run2_exit": code}
            figures["run2_cpu_seconds"] = cpu
            figures |= {"run2_summary": summary}
            figures["run2_items_per_second"] = (items - before) / total if total else 0.0
            figures["run1_items_per_second"] = before / killed_after
            figures["total_submits"] = counter.submits
    return figures


def report(f: dict[str, Any]) -> str:
    s = f["run2_summary"]
    per_item = 1000 * f["run2_cpu_seconds"] / max(f["items"] - f["killed_at_submits"], 1)
    lines = [
        f"items: {f['items']}, active-task limit {f['active']}, concurrency {2 * f['active']}",
        f"run 1 (SIGKILL after {f['killed_at_submits']} submits, {f['run1_seconds']:.1f} s): "
        f"peak RSS {f['run1_peak_rss_mb']:.0f} MB, {f['run1_items_per_second']:.0f} submits/s",
        f"run 2 (resume): first submit after {f['resume_to_first_submit_seconds']:.2f} s "
        f"(process start included); {f['run2_seconds']:.1f} s to finish, "
        f"{f['run2_items_per_second']:.0f} items/s, peak RSS {f['run2_peak_rss_mb']:.0f} MB",
        f"client CPU: {per_item:.1f} ms per item (run 2)",
        f"end: ok {s.get('ok')}, failed {s.get('failed')}, pending {s.get('pending')}, "
        f"possibly billed {s.get('possibly_billed')}; the simulator saw "
        f"{f['total_submits']} submits for {f['items']} items",
        f"python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        base, prompts_path, out_path, active_text = sys.argv[2:6]
        anyio.run(child, base, Path(prompts_path), Path(out_path), int(active_text))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--active", type=int, default=64, help="the client's max_active")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    results = anyio.run(main, args.items, args.active)
    print(json.dumps(results, indent=2) if args.json else report(results))
