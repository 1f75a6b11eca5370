"""Bulk runs: a prompt file in, a folder of images out, resumable without paying twice.

:func:`run_batch` is the whole job and the CLI's ``batch`` is a thin wrapper over it:

1. open ``DIR/.flux-async.sqlite`` (the ledger) and compare this run with the last;
2. read the prompt file once, validating every new or changed item, before anything is
   paid for (``_batch_input``); bad items stop the run, or are recorded as failed;
3. report the submits an earlier run left unfinished as possibly billed, reset what the
   ``retry_*`` flags ask for (steps 2 and 3: ``_batch_setup``);
4. run: tasks an earlier run recorded are polled again by their ``polling_url`` (never
   resubmitted), then the pending items are submitted in input order, at most
   ``concurrency`` items in progress, and each image is streamed to ``DIR``;
5. write ``DIR/results.jsonl`` and ``DIR/index.html`` from the ledger, whatever happened.

The runner itself (one item's path from submit to saved file) lives in ``_batch_run``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .._client import AsyncFlux
from .._core._paths import prepare_folder
from .._request._catalog import DEFAULT_ACTIVE_LIMIT
from ._batch_progress import BatchProgress
from ._batch_run import BatchRunner
from ._batch_setup import BatchChangedError, BatchInputError, prepare_ledger, reset_for_retry
from ._costs import CostBook
from ._ledger import ItemState, Ledger
from ._prompts import SUPPORTED_SUFFIXES
from ._report import CONTACT_SHEET_NAME, RESULTS_NAME, write_contact_sheet, write_results_jsonl

__all__ = [
    "DEFAULT_CONCURRENCY",
    "BatchChangedError",
    "BatchInputError",
    "BatchSummary",
    "run_batch",
]

DEFAULT_CONCURRENCY = 2 * DEFAULT_ACTIVE_LIMIT


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """How a batch run ended. Credits are floats; ``elapsed`` is in seconds.

    ``ok``/``failed``/``pending`` count every item of the folder (earlier runs included);
    ``possibly_billed`` counts failures that may have cost credits with no task id to
    show for it; ``stopped`` says why submitting stopped early (``"budget"``,
    ``"credits"``, ``"auth"``, ``"disk"``, ``"interrupted"``) or is None;
    ``not_saved`` counts finished images the disk refused this run (they stay ready:
    a re-run saves them without a new submit).
    """

    total: int
    ok: int
    failed: int
    pending: int
    possibly_billed: int
    submitted: int
    spent: float
    spent_this_run: float
    stopped: str | None
    elapsed: float
    out: Path
    results: Path
    contact_sheet: Path
    notices: tuple[str, ...] = field(default=())
    not_saved: int = 0

    @property
    def exit_code(self) -> int:
        """Return the CLI's exit status: 0 all ok, 130 interrupted, else 1."""
        if self.stopped == "interrupted":
            return 130
        return 0 if self.ok == self.total else 1

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-ready values (paths as strings)."""
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "pending": self.pending,
            "possibly_billed": self.possibly_billed,
            "submitted": self.submitted,
            "spent": round(self.spent, 6),
            "spent_this_run": round(self.spent_this_run, 6),
            "stopped": self.stopped,
            "elapsed": round(self.elapsed, 3),
            "out": str(self.out),
            "results": str(self.results),
            "contact_sheet": str(self.contact_sheet),
            "exit_code": self.exit_code,
            "notices": list(self.notices),
            "not_saved": self.not_saved,
        }


async def run_batch(
    flux: AsyncFlux,
    prompts: str | Path,
    out: str | Path,
    *,
    model: str = "flux-2-pro",
    defaults: Mapping[str, Any] | None = None,
    concurrency: int | None = None,
    max_cost: float | None = None,
    skip_invalid: bool = False,
    retry_failed: bool = False,
    retry_ambiguous: bool = False,
    accept_changes: bool = False,
    allow_any_image_path: bool = False,
    stop: anyio.Event | None = None,
    progress: BatchProgress | None = None,
    notify: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Generate an image for every item of ``prompts`` into ``out``; resume an earlier run.

    ``defaults`` are request fields for every item (an item's own fields win; ``model``
    is the default model). At most ``concurrency`` items are in progress (default: twice
    the client's active-task limit). ``max_cost`` (credits, for the whole folder, earlier
    runs included) stops submitting before the next submit could exceed it. Setting
    ``stop`` stops submitting, leaves generating tasks recorded for a later run, lets
    downloads finish and returns (``stopped == "interrupted"``). ``notify`` receives
    one-line messages for the user; ``progress`` is updated as the run goes.
    An item's ``images`` files must lie inside the prompt file's folder (symlinks
    resolved) unless ``allow_any_image_path``; every entry gets the library's
    reference-image checks before the first submit.

    Raises :class:`BatchInputError` (bad items, nothing submitted),
    :class:`BatchChangedError` (the input or settings changed since the last run),
    ``LedgerError`` (another run holds ``out``), ``LedgerFullError`` (the disk under
    ``out`` filled up: the run stopped, the ledger is intact), ConfigurationError
    (``out`` cannot be created or written; checked before anything else), ValueError
    (unsupported file type or settings) or OSError (``prompts`` unreadable). Items
    failing never raise; an image the disk refused leaves its item ``ready``.

    Examples:
        ```python
        async with AsyncFlux() as flux:
            summary = await run_batch(
                flux, "prompts.txt", "out", model="flux-2-pro", defaults={"width": 512}
            )
        print(summary.ok, summary.failed, summary.spent, summary.exit_code)
        ```
    """
    prompts, out = Path(prompts), Path(out)
    await _check_arguments(prompts, concurrency, max_cost)
    defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
    progress = progress if progress is not None else BatchProgress()
    notices: list[str] = []

    def say(message: str) -> None:
        notices.append(message)
        if notify is not None:
            notify(message)

    config = {
        "model": model,
        "defaults": dict(sorted(defaults.items())),
        "input": prompts.name,
        "provider": flux.provider_name,
    }
    started = anyio.current_time()
    await anyio.to_thread.run_sync(prepare_folder, out)
    ledger = await Ledger.open(out, run_config=config)
    ran = False
    spent_at_start = 0.0
    try:
        await prepare_ledger(
            ledger,
            prompts,
            model,
            defaults,
            skip_invalid,
            accept_changes,
            say,
            allow_any_image_path=allow_any_image_path,
        )
        ran = True
        await reset_for_retry(ledger, out, retry_failed, retry_ambiguous, say)
        await anyio.to_thread.run_sync(_remove_stale_temp_files, out)
        spent_at_start = await _start_progress(ledger, progress)
        runner = BatchRunner(
            flux,
            ledger,
            prompts=prompts,
            out=out,
            model=model,
            defaults=defaults,
            concurrency=concurrency or 2 * flux.statistics().limiter.limit,
            costs=CostBook(max_cost, spent_at_start),
            progress=progress,
            notify=say,
            allow_any_image_path=allow_any_image_path,
        )
        await runner.run(stop)
    finally:
        with anyio.CancelScope(shield=True):
            try:
                if ran:
                    await _write_reports(ledger, out, prompts, say)
                    counts = await ledger.counts()
                    ambiguous = await ledger.ambiguous_count()
                    spent = await ledger.spent()
            finally:
                await ledger.aclose()
    total = sum(counts.values())
    ok, failed = counts[ItemState.SAVED], counts[ItemState.FAILED]
    return BatchSummary(
        total=total,
        ok=ok,
        failed=failed,
        pending=total - ok - failed,
        possibly_billed=ambiguous,
        submitted=progress.submitted,
        spent=spent,
        spent_this_run=spent - spent_at_start,
        stopped=progress.stopped,
        elapsed=anyio.current_time() - started,
        out=out,
        results=out / RESULTS_NAME,
        contact_sheet=out / CONTACT_SHEET_NAME,
        notices=tuple(notices),
        not_saved=progress.not_saved,
    )


