"""The jobs of a batch run, in order: tasks an earlier run recorded, then pending items.

A resumed task is polled again by its ``polling_url`` (never resubmitted), its submit
backdated so the poll schedule polls it at once. A pending item is read again from the
prompt file (``_batch_input.ScannedReader``) and sent only if its fingerprint still
matches the ledger's; one that no longer builds a request is failed, unbilled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .._core._clock import Clock
from .._request._models import Task
from .._request._requests import BaseRequest
from ._batch_input import ScannedReader, item_request
from ._batch_progress import BatchProgress
from ._ledger import ItemState, Ledger, LedgerItem

__all__ = ["Job", "JobFeed"]

_MAX_BACKDATE = 60.0


@dataclass(frozen=True, slots=True)
class Job:
    """One item for a worker: a request to submit, or a task an earlier run recorded."""

    item: LedgerItem
    request: BaseRequest | None = None  # None: a task an earlier run recorded
    task: Task | None = None


class JobFeed:
    """Send a run's jobs to its workers (see the module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        prompts: Path,
        model: str,
        defaults: Mapping[str, Any],
        allow_any_image_path: bool,
        provider: str,
        clock: Clock,
        progress: BatchProgress,
        notify: Callable[[str], None],
    ) -> None:
        self._ledger = ledger
        self._prompts = prompts
        self._model = model
        self._defaults = defaults
        self._allow_any_image_path = allow_any_image_path
        self._provider = provider
        self._clock = clock
        self._progress = progress
        self._notify = notify
        self._input_moved = False

    async def feed(self, send: anyio.abc.ObjectSendStream[Job]) -> None:
        """Send every job to ``send``, in order; an unreadable pending item is failed here."""
        resumed = self._ledger.iter_items({ItemState.SUBMITTED, ItemState.READY})
        async with contextlib.aclosing(resumed) as items:
            async for item in items:
                await send.send(Job(item, task=self._recorded_task(item)))
        await self._feed_pending(send)

    async def _feed_pending(self, send: anyio.abc.ObjectSendStream[Job]) -> None:
        reader = ScannedReader(self._prompts, model=self._model, defaults=self._defaults)
        try:
            pending = self._ledger.iter_items({ItemState.PENDING})
            async with contextlib.aclosing(pending) as items:
                async for item in items:
                    job = await self._pending_job(item, reader)
                    if job is not None:
                        await send.send(job)
        finally:
            reader.close()

    async def _pending_job(self, item: LedgerItem, reader: ScannedReader) -> Job | None:
        scanned = await reader.seek(item.index)
        if scanned is None or scanned.fingerprint != item.fingerprint:
            if not self._input_moved:
                self._input_moved = True
                self._notify("the prompt file changed while the batch ran: such items stay pending")
            return None
        if scanned.item is None or scanned.problems:
            await self._ledger.mark_invalid([(item.index, scanned.reason)])
            self._progress.failed += 1
            return None
        try:
            request = await item_request(
                scanned.item,
                model=self._model,
                defaults=self._defaults,
                base_dir=self._prompts.parent,
                allow_any_image_path=self._allow_any_image_path,
            )
        except (ValueError, OSError) as exc:  # ValidationError, ConfigurationError, a file
            await self._ledger.mark_invalid([(item.index, str(exc))])
            self._progress.failed += 1
            return None
        return Job(item, request=request)

    def _recorded_task(self, item: LedgerItem) -> Task:
        # Backdate the submit (by at most a minute, well inside any task timeout) so the
        # poll schedule treats the task as the old one it is and polls it at once.
        age = min(max(time.time() - item.updated_at, 0.0), _MAX_BACKDATE)
        return Task(
            id=item.task_id or "",
            polling_url=item.polling_url,
            model=item.model,
            provider=self._provider,
            cost=item.cost,
            prompt=item.prompt,
            submitted_at=max(self._clock.monotonic() - age, 1e-9),
        )
