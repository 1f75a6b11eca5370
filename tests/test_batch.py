"""run_batch against the in-process simulator: inputs, outputs, budget, credits, resume."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.console import Console

from flux_async import AsyncFlux
from flux_async._batching import _batch_setup as batch_module
from flux_async._batching._batch import BatchChangedError, BatchInputError, run_batch
from flux_async._batching._batch_progress import BatchProgress, _View, format_duration
from flux_async._batching._costs import CostBook, estimate_cost
from flux_async._batching._ledger import LEDGER_NAME, Ledger
from flux_async._request._build import build_request
from flux_async.testing import (
    FAKE_API_KEY,
    KNOWN_MODELS,
    ManualClock,
    ScaledClock,
    Simulator,
    SimulatorConfig,
)

from ._util import move_time

pytestmark = pytest.mark.anyio

SPEED = 400.0  # simulated seconds per real second


def fast_config(**changes: Any) -> SimulatorConfig:
    latency = dict.fromkeys(KNOWN_MODELS, (2.0, 0.3))
    return SimulatorConfig(latency=latency, image_bytes=2048, **changes)


@asynccontextmanager
async def simulated(
    config: SimulatorConfig | None = None, sim: Simulator | None = None, **options: Any
) -> AsyncIterator[tuple[Simulator, AsyncFlux]]:
    if sim is None:
        sim = Simulator(config or fast_config(), clock=ScaledClock(SPEED))
    async with AsyncFlux(
        api_key=FAKE_API_KEY,
        base_url=sim.config.api_base,
        transport=sim.transport(),
        clock=sim.clock,
        **options,
    ) as flux:
        yield sim, flux


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def results(out: Path) -> list[dict[str, Any]]:
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def created_per_prompt(sim: Simulator) -> Counter[str]:
    return Counter(r.body["prompt"] for r in sim.records.submits if r.task_id is not None)


def ledger_rows(out: Path) -> dict[int, tuple[str, str | None]]:
    conn = sqlite3.connect(out / LEDGER_NAME)
    try:
        rows = conn.execute("SELECT idx, state, task_id FROM items").fetchall()
    finally:
        conn.close()
    return {idx: (state, task_id) for idx, state, task_id in rows}


PROMPTS = [f"a red fox number {n}" for n in range(6)]
TXT = "# six foxes\n\n" + "\n".join(PROMPTS[:3]) + "\n\n# more\n" + "\n".join(PROMPTS[3:]) + "\n"


async def test_txt_batch_saves_every_item_and_reports_in_input_order(tmp_path: Path) -> None:
    prompts = write(tmp_path / "prompts.txt", TXT)
    out = tmp_path / "out"
    progress = BatchProgress()
    async with simulated() as (sim, flux):
        summary = await run_batch(flux, prompts, out, defaults={"width": 512}, progress=progress)
    assert (summary.total, summary.ok, summary.failed, summary.pending) == (6, 6, 0, 0)
    assert summary.exit_code == 0
    assert summary.spent == summary.spent_this_run == pytest.approx(18.0)
    assert progress.saved == 6
    assert progress.generating == progress.saving == progress.submitting == 0
    records = results(out)
    assert [r["index"] for r in records] == list(range(6))
    assert [r["prompt"] for r in records] == PROMPTS
    for record in records:
        assert record["status"] == "ok"
        assert record["task_id"]
        assert record["seed"] is not None
        assert record["error"] is None
        image = out / record["path"]
        assert image.parent == out
        assert image.read_bytes()[:3] == b"\xff\xd8\xff"
        assert record["path"].startswith(f"{record['index']:05d}-a-red-fox-number")
    assert all(r.body["width"] == 512 for r in sim.records.submits)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('<figure class="item ok"') == 6
    assert all(prompt in page for prompt in PROMPTS)


async def test_jsonl_items_override_defaults_and_name_their_files(tmp_path: Path) -> None:
    lines = [
        {"prompt": "a fox", "name": "fox", "width": 1024, "seed": 7},
        {"prompt": "a kontext owl", "model": "flux-kontext-pro", "aspect_ratio": "16:9"},
        {"prompt": "an owl", "name": "owl.png", "output_format": "png"},
        {"prompt": "a cat", "width": None},
    ]
    prompts = write(tmp_path / "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    async with simulated() as (sim, flux):
        summary = await run_batch(flux, prompts, out, defaults={"width": 512, "height": 512})
    assert summary.ok == 4
    bodies = {r.body["prompt"]: (r.model, r.body) for r in sim.records.submits}
    assert bodies["a fox"][1]["width"] == 1024
    assert bodies["a fox"][1]["seed"] == 7
    assert bodies["a fox"][1]["height"] == 512
    assert bodies["a kontext owl"][0] == "flux-kontext-pro"
    assert "width" not in bodies["a cat"][1]  # an item's null cancels the default
    paths = [r["path"] for r in results(out)]
    assert paths[0] == "fox.jpeg"
    assert paths[1].startswith("00001-a-kontext-owl")
    assert paths[1].endswith(".png")
    assert paths[2] == "owl.png"
    assert [r["name"] for r in results(out)] == ["fox", None, "owl", None]


async def test_csv_bad_lines_stop_the_run_before_any_submit(tmp_path: Path) -> None:
    csv = "prompt,width,seed\na fox,512,1\na cat,wide,2\nan owl,500,3\n,512,4\n"
    prompts = write(tmp_path / "p.csv", csv)
    out = tmp_path / "out"
    async with simulated() as (sim, flux):
        with pytest.raises(BatchInputError) as caught:
            await run_batch(flux, prompts, out)
        assert not sim.records.submits
    shown = [str(p) for p in caught.value.problems]
    assert shown[0] == f"{prompts}:3: width: must be a whole number, got 'wide'"
    assert any(s.startswith(f"{prompts}:4: width:") and "16" in s for s in shown)
    assert any(s.startswith(f"{prompts}:5: prompt") for s in shown)
    assert caught.value.invalid_items == 3
    assert ledger_rows(out) == {}  # a first run refused leaves nothing to "change" later


async def test_skip_invalid_records_bad_items_as_failed_not_billed(tmp_path: Path) -> None:
    csv = "prompt,width,seed\na fox,512,1\na cat,wide,2\nan owl,512,3\n"
    prompts = write(tmp_path / "p.csv", csv)
    out = tmp_path / "out"
    async with simulated() as (sim, flux):
        summary = await run_batch(flux, prompts, out, skip_invalid=True)
        assert len(sim.records.submits) == 2
    assert (summary.ok, summary.failed, summary.exit_code) == (2, 1, 1)
    bad = results(out)[1]
    assert bad["status"] == "failed"
    assert bad["may_be_billed"] is False
    assert "width: must be a whole number" in bad["error"]
    assert {r.body["seed"] for r in sim.records.submits} == {1, 3}
    async with simulated() as (sim, flux):
        again = await run_batch(flux, prompts, out)  # recorded already: no need to skip again
        assert not sim.records.submits
    assert (again.ok, again.failed) == (2, 1)
    write(prompts, csv.replace("a cat,wide,2", "a cat,512,2"))  # the fix is taken as it comes
    async with simulated() as (sim, flux):
        fixed = await run_batch(flux, prompts, out)
        assert [r.body["seed"] for r in sim.records.submits] == [2]
    assert (fixed.ok, fixed.failed, fixed.exit_code) == (3, 0, 0)


async def test_unreadable_csv_header_is_refused_even_with_skip_invalid(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.csv", "text,width\na fox,512\n")
    async with simulated() as (_, flux):
        with pytest.raises(BatchInputError, match="problem"):
            await run_batch(flux, prompts, tmp_path / "out", skip_invalid=True)


@pytest.mark.parametrize(
    "line",
    [
        {"prompt": "../../etc/x"},
        {"prompt": "/etc/passwd"},
        {"prompt": "a fox", "name": "../../evil"},
        {"prompt": "a fox", "name": "/var/abs/evil.jpeg"},
        {"prompt": "a fox", "name": "..\\..\\win"},
        {"prompt": "a fox", "name": "CON"},
        {"prompt": "a fox", "name": ".hidden"},
        {"prompt": "a fox", "name": "../"},
    ],
)
async def test_paths_from_prompts_and_names_stay_inside_out(
    tmp_path: Path, line: dict[str, str]
) -> None:
    prompts = write(tmp_path / "p.jsonl", json.dumps(line) + "\n")
    out = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    async with simulated() as (_, flux):
        summary = await run_batch(flux, prompts, out)
    assert summary.ok == 1
    record = results(out)[0]
    image = out / record["path"]
    assert image.is_file()
    assert image.parent == out
    assert "/" not in record["path"]
    assert not record["path"].startswith(".")
    created = set(tmp_path.rglob("*")) - before
    assert all(p == out or out in p.parents or p == out.parent for p in created)


async def test_duplicate_names_resolve_the_same_way_every_time(tmp_path: Path) -> None:
    lines = [
        {"prompt": "one", "name": "same"},
        {"prompt": "two", "name": "same"},
        {"prompt": "three", "name": "Same"},
        {"prompt": "four", "name": "00004"},
        {"prompt": ""},
    ]
    # Item 4 has an empty prompt: invalid, skipped, but its automatic stem is "00004".
    prompts = write(tmp_path / "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    async with simulated() as (_, flux):
        await run_batch(flux, prompts, out, skip_invalid=True)
    paths = [r["path"] for r in results(out)]
    # Names are compared ignoring case: "Same" and "same" are one file on macOS.
    assert paths[:3] == ["same.jpeg", "same-00001.jpeg", "Same-00002.jpeg"]
    # "00004" spells item 4's automatic name; item 4 keeps it even though it failed.
    assert paths[3] == "00004-00003.jpeg"
    assert paths[4] is None


async def test_max_cost_stops_submitting_before_the_budget_is_exceeded(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "\n".join(f"fox {n}" for n in range(10)) + "\n")
    out = tmp_path / "out"
    async with simulated() as (sim, flux):
        summary = await run_batch(flux, prompts, out, max_cost=10.0)
        assert len(sim.records.submits) == 3  # 3 x 3 credits; a 4th could reach 12
    assert (summary.ok, summary.pending, summary.stopped, summary.exit_code) == (3, 7, "budget", 1)
    assert summary.spent <= 10.0
    assert [r["status"] for r in results(out)] == ["ok"] * 3 + ["pending"] * 7
    async with simulated() as (sim, flux):
        again = await run_batch(flux, prompts, out, max_cost=30.0)
        assert len(sim.records.submits) == 7
    assert (again.ok, again.stopped, again.exit_code) == (10, None, 0)
    assert again.spent == pytest.approx(30.0)
    assert again.spent_this_run == pytest.approx(21.0)


async def test_an_interrupted_submit_whose_image_the_fleet_saved_is_taken(
    tmp_path: Path,
) -> None:
    # A process killed between a submit's answer and the ledger's "submitted" leaves the
    # item "submitting" (no task id); in a fleet a survivor saves its image under the
    # item's own name (the task's record carries it). The resume records that file, and
    # reports only the item whose folder holds no image written since its submit began.
    prompts = write(tmp_path / "p.txt", "a fox\nan owl\n")
    out = tmp_path / "out"
    stop = anyio.Event()
    stop.set()
    async with simulated() as (sim, flux):
        await run_batch(flux, prompts, out, stop=stop)
        assert not sim.records.submits
    async with await Ledger.open(out, run_config={}) as ledger:
        await ledger.mark_submitting(0)
        await ledger.mark_submitting(1)
    (out / "00000-a-fox.jpeg").write_bytes(b"\xff\xd8 the survivor's image \xff\xd9")
    # An image of item 1 from before its submit began is not that submit's image.
    stale = out / "00001-an-owl.jpeg"
    stale.write_bytes(b"\xff\xd8 an older attempt \xff\xd9")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    notes: list[str] = []
    async with simulated() as (sim, flux):
        again = await run_batch(flux, prompts, out, notify=notes.append)
        assert not sim.records.submits  # nothing paid again
    assert (again.ok, again.failed, again.possibly_billed) == (1, 1, 1)
    taken, reported = results(out)
    assert (taken["status"], taken["path"]) == ("ok", "00000-a-fox.jpeg")
    assert taken["sha256"] == hashlib.sha256((out / "00000-a-fox.jpeg").read_bytes()).hexdigest()
    assert reported["may_be_billed"] is True
    assert any("saved by the fleet" in note for note in notes)


async def test_402_stops_new_submits_and_leaves_the_rest_pending(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "\n".join(f"owl {n}" for n in range(8)) + "\n")
    out = tmp_path / "out"
    notes: list[str] = []
    async with simulated(fast_config(credits=9.0)) as (sim, flux):
        summary = await run_batch(flux, prompts, out, notify=notes.append, concurrency=2)
        statuses = [r.status for r in sim.records.submits]
    assert statuses.count(200) == 3
    assert 402 in statuses
    assert (summary.ok, summary.failed, summary.pending) == (3, 0, 5)
    assert (summary.stopped, summary.exit_code) == ("credits", 1)
    assert any("402" in note for note in notes)
    assert {state for state, _ in ledger_rows(out).values()} == {"saved", "pending"}


async def test_ambiguous_submit_is_reported_and_not_replayed(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "a fox\nan owl\n")
    out = tmp_path / "out"
    async with simulated() as (sim, flux):
        sim.inject("submit", status=500)
        summary = await run_batch(flux, prompts, out, concurrency=1)
        assert len(sim.records.submits) == 2
    assert (summary.ok, summary.failed, summary.possibly_billed) == (1, 1, 1)
    failed = results(out)[0]
    assert failed["may_be_billed"] is True
    assert "may have been created and billed" in failed["error"]
    async with simulated() as (sim, flux):
        again = await run_batch(flux, prompts, out)
        assert not sim.records.submits  # not replayed
    assert again.possibly_billed == 1
    async with simulated() as (sim, flux):
        retried = await run_batch(flux, prompts, out, retry_ambiguous=True)
        assert [r.body["prompt"] for r in sim.records.submits] == ["a fox"]
    assert (retried.ok, retried.possibly_billed, retried.exit_code) == (2, 0, 0)


async def test_failures_are_explained_and_retried_on_request(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "a fox\nan owl\na cat\n")
    out = tmp_path / "out"
    async with simulated(fast_config()) as (sim, flux):
        sim.plan_next(duration=1.0, status="Content Moderated")
        sim.plan_next(duration=1.0, status="Error")
        summary = await run_batch(flux, prompts, out, concurrency=1)
    records = results(out)
    assert [r["status"] for r in records] == ["failed", "failed", "ok"]
    assert records[0]["may_be_billed"] is False
    assert "oderat" in records[0]["error"]
    assert records[1]["may_be_billed"] is True
    assert records[1]["task_id"]
    assert summary.exit_code == 1
    assert summary.possibly_billed == 0
    async with simulated() as (sim, flux):
        retried = await run_batch(flux, prompts, out, retry_failed=True)
        assert len(sim.records.submits) == 2
    assert retried.ok == 3
    # The Error task was paid for; the moderated one was not.
    assert retried.spent == pytest.approx(3.0 + 3 * 3.0)


async def test_changed_defaults_are_explained_and_refused_unless_accepted(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "a fox\nan owl\n")
    out = tmp_path / "out"
    async with simulated() as (sim, flux):
        await run_batch(flux, prompts, out, defaults={"width": 512})
        with pytest.raises(BatchChangedError) as caught:
            await run_batch(flux, prompts, out, defaults={"width": 768})
        assert len(sim.records.submits) == 2
        assert "defaults.width: 512 -> 768" in caught.value.changes
        assert any("2 started item(s) have a new input" in c for c in caught.value.changes)
        write(prompts, "a fox\nan owl\na cat\n")  # appending is not a change
        grown = await run_batch(flux, prompts, out, defaults={"width": 512})
        assert (grown.ok, len(sim.records.submits)) == (3, 3)
        accepted = await run_batch(flux, prompts, out, defaults={"width": 768}, accept_changes=True)
        assert (accepted.ok, len(sim.records.submits)) == (3, 6)
        write(prompts, "a fox\n")
        with pytest.raises(BatchChangedError, match=r"2 item\(s\) fewer"):
            await run_batch(flux, prompts, out, defaults={"width": 768})
        shrunk = await run_batch(flux, prompts, out, defaults={"width": 768}, accept_changes=True)
    assert (shrunk.total, shrunk.ok) == (1, 1)
    assert len(results(out)) == 1


async def test_stop_keeps_generating_tasks_for_resume_and_nothing_is_paid_twice(
    tmp_path: Path,
) -> None:
    prompts = write(tmp_path / "p.txt", "\n".join(f"cat {n}" for n in range(12)) + "\n")
    out = tmp_path / "out"
    # Was flaky under load: on a ScaledClock(400) a 60 s task is 0.15 s of real time, so a
    # slow machine let tasks end before the stop was seen (no item left pending). On a
    # ManualClock that moves only below 30 s during the first run, no task can end before
    # the stop, whatever the machine's speed; the resume then lets them all end.
    stop = anyio.Event()
    clock = ManualClock()
    sim = Simulator(fast_config(), clock=clock)
    for _ in range(12):
        sim.plan_next(duration=60.0)  # cannot end before the stop: time stays below 30 s
    progress = BatchProgress()

    async def stop_after_submits() -> None:
        while progress.submitted < 4:  # noqa: ASYNC110 - the counter has no event to await
            await anyio.sleep(0.001)
        stop.set()

    first_done = anyio.Event()
    async with simulated(sim=sim) as (_, flux), anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(move_time, clock, first_done, below=30.0))
        tg.start_soon(stop_after_submits)
        with anyio.fail_after(60):
            summary = await run_batch(
                flux, prompts, out, stop=stop, progress=progress, concurrency=4
            )
        first_done.set()
    assert (summary.stopped, summary.exit_code) == ("interrupted", 130)
    states = Counter(state for state, _ in ledger_rows(out).values())
    assert states["submitted"] >= 4
    assert states["pending"] >= 1
    assert states["submitting"] == 0
    assert [r["status"] for r in results(out)].count("pending") == summary.pending
    resumed_done = anyio.Event()
    async with simulated(sim=sim) as (_, flux), anyio.create_task_group() as tg:
        # Tasks end by ~30 + 2 * 60 s; a download's 600 s limit must never fire.
        tg.start_soon(functools.partial(move_time, clock, resumed_done, below=500.0))
        with anyio.fail_after(60):
            resumed = await run_batch(flux, prompts, out)
        resumed_done.set()
    assert (resumed.ok, resumed.exit_code) == (12, 0)
    assert set(created_per_prompt(sim).values()) == {1}


async def test_resume_takes_an_image_saved_but_not_recorded(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "a fox\nan owl\n")
    out = tmp_path / "out"
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    async with simulated(sim=sim) as (_, flux):
        await run_batch(flux, prompts, out)
    # As if killed after the rename but before the batched `saved` was committed.
    conn = sqlite3.connect(out / LEDGER_NAME)
    with conn:
        conn.execute("UPDATE items SET state = 'ready', path = NULL, updated_at = 0 WHERE idx = 0")
    conn.close()
    deliveries = len(sim.records.delivery_headers)
    async with simulated(sim=sim) as (_, flux):
        resumed = await run_batch(flux, prompts, out)
    assert resumed.ok == 2
    assert len(sim.records.delivery_headers) == deliveries  # not downloaded again
    assert len(sim.records.submits) == 2
    assert results(out)[0]["path"].endswith(".jpeg")


def test_cost_estimates_are_conservative_until_the_server_prices_a_model() -> None:
    small = build_request("flux-2-pro", "fox", width=1024, height=1024)
    big = build_request("flux-2-pro", "fox", width=2048, height=2048)
    assert estimate_cost(small) == 3.0
    assert estimate_cost(big) == 3.0 + 3 * 1.5
    assert estimate_cost(build_request("flux-kontext-max", "fox")) == 8.0
    book = CostBook(10.0, spent=4.0)
    assert book.reserve(book.estimate(small))
    assert not book.reserve(4.0)
    book.settle("flux-2-pro", 3.0, 2.5, billed=True)
    assert (book.spent, book.reserved, book.estimate(big)) == (6.5, 0.0, 2.5)


async def test_cancelling_the_run_still_writes_the_reports_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    prompts = write(tmp_path / "p.txt", "\n".join(f"owl {n}" for n in range(8)) + "\n")
    out = tmp_path / "out"
    sim = Simulator(fast_config(), clock=ScaledClock(SPEED))
    progress = BatchProgress()
    async with simulated(sim=sim) as (_, flux), anyio.create_task_group() as tg:

        async def cancel_after_submits() -> None:
            while progress.submitted < 2:  # noqa: ASYNC110 - the counter has no event to await
                await anyio.sleep(0.001)
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_after_submits)
        await run_batch(flux, prompts, out, progress=progress, concurrency=2)
        pytest.fail("the run should have been cancelled")
    assert len(results(out)) == 8  # written on the way out, from the ledger
    async with simulated(sim=sim) as (_, flux):
        resumed = await run_batch(flux, prompts, out)
    assert resumed.ok + resumed.possibly_billed == 8
    assert set(created_per_prompt(sim).values()) == {1}


def test_the_progress_view_renders_every_counter() -> None:
    progress = BatchProgress(total=10, saved=4, failed=1, submitted=7, generating=2, spent=21.0)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(_View(progress))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "5/10" in text
    assert "saved 4" in text
    assert "failed 1" in text
    assert "generating 2" in text
    assert "credits 21.00" in text
    assert "ETA" in text
    assert format_duration(3725) == "1h02m"
    assert format_duration(65) == "1m05s"
    assert format_duration(None) == "-"


async def test_an_unchanged_input_is_not_scanned_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = write(tmp_path / "p.txt", "a fox\nan owl\n")
    out = tmp_path / "out"
    scans: list[Path] = []
    real_scan = batch_module.scan_input  # type: ignore[attr-defined]

    async def counting_scan(ledger: Any, path: Path, **options: Any) -> Any:
        scans.append(path)
        return await real_scan(ledger, path, **options)

    monkeypatch.setattr(batch_module, "scan_input", counting_scan)
    async with simulated() as (_, flux):
        await run_batch(flux, prompts, out)
        again = await run_batch(flux, prompts, out)
        assert (len(scans), again.ok) == (1, 2)
        await run_batch(flux, prompts, out, defaults={"seed": 1}, accept_changes=True)
        write(prompts, "a fox\nan owl\na cat\n")
        grown = await run_batch(flux, prompts, out, defaults={"seed": 1})
    assert (len(scans), grown.ok) == (3, 3)