async def _write_reports(
    ledger: Ledger, out: Path, prompts: Path, say: Callable[[str], None]
) -> None:
    """Write results.jsonl and index.html; a full disk skips them (the ledger has it all)."""
    try:
        await write_results_jsonl(ledger, out)
        await write_contact_sheet(ledger, out, title=f"flux-async batch: {prompts.name}")
    except OSError as exc:
        say(f"could not write the reports in {out}: {exc.strerror or exc}; a re-run writes them")


async def _check_arguments(prompts: Path, concurrency: int | None, max_cost: float | None) -> None:
    if prompts.suffix.lower() not in SUPPORTED_SUFFIXES:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise ValueError(f"{prompts}: unsupported prompt file type; use one of {supported}")
    if not await anyio.Path(prompts).is_file():
        raise FileNotFoundError(2, "no such prompt file", str(prompts))
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if max_cost is not None and max_cost < 0:
        raise ValueError("max_cost is in credits and must be >= 0")


async def _start_progress(ledger: Ledger, progress: BatchProgress) -> float:
    """Fill ``progress`` from the ledger; return the credits spent before this run."""
    counts = await ledger.counts()
    spent = await ledger.spent()
    progress.total = sum(counts.values())
    progress.saved = progress.saved_at_start = counts[ItemState.SAVED]
    progress.failed = progress.failed_at_start = counts[ItemState.FAILED]
    progress.spent = spent
    return spent


def _remove_stale_temp_files(out: Path) -> None:
    """Delete the temp files a killed run left in ``out`` (we hold its lock: none is live)."""
    with os.scandir(out) as entries:
        for entry in entries:
            name = entry.name
            stale = name.endswith(".part") or (name.startswith(".") and name.endswith(".tmp"))
            if name.startswith(".") and stale and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
