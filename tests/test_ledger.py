"""The SQLite ledger: states, durability policy, resume helpers, crash safety, no secrets."""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from flux_async._batching._ledger import (
    INTERRUPTED_SUBMIT,
    LEDGER_NAME,
    ItemState,
    Ledger,
    LedgerError,
    run_config_changes,
    scrub_secrets,
)
from flux_async._core._clock import ManualClock

pytestmark = pytest.mark.anyio

CONFIG = {"model": "flux-dev", "defaults": {"width": 1024}, "input": {"path": "p.txt"}}


def rows(n: int, *, start: int = 0) -> list[tuple[int, str, str | None, str, str | None]]:
    return [(i, f"fp{i}", f"prompt {i}", "flux-dev", None) for i in range(start, start + n)]


def committed(directory: Path) -> dict[int, str]:
    """Return the states another process would see now (only committed rows)."""
    conn = sqlite3.connect(directory / LEDGER_NAME)
    try:
        return dict(conn.execute("SELECT idx, state FROM items").fetchall())
    finally:
        conn.close()


def files_containing(directory: Path, needle: bytes) -> list[str]:
    return [f.name for f in directory.iterdir() if needle in f.read_bytes()]


async def test_open_creates_folder_and_wal_database(tmp_path: Path) -> None:
    directory = tmp_path / "out" / "run"
    async with await Ledger.open(directory, run_config=CONFIG) as ledger:
        assert ledger.path == directory / LEDGER_NAME
        assert ledger.stored_run_config() is None
        conn = sqlite3.connect(ledger.path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        finally:
            conn.close()
        assert "open" in repr(ledger)
    assert "closed" in repr(ledger)


async def test_item_lifecycle_records_every_field(tmp_path: Path) -> None:
    clock = ManualClock()
    async with await Ledger.open(tmp_path, run_config=CONFIG, clock=clock) as ledger:
        await ledger.add_items([(0, "fp0", "a fox", "flux-2-pro", "fox")])
        item = await ledger.get(0)
        assert item is not None
        assert (item.state, item.prompt, item.model, item.name) == (
            ItemState.PENDING,
            "a fox",
            "flux-2-pro",
            "fox",
        )
        assert item.updated_at == clock.time()
        await ledger.mark_submitting(0)
        await ledger.mark_submitted(0, task_id="t-0", polling_url="http://127.0.0.1/p", cost=2.5)
        clock.advance(3.0)
        await ledger.mark_ready(0, sample_url="http://127.0.0.1/s.jpeg?sig=1", deadline=1e9)
        await ledger.mark_saved(
            0, path="00000-a-fox.jpeg", sha256="ab" * 32, seed=7, prompt_used="x"
        )
        item = await ledger.get(0)
        assert item is not None
        assert item.state is ItemState.SAVED
        assert (item.task_id, item.polling_url, item.cost) == ("t-0", "http://127.0.0.1/p", 2.5)
        assert (item.sample_url, item.deadline) == ("http://127.0.0.1/s.jpeg?sig=1", 1e9)
        assert (item.path, item.sha256, item.seed, item.prompt_used) == (
            "00000-a-fox.jpeg",
            "ab" * 32,
            7,
            "x",
        )
        assert item.updated_at == clock.time()
        assert item.may_be_billed
        assert not item.ambiguous
        assert await ledger.get(1) is None
        with pytest.raises(LedgerError, match="item 5"):
            await ledger.mark_submitting(5)


async def test_add_items_is_idempotent_and_reports_changed_inputs(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        first = await ledger.add_items(iter(rows(5)), chunk=2)
        assert (first.added, first.existing, first.changed) == (5, 0, 0)
        await ledger.mark_submitting(1)
        again = rows(6)
        again[2] = (2, "different", "prompt 2 edited", "flux-dev", None)
        report = await ledger.add_items(again, chunk=4)
        assert (report.added, report.existing, report.changed) == (1, 5, 1)
        assert report.changed_indices == (2,)
        kept = await ledger.get(2)
        assert kept is not None
        assert (kept.fingerprint, kept.prompt) == ("fp2", "prompt 2")
        in_flight = await ledger.get(1)
        assert in_flight is not None
        assert in_flight.state is ItemState.SUBMITTING
        await ledger.replace(
            2, fingerprint="different", prompt="prompt 2 edited", model="m", name="n"
        )
        replaced = await ledger.get(2)
        assert replaced is not None
        assert (replaced.fingerprint, replaced.prompt, replaced.state) == (
            "different",
            "prompt 2 edited",
            ItemState.PENDING,
        )
        assert (await ledger.counts())[ItemState.PENDING] == 5


async def test_critical_writes_commit_at_once_and_others_are_batched(tmp_path: Path) -> None:
    clock = ManualClock()
    ledger = await Ledger.open(
        tmp_path, run_config=CONFIG, clock=clock, commit_every=3, commit_interval=10.0
    )
    try:
        await ledger.add_items(rows(6))
        await ledger.mark_submitting(0)
        assert committed(tmp_path)[0] == "submitting"
        for i in range(3):
            await ledger.mark_submitted(i, task_id=f"t{i}", polling_url=None, cost=1.0)
        assert committed(tmp_path)[2] == "submitted"

        await ledger.mark_ready(0, sample_url="http://127.0.0.1/a", deadline=1.0)
        await ledger.mark_ready(1, sample_url="http://127.0.0.1/b", deadline=1.0)
        assert committed(tmp_path)[0] == "submitted"  # batched, not yet visible
        await ledger.mark_ready(2, sample_url="http://127.0.0.1/c", deadline=1.0)
        assert [committed(tmp_path)[i] for i in range(3)] == ["ready"] * 3  # third update commits

        await ledger.mark_saved(0, path="a.jpeg", sha256="0", seed=None, prompt_used=None)
        clock.advance(11.0)
        await ledger.mark_saved(1, path="b.jpeg", sha256="1", seed=None, prompt_used=None)
        assert [committed(tmp_path)[i] for i in range(2)] == ["saved"] * 2  # interval passed

        await ledger.mark_saved(2, path="c.jpeg", sha256="2", seed=None, prompt_used=None)
        assert committed(tmp_path)[2] == "ready"
        await ledger.mark_failed(3, reason="boom", may_be_billed=False)  # commits the batch too
        assert (committed(tmp_path)[2], committed(tmp_path)[3]) == ("saved", "failed")

        await ledger.mark_ready(4, sample_url="http://127.0.0.1/d", deadline=1.0)
        assert committed(tmp_path)[4] == "pending"
        await ledger.flush()
        assert committed(tmp_path)[4] == "ready"
        await ledger.mark_ready(5, sample_url="http://127.0.0.1/e", deadline=1.0)
    finally:
        await ledger.aclose()
    assert committed(tmp_path)[5] == "ready"  # closing commits what was pending


async def test_a_cancelled_caller_still_records_the_task_id(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(rows(1))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await ledger.mark_submitted(0, task_id="t-0", polling_url=None, cost=1.0)
        assert committed(tmp_path)[0] == "submitted"
        item = await ledger.get(0)
        assert item is not None
        assert item.task_id == "t-0"


async def test_iter_items_pages_in_index_order_and_filters(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(reversed(rows(7)))
        assert [i.index async for i in ledger.iter_items(batch=2)] == list(range(7))
        for i in (1, 4, 6):
            await ledger.mark_failed(i, reason="x", may_be_billed=False)
        failed = [i.index async for i in ledger.iter_items({ItemState.FAILED}, batch=2)]
        assert failed == [1, 4, 6]
        assert [i async for i in ledger.iter_items(())] == []
        # Updates made while iterating are seen by the pages not yet read.
        seen = []
        async for item in ledger.iter_items({ItemState.PENDING}, batch=2):
            seen.append(item.index)
            if item.index == 0:
                await ledger.mark_submitting(3)
        assert seen == [0, 2, 5]


async def test_counts_spent_reset_and_resume_helpers(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(rows(6))
        await ledger.mark_submitting(0)
        await ledger.mark_submitting(1)
        await ledger.mark_submitted(1, task_id="t1", polling_url=None, cost=2.0)
        await ledger.mark_failed(1, reason="generation failed", may_be_billed=True)
        await ledger.mark_submitting(2)
        await ledger.mark_failed(2, reason="HTTP 500: ambiguous", may_be_billed=True)
        await ledger.mark_failed(3, reason="HTTP 422", may_be_billed=False)
        await ledger.mark_submitted(4, task_id="t4", polling_url=None, cost=1.5)
        assert await ledger.spent() == 3.5

        assert await ledger.mark_interrupted_submits() == 1
        interrupted = await ledger.get(0)
        assert interrupted is not None
        assert (interrupted.state, interrupted.error) == (ItemState.FAILED, INTERRUPTED_SUBMIT)
        assert interrupted.ambiguous

        counts = await ledger.counts()
        assert set(counts) == set(ItemState)
        assert counts[ItemState.FAILED] == 4
        assert counts[ItemState.SUBMITTED] == 1

        assert await ledger.reset_failed(ambiguous=False) == 2  # items 1 and 3
        assert await ledger.reset_failed(ambiguous=True) == 2  # items 0 and 2
        retried = await ledger.get(1)
        assert retried is not None
        assert (retried.state, retried.task_id, retried.error) == (ItemState.PENDING, None, None)
        assert await ledger.spent() == 3.5  # the retried task's credits were still spent
        await ledger.reset(4)
        assert await ledger.spent() == 3.5
        assert (await ledger.counts())[ItemState.PENDING] == 6


async def test_run_config_is_kept_until_recorded_and_changes_are_explained(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG):
        pass
    changed = {**CONFIG, "defaults": {"width": 768, "seed": 3}}
    async with await Ledger.open(tmp_path, run_config=changed) as ledger:
        assert ledger.stored_run_config() == CONFIG
        assert run_config_changes(ledger.stored_run_config(), ledger.run_config) == [
            "defaults.seed: (not set) -> 3",
            "defaults.width: 1024 -> 768",
        ]
    async with await Ledger.open(tmp_path, run_config=changed) as ledger:
        assert ledger.stored_run_config() == CONFIG  # a refused change is still a change
        await ledger.record_run_config()
    async with await Ledger.open(tmp_path, run_config=changed) as ledger:
        assert run_config_changes(ledger.stored_run_config(), ledger.run_config) == []


async def test_no_api_key_reaches_the_ledger(tmp_path: Path) -> None:
    config = {
        "model": "flux-dev",
        "api_key": "sim-fake-key",
        "provider": {
            "name": "bfl",
            "Authorization": "Bearer sim-fake-key",
            "x-key": "sim-fake-key",
        },
        "env": [{"BFL_API_KEY": "sim-fake-key", "keywords": "kept"}],
        "key": "sim-fake-key",
    }
    async with await Ledger.open(tmp_path, run_config=config) as ledger:
        assert ledger.run_config == {
            "model": "flux-dev",
            "provider": {"name": "bfl"},
            "env": [{"keywords": "kept"}],
        }
        assert files_containing(tmp_path, b"sim-fake-key") == []
    assert files_containing(tmp_path, b"sim-fake-key") == []
    async with await Ledger.open(tmp_path, run_config={}) as ledger:
        assert "sim-fake-key" not in str(ledger.stored_run_config())


def test_scrub_secrets_keeps_ordinary_keys() -> None:
    data = {"token": 1, "secret_value": 2, "password": 3, "monkey": 4, "width": 5, "keys": 6}
    assert scrub_secrets(data) == {"secret_value": 2, "monkey": 4, "width": 5, "keys": 6}


async def test_one_folder_one_run(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG):
        with pytest.raises(LedgerError, match="another flux-async run"):
            await Ledger.open(tmp_path, run_config=CONFIG)
    async with await Ledger.open(tmp_path, run_config=CONFIG) as again:
        assert again.stored_run_config() == CONFIG


async def test_use_after_close_is_an_error_and_close_is_idempotent(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path, run_config=CONFIG)
    await ledger.aclose()
    await ledger.aclose()
    with pytest.raises(LedgerError, match="closed"):
        await ledger.get(0)


def make_db(path: Path, script: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("prepare", "match"),
    [
        (lambda p: make_db(p, "PRAGMA user_version = 99;"), "schema version 99"),
        (lambda p: make_db(p, "CREATE TABLE other (x);"), "not a flux-async ledger"),
        (lambda p: p.write_bytes(b"this is not sqlite at all" * 100), "not a usable ledger"),
    ],
)
async def test_foreign_or_newer_files_are_refused(
    tmp_path: Path, prepare: Callable[[Path], object], match: str
) -> None:
    prepare(tmp_path / LEDGER_NAME)
    with pytest.raises(LedgerError, match=match):
        await Ledger.open(tmp_path, run_config=CONFIG)
    # The refused open released the folder lock.
    (tmp_path / LEDGER_NAME).unlink()
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        assert ledger.stored_run_config() is None


CHILD = """
import os, signal, sys
from pathlib import Path
import anyio
from flux_async._batching._ledger import Ledger

def die():
    os.kill(os.getpid(), signal.SIGKILL)

async def main(directory, stage):
    ledger = await Ledger.open(Path(directory), run_config={"model": "flux-dev"})
    await ledger.add_items([(i, f"fp{i}", f"prompt {i}", "flux-dev", None) for i in range(4)])
    if stage == "added":
        die()
    await ledger.mark_submitting(0)
    if stage == "submitting":
        die()
    await ledger.mark_submitted(0, task_id="task-0", polling_url="http://127.0.0.1:9/p", cost=1.5)
    await ledger.mark_ready(0, sample_url="http://127.0.0.1:9/s.jpeg?sig=x", deadline=1.0)
    if stage == "submitted":
        die()
    await ledger.mark_saved(0, path="00000.jpeg", sha256="f" * 64, seed=3, prompt_used=None)
    await ledger.flush()
    await ledger.mark_submitting(1)
    if stage == "saved":
        die()

anyio.run(main, sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("stage", ["added", "submitting", "submitted", "saved"])
async def test_sigkill_leaves_the_last_committed_state(tmp_path: Path, stage: str) -> None:
    result = await anyio.run_process(
        [sys.executable, "-c", CHILD, str(tmp_path), stage], check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    async with await Ledger.open(tmp_path, run_config={"model": "flux-dev"}) as ledger:
        states = {i.index: i async for i in ledger.iter_items()}
        assert sorted(states) == [0, 1, 2, 3]
        first, second = states[0], states[1]
        if stage == "added":
            assert first.state is ItemState.PENDING
        elif stage == "submitting":
            assert first.state is ItemState.SUBMITTING
            assert await ledger.mark_interrupted_submits() == 1
            reported = await ledger.get(0)
            assert reported is not None
            assert reported.ambiguous
        elif stage == "submitted":
            # The task id was committed; the batched "ready" after it was not.
            assert first.state is ItemState.SUBMITTED
            assert (first.task_id, first.polling_url, first.cost) == (
                "task-0",
                "http://127.0.0.1:9/p",
                1.5,
            )
            assert first.sample_url is None
        else:
            assert (first.state, first.seed, first.path) == (ItemState.SAVED, 3, "00000.jpeg")
            assert second.state is ItemState.SUBMITTING
        assert all(states[i].state is ItemState.PENDING for i in (2, 3))


async def test_reset_failed_picks_exactly_the_ambiguous_items(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(rows(4))
        await ledger.mark_failed(0, reason="a", may_be_billed=True)
        await ledger.mark_submitted(1, task_id="t", polling_url=None, cost=None)
        await ledger.mark_failed(1, reason="b", may_be_billed=True)
        await ledger.mark_failed(2, reason="c", may_be_billed=False)
        ambiguous = {i.index async for i in ledger.iter_items() if i.ambiguous}
        await ledger.reset_failed(ambiguous=True)
        reset = {i.index async for i in ledger.iter_items({ItemState.PENDING})} - {3}
    assert ambiguous == reset == {0}


async def test_add_items_replaces_changed_inputs_only_as_asked(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(rows(4))
        await ledger.mark_submitted(1, task_id="t1", polling_url=None, cost=2.0)
        await ledger.mark_failed(2, reason="invalid", may_be_billed=False)
        edited = [(i, f"new{i}", f"edited {i}", "flux-dev", None) for i in range(4)]
        kept = await ledger.add_items(edited, replace_changed="unstarted")
        assert (kept.changed, kept.replaced, kept.changed_indices) == (4, 3, (1,))
        assert {i.index: i.fingerprint async for i in ledger.iter_items()} == {
            0: "new0",
            1: "fp1",
            2: "new2",
            3: "new3",
        }
        forced = await ledger.add_items(edited, replace_changed="all")
        assert (forced.changed, forced.replaced) == (1, 1)
        item = await ledger.get(1)
        assert item is not None
        assert (item.state, item.task_id, item.prompt) == (ItemState.PENDING, None, "edited 1")
        assert await ledger.spent() == 2.0  # the abandoned task's cost still counts


async def test_batch_queries_fingerprints_names_and_ranges(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(
            [(0, "a", "p", "m", "Fox"), (1, "b", "p", "m", None), (2, "c", "p", "m", "fox")]
            + [(i, f"x{i}", "p", "m", None) for i in range(3, 6)]
        )
        assert await ledger.fingerprints([0, 2, 9]) == {0: "a", 2: "c"}
        assert await ledger.fingerprints([]) == {}
        assert await ledger.first_index_named("fox") == 0  # ASCII case ignored
        assert await ledger.first_index_named("owl") is None
        assert await ledger.count_from(4) == 2
        assert await ledger.remove_from(4) == 2
        assert await ledger.count_from(0) == 4


async def test_mark_invalid_fails_only_pending_items_unbilled(tmp_path: Path) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(rows(3))
        await ledger.mark_submitted(1, task_id="t1", polling_url=None, cost=1.0)
        assert await ledger.mark_invalid([(0, "width: too wide"), (1, "x")]) == 1
        assert await ledger.mark_invalid([]) == 0
        first, second = await ledger.get(0), await ledger.get(1)
        assert first is not None
        assert second is not None
        assert (first.state, first.error, first.may_be_billed) == (
            ItemState.FAILED,
            "width: too wide",
            False,
        )
        assert second.state is ItemState.SUBMITTED
    assert committed(tmp_path)[0] == "failed"


async def test_unbilled_failures_cost_nothing_and_ambiguous_ones_are_counted(
    tmp_path: Path,
) -> None:
    async with await Ledger.open(tmp_path, run_config=CONFIG) as ledger:
        await ledger.add_items(rows(3))
        await ledger.mark_submitted(0, task_id="t0", polling_url=None, cost=3.0)
        await ledger.mark_failed(0, reason="Content Moderated", may_be_billed=False)
        await ledger.mark_submitting(1)
        await ledger.mark_failed(1, reason="HTTP 500", may_be_billed=True)
        await ledger.mark_submitted(2, task_id="t2", polling_url=None, cost=3.0)
        await ledger.mark_failed(2, reason="Error", may_be_billed=True)
        moderated = await ledger.get(0)
        assert moderated is not None
        assert moderated.cost == 0
        assert await ledger.spent() == 3.0
        assert await ledger.ambiguous_count() == 1
