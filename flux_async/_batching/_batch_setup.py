"""Before a batch pays for anything: the input scanned into the ledger, changes refused.

:func:`prepare_ledger` is steps 2 and 3 of :func:`~flux_async._batching._batch.run_batch`
(see ``_batch``): it reads the prompt file into the ledger (or skips the scan when the
file is the one an earlier run accepted), raises :class:`BatchInputError` for bad items
and :class:`BatchChangedError` for an input or settings that changed unaccepted;
:func:`reset_for_retry` takes the images a fleet saved for interrupted submits, reports
the other interrupted submits and resets what ``retry_*`` asks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from .._errors import FluxError
from ._batch_input import InputScan, scan_input
from ._ledger import ItemState, Ledger
from ._outputs import existing_output, item_stem, sha256_file, stem_digits
from ._prompts import InputProblem
from ._runconfig import run_config_changes

__all__ = [
    "BatchChangedError",
    "BatchInputError",
    "prepare_ledger",
    "reset_for_retry",
    "take_fleet_saved_submits",
]

_DIGEST_KEY = "input_digest"


class BatchInputError(FluxError, ValueError):
    """Raised before anything is paid for when the prompt file has bad items.

    ``problems`` holds the first problems found (file, line, field, rule); ``count`` how
    many there were in all.
    """

    def __init__(self, problems: list[InputProblem], count: int, invalid_items: int) -> None:
        self.problems = problems
        self.count = count
        self.invalid_items = invalid_items
        super().__init__(
            f"{invalid_items or count} item(s) of the input break a rule ({count} problem(s))"
        )


class BatchChangedError(FluxError, ValueError):
    """Raised when a resumed batch's input or settings differ from the earlier run's.

    ``changes`` explains each difference in one line. Nothing was submitted; re-run with
    ``accept_changes=True`` (``--accept-changes``) to let the new input win.
    """

    def __init__(self, changes: list[str]) -> None:
        self.changes = changes
        super().__init__("the batch changed since the last run: " + "; ".join(changes))


async def prepare_ledger(
    ledger: Ledger,
    prompts: Path,
    model: str,
    defaults: Mapping[str, Any],
    skip_invalid: bool,
    accept_changes: bool,
    say: Callable[[str], None],
    *,
    allow_any_image_path: bool = False,
) -> InputScan:
    """Scan the input into the ledger; refuse bad input or unaccepted changes.

    The scan is skipped when the prompt file, model and defaults are byte for byte those
    an earlier run already scanned and accepted (their digest is in the ledger), so a
    resumed million-item batch starts submitting without reading its file twice.
    """
    before = await ledger.counts()
    had_items = sum(before.values()) > 0
    started = sum(before.values()) - before[ItemState.PENDING]
    digest = await anyio.to_thread.run_sync(_input_digest, prompts, model, defaults)
    if had_items and await ledger.meta(_DIGEST_KEY) == digest:
        scan = InputScan(total=sum(before.values()), existing=sum(before.values()))
    else:
        await ledger.set_meta(_DIGEST_KEY, None)
        scan = await scan_input(
            ledger,
            prompts,
            model=model,
            defaults=defaults,
            skip_invalid=skip_invalid,
            replace_changed="all" if accept_changes else "unstarted",
            allow_any_image_path=allow_any_image_path,
        )
    if scan.file_problems or (scan.invalid_items and not skip_invalid):
        if not had_items:
            # A first run that never started leaves no ledger rows behind, so fixing the
            # file (even by deleting lines) starts afresh rather than "changing" items.
            await ledger.remove_from(0)
        problems = scan.file_problems + scan.problems
        raise BatchInputError(
            problems, scan.problem_count + len(scan.file_problems), scan.invalid_items
        )
    if scan.invalid_items:
        say(f"{scan.invalid_items} invalid item(s) recorded as failed (not billed)")
    changes = run_config_changes(ledger.stored_run_config(), ledger.run_config) if started else []
    kept = scan.changed - scan.replaced
    if kept:
        shown = ", ".join(f"#{i}" for i in scan.changed_indices)
        more = "" if kept <= len(scan.changed_indices) else ", ..."
        changes.append(f"{kept} started item(s) have a new input ({shown}{more})")
    removed = await ledger.count_from(scan.total)
    if removed:
        changes.append(f"the input has {removed} item(s) fewer than the ledger (#{scan.total} on)")
    if changes and not accept_changes:
        raise BatchChangedError(changes)
    if changes:
        say("accepted changes: " + "; ".join(changes))
        if scan.changed and accept_changes:
            say(f"{scan.changed} changed item(s) start over with their new input")
    if removed and accept_changes:
        await ledger.remove_from(scan.total)
    await ledger.record_run_config()
    await ledger.set_meta(_DIGEST_KEY, digest)
    return scan


def _input_digest(prompts: Path, model: str, defaults: Mapping[str, Any]) -> str:
    """Return the sha256 of the prompt file's bytes, the model and the defaults (blocking)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([model, defaults], sort_keys=True, default=str).encode())
    with prompts.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def reset_for_retry(
    ledger: Ledger,
    out: Path,
    retry_failed: bool,
    retry_ambiguous: bool,
    say: Callable[[str], None],
) -> None:
    taken = await take_fleet_saved_submits(ledger, out)
    if taken:
        say(
            f"{taken} item(s) were being submitted when the last run stopped and their "
            "images were saved by the fleet: recorded as saved (their cost is unknown)"
        )
    interrupted = await ledger.mark_interrupted_submits()
    if interrupted:
        say(
            f"{interrupted} item(s) were being submitted when the last run stopped: a task "
            "may have been created and billed for each; they are not retried "
            "(--retry-ambiguous retries them, possibly paying twice)"
            if not retry_ambiguous
            else f"{interrupted} item(s) were being submitted when the last run stopped"
        )
    if retry_ambiguous:
        again = await ledger.reset_failed(ambiguous=True)
        if again:
            say(f"retrying {again} possibly billed item(s) as asked")
    if retry_failed:
        again = await ledger.reset_failed(ambiguous=False)
        if again:
            say(f"retrying {again} failed item(s)")


async def take_fleet_saved_submits(ledger: Ledger, out: Path) -> int:
    """Record as saved each item left ``submitting`` whose image is in ``out``; return how many.

    A process killed between its submit's answer and the ledger's ``submitted`` leaves
    the item ``submitting`` (no task id), yet in a fleet the task's record carried the
    item's file name (``_batch_run``), so a survivor saved the image there. Such a file,
    written after the item was marked, is that task's image: taken, not paid again.
    """
    counts = await ledger.counts()
    if not counts[ItemState.SUBMITTING]:
        return 0
    digits = stem_digits(sum(counts.values()))
    found: list[tuple[int, Path]] = []
    async for item in ledger.iter_items([ItemState.SUBMITTING]):
        stem = await item_stem(ledger, item, digits=digits)
        path = await anyio.to_thread.run_sync(existing_output, out, stem, item.updated_at - 1.0)
        if path is not None:
            found.append((item.index, path))
    taken = 0
    for index, path in found:
        try:
            digest = await anyio.to_thread.run_sync(sha256_file, path)
        except OSError:
            continue  # gone or unreadable: reported as interrupted below
        await ledger.mark_saved(index, path=path.name, sha256=digest, seed=None, prompt_used=None)
        taken += 1
    if taken:
        await ledger.flush()
    return taken
