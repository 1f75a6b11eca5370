"""`flux-async batch` killed and resumed: a real subprocess against a loopback simulator.

Each test starts the simulator on 127.0.0.1 with short real-time latencies, runs
``python -m flux_async batch`` against it, kills it (SIGKILL, or SIGINT for Ctrl-C) at a
chosen moment, then runs the same command again and checks that every item ended saved
or explained, that no prompt was paid for twice and that no partial file sits under a
final name.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from flux_async._batching._ledger import LEDGER_NAME
from flux_async.testing import FAKE_API_KEY, KNOWN_MODELS, Simulator, SimulatorConfig, serve

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="signals and flock are POSIX"),
]

MODEL = "flux-2-klein-4b"  # the catalog expects it to be quick: the client polls early
PROMPTS = [f"a paper boat number {n}" for n in range(10)]
REPORTS = {"results.jsonl", "index.html"}
WIDE = ["--concurrency", "10"]  # a resumed run finishes in one wave (the last flag wins)


def loopback_sim(**changes: Any) -> Simulator:
    latency = dict.fromkeys(KNOWN_MODELS, (0.3, 0.2))
    return Simulator(SimulatorConfig(latency=latency, **({"image_bytes": 4096} | changes)))


def command(base: str, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flux_async",
        "batch",
        str(prompts),
        "--out",
        str(out),
        "--base-url",
        base,
        "--api-key",
        FAKE_API_KEY,
        "--model",
        MODEL,
        "--no-progress",
        "--json",
        *extra,
    ]


def states(out: Path) -> Counter[str]:
    """Return how many items the ledger shows (committed) in each state."""
    path = out / LEDGER_NAME
    if not path.exists():
        return Counter()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return Counter(s for (s,) in conn.execute("SELECT state FROM items"))
    except sqlite3.OperationalError:  # the schema is not there yet
        return Counter()
    finally:
        conn.close()


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(20):
        while not condition():  # noqa: ASYNC110 - another process changes the state
            await anyio.sleep(0.01)
    assert condition(), what


async def run_to_end(cmd: list[str]) -> tuple[int, dict[str, Any], str]:
    with anyio.fail_after(60):
        done = await anyio.run_process(cmd, check=False)
    summary = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, summary, done.stderr.decode()


async def kill_when(
    cmd: list[str], condition: Callable[[], bool], sig: signal.Signals = signal.SIGKILL
) -> tuple[int, str]:
    async with await anyio.open_process(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as process:
        await wait_for(condition, f"condition before {sig.name}")
        process.send_signal(sig)
        with anyio.fail_after(30):
            code = await process.wait()
        assert process.stderr is not None
        err = b""
        async for chunk in process.stderr:
            err += chunk
    return code, err.decode()


def complete_jpeg(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")


def check_folder(out: Path, sim: Simulator, prompts: list[str]) -> list[dict[str, Any]]:
    """Check the invariants every run must keep; return results.jsonl's records."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(prompts)))
    assert [r["prompt"] for r in records] == prompts
    created = Counter(r.body["prompt"] for r in sim.records.submits if r.task_id is not None)
    assert not [p for p, n in created.items() if n > 1], "a prompt was paid for twice"
    saved = {r["path"] for r in records if r["status"] == "ok"}
    for record in records:
        if record["status"] == "ok":
            data = (out / record["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"]
    # Any file under a final name is a complete image an item owns (or will claim).
    for path in out.iterdir():
        if not path.name.startswith(".") and path.name not in REPORTS:
            assert path.name in saved or complete_jpeg(path), path.name
    page = (out / "index.html").read_text()
    assert page.count("<figure ") == len(prompts)
    return records


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# boats\n" + "\n".join(PROMPTS) + "\n")
    return path


async def test_sigkill_after_submits_then_resume_polls_instead_of_paying(
    tmp_path: Path, prompts_file: Path
) -> None:
    sim = loopback_sim()
    out = tmp_path / "out"
    async with serve(sim) as base:
        cmd = command(base, prompts_file, out, "--concurrency", "4")
        code, _ = await kill_when(cmd, lambda: states(out)["submitted"] >= 3)
        assert code == -signal.SIGKILL
        at_kill = states(out)
        assert sum(1 for r in sim.records.submits if r.task_id is not None) >= 3
        code, summary, err = await run_to_end([*cmd, *WIDE])
    # An item caught mid-submit by the kill is explained, not replayed; the rest finish.
    caught = at_kill["submitting"]
    assert code == (1 if caught else 0), err
    assert (summary["ok"], summary["possibly_billed"]) == (10 - caught, caught)
    assert summary["submitted"] == at_kill["pending"]  # recorded tasks were polled, not re-sent
    records = check_folder(out, sim, PROMPTS)
    assert all(r["status"] == "ok" or "being submitted" in r["error"] for r in records)


async def test_sigkill_mid_download_leaves_no_partial_file(
    tmp_path: Path, prompts_file: Path
) -> None:
    # Images of 2.5 MB spread over a second: a temp file appears once the first 1 MiB
    # batch is on disk (a small image is written whole, in one go) and lives a while.
    sim = loopback_sim(slow_delivery_seconds=1.0, image_bytes=2_500_000)
    out = tmp_path / "out"

    def downloading() -> bool:
        return out.is_dir() and any(p.name.endswith(".part") for p in out.iterdir())

    async with serve(sim) as base:
        cmd = command(base, prompts_file, out, "--concurrency", "3")
        code, _ = await kill_when(cmd, downloading)
        assert code == -signal.SIGKILL
        caught = states(out)["submitting"]
        finals = [p for p in out.iterdir() if not p.name.startswith(".")]
        assert all(complete_jpeg(p) for p in finals)  # nothing half-written
        code, summary, err = await run_to_end([*cmd, *WIDE])
    assert code == (1 if caught else 0), err
    assert (summary["ok"], summary["possibly_billed"]) == (10 - caught, caught)
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    check_folder(out, sim, PROMPTS)


async def test_sigkill_mid_submit_is_reported_possibly_billed_and_not_replayed(
    tmp_path: Path, prompts_file: Path
) -> None:
    sim = loopback_sim()
    sim.inject("submit", delay=30.0)  # the first submit hangs: the kill finds it in flight
    out = tmp_path / "out"
    async with serve(sim) as base:
        cmd = command(base, prompts_file, out, "--concurrency", "3")
        code, _ = await kill_when(
            cmd, lambda: states(out)["submitting"] == 1 and states(out)["submitted"] >= 2
        )
        assert code == -signal.SIGKILL
        caught = states(out)["submitting"]  # the hung one, and rarely one more
        code, summary, err = await run_to_end([*cmd, *WIDE])
        assert code == 1, err
        assert (summary["ok"], summary["failed"]) == (10 - caught, caught)
        assert summary["possibly_billed"] == caught >= 1
        assert "may have been created and billed" in err
        records = check_folder(out, sim, PROMPTS)  # nothing created twice: not replayed
        lost = [r for r in records if r["status"] == "failed"]
        assert all(r["may_be_billed"] and "being submitted" in r["error"] for r in lost)
        sent = {r.body["prompt"] for r in sim.records.submits}
        assert any(r["prompt"] not in sent for r in lost)  # the hung submit, never answered


@pytest.mark.parametrize(
    ("sig", "exit_code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],  # SIGTERM: how services stop a process
)
async def test_ctrl_c_or_sigterm_stops_cleanly_and_resumes(
    tmp_path: Path, prompts_file: Path, sig: signal.Signals, exit_code: int
) -> None:
    sim = loopback_sim()
    for _ in range(4):
        sim.plan_next(duration=1.5)  # still generating when Ctrl-C comes
    out = tmp_path / "out"
    async with serve(sim) as base:
        cmd = command(base, prompts_file, out, "--concurrency", "4")
        code, err = await kill_when(cmd, lambda: states(out)["submitted"] >= 4, sig)
        assert code == exit_code, err
        assert "stopping" in err
        assert "Traceback" not in err
        left = states(out)
        assert left["submitting"] == 0
        assert left["submitted"] + left["ready"] >= 1  # kept for the next run
        records = check_folder(out, sim, PROMPTS)  # the reports were written on the way out
        assert {r["status"] for r in records} <= {"ok", "pending"}
        code, summary, err = await run_to_end([*cmd, *WIDE])
    assert code == 0, err
    assert summary["ok"] == 10
    check_folder(out, sim, PROMPTS)
