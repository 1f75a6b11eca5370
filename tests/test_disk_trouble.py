"""A full disk loses nothing paid: images stay resumable, a full ledger stops cleanly.

Disk errors are injected at the downloader's one seam to the disk
(``_download.write_atomically``), and a real SQLite is filled with ``PRAGMA
max_page_count``.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest

from flux_async import ConfigurationError, DownloadError, StorageError
from flux_async._batching import _ledger as ledger_module
from flux_async._batching._batch import run_batch
from flux_async._batching._ledger import LEDGER_NAME, LedgerFullError
from flux_async._cli import main
from flux_async._engine import _download as download_module
from flux_async._engine._atomic_write import write_atomically

from .test_batch import created_per_prompt, fast_config, ledger_rows, results, simulated, write

pytestmark = pytest.mark.anyio


def failing_writer(code: int, times: int | None = None) -> Callable[..., Any]:
    """Return a write_atomically that raises OSError(code) mid-write, ``times`` times."""
    calls = {"n": 0}

    async def writer(
        chunks: AsyncGenerator[bytes, None], final: Path, **options: Any
    ) -> tuple[Path, int, str]:
        calls["n"] += 1
        if times is None or calls["n"] <= times:

            async def broken() -> AsyncGenerator[bytes, None]:
                async for chunk in chunks:
                    yield chunk
                    raise OSError(code, "simulated disk trouble", str(final))

            return await write_atomically(broken(), final, **options)
        return await write_atomically(chunks, final, **options)

    return writer


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS])
async def test_a_failed_write_is_a_storage_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(download_module, "write_atomically", failing_writer(code))
    async with simulated() as (_, flux):
        with pytest.raises(StorageError) as caught:
            await flux.generate("x", model="flux-2-pro", output_dir=tmp_path)
    error = caught.value
    assert isinstance(error, DownloadError)
    assert isinstance(error, OSError)
    assert error.errno == code
    assert error.task_id
    assert list(tmp_path.iterdir()) == []  # no temp file, no partial image


PROMPTS = [f"a fox on a full disk {n}" for n in range(5)]


async def test_full_disk_keeps_paid_items_ready_and_a_plain_rerun_saves_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = write(tmp_path / "p.txt", "\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    async with simulated(fast_config(url_lifetime=1e6), task_timeout=1e6) as (sim, flux):
        with monkeypatch.context() as patched:
            patched.setattr(download_module, "write_atomically", failing_writer(errno.ENOSPC))
            first = await run_batch(flux, prompts, out, concurrency=2)
        assert first.stopped == "disk"
        assert first.failed == 0
        assert first.ok == 0
        assert first.not_saved >= 1
        rows = ledger_rows(out)
        ready = {i for i, (state, _) in rows.items() if state == "ready"}
        assert len(ready) == first.not_saved
        assert {state for state, _ in rows.values()} <= {"ready", "pending"}
        paid = sum(created_per_prompt(sim).values())
        assert paid == len(ready)  # every submit so far finished and is kept
        assert [r["status"] for r in results(out)] == ["pending"] * len(PROMPTS)

        # --retry-failed has nothing to retry: ready items are not failed.
        second = await run_batch(flux, prompts, out, retry_failed=True)
    assert second.ok == len(PROMPTS)
    assert second.failed == 0
    counts = created_per_prompt(sim)
    assert all(counts[p] == 1 for p in PROMPTS)  # nobody paid twice
    assert sum(counts.values()) == len(PROMPTS)
    assert sorted(p.name for p in out.glob("*.jpeg")) == sorted(
        f"{n:05d}-a-fox-on-a-full-disk-{n}.jpeg" for n in range(5)
    )


def test_cli_says_what_to_free_and_exits_1_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = write(tmp_path / "p.txt", "one\ntwo\n")
    out = tmp_path / "out"
    monkeypatch.setattr(download_module, "write_atomically", failing_writer(errno.ENOSPC))
    code = main(["batch", str(prompts), "--out", str(out), "--simulate", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"free space in {out}" in err
    assert "Traceback" not in err


# --- the ledger's own disk fills up ----------------------------------------------------------


def full_after_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ledger connection unable to grow past its size when it was opened."""
    real = ledger_module.connect  # type: ignore[attr-defined]  # the seam Ledger.open uses

    def connect(directory: Path, config_text: str) -> Any:
        conn, lock_fd, previous = real(directory, config_text)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        return conn, lock_fd, previous

    monkeypatch.setattr(ledger_module, "connect", connect)


def integrity(out: Path) -> str:
    conn = sqlite3.connect(out / LEDGER_NAME)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


LONG = [f"a long prompt to fill the ledger's pages, number {n} " + "x" * 300 for n in range(300)]


async def test_a_full_ledger_stops_the_run_cleanly_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = write(tmp_path / "p.txt", "\n".join(LONG) + "\n")
    out = tmp_path / "out"
    # 300 items on a 400x clock: on a loaded machine URLs and tasks must not time out,
    # or items fail for reasons this test is not about.
    config = fast_config(url_lifetime=1e6)
    async with simulated(config, task_timeout=1e6) as (sim, flux):
        # A first run records every item and submits nothing (budget 0).
        await run_batch(flux, prompts, out, max_cost=0)
        with monkeypatch.context() as patched:
            full_after_scan(patched)
            with pytest.raises(LedgerFullError) as caught:
                await run_batch(flux, prompts, out, concurrency=64)
        assert str(out) in str(caught.value)
        assert "free space" in str(caught.value)
        assert integrity(out) == "ok"
        paid_before = created_per_prompt(sim)
        rows = ledger_rows(out)
        recorded = {i: t for i, (_, t) in rows.items() if t is not None}
        pending = sum(1 for state, _ in rows.values() if state == "pending")
        # With room again, a plain re-run finishes and pays again only for submits whose
        # task id the full disk kept from being recorded (reported, never replayed).
        last = await run_batch(flux, prompts, out, concurrency=64)
    assert last.ok + last.failed == len(LONG)
    assert last.failed == last.possibly_billed
    counts = created_per_prompt(sim)
    assert all(counts[LONG[i]] == 1 for i in recorded)
    # Only the items still pending were submitted; a "submitting" one is not replayed.
    assert sum(counts.values()) - sum(paid_before.values()) == pending
    assert last.ok >= len(LONG) - last.possibly_billed


def test_cli_full_ledger_exit_1_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = write(tmp_path / "p.txt", "\n".join(LONG) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(prompts), "--out", str(out), "--simulate", "--max-cost", "0"]) == 1
    capsys.readouterr()
    full_after_scan(monkeypatch)
    code = main(["batch", str(prompts), "--out", str(out), "--simulate", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"the disk under {out} is full" in err
    assert "Traceback" not in err
    assert integrity(out) == "ok"


async def test_an_unwritable_out_stops_a_batch_before_any_submit(tmp_path: Path) -> None:
    prompts = write(tmp_path / "p.txt", "one\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    async with simulated() as (sim, flux):
        with pytest.raises(ConfigurationError, match="not writable"):
            await run_batch(flux, prompts, blocker)
    assert len(sim.records.submits) == 0


def test_cli_batch_into_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = write(tmp_path / "p.txt", "one\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["batch", str(prompts), "--out", str(blocker), "--simulate"]) == 2
    assert f"--out {blocker}: is a file, not a folder" in capsys.readouterr().err
