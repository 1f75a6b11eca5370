"""The batch runner: every item's path from submit to a saved file, under a cost budget.

One feeder (``_batch_feed``) streams jobs (tasks an earlier run recorded first, then the
pending items in index order) to ``concurrency`` workers through an unbuffered stream, so
memory does not grow with the batch; the budget is a ``_costs.CostBook``, the files'
names come from ``_outputs``. Each ledger write comes at the moment the protocol needs
it::

    mark_submitting → submit → mark_submitted → wait → mark_ready → save → mark_saved

A worker takes its place under the account's active-task limit *before* marking the item
``submitting``: an item is never left ``submitting`` (possibly billed) while it only
waited for a free slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .._client import AsyncFlux
from .._client_tasks import forget_finished
from .._core._clock import Clock
from .._engine._download import extension_for, result_deadline
from .._errors import (
    AuthenticationError,
    FluxError,
    InsufficientCreditsError,
    ModerationError,
    StorageError,
)
from .._request._catalog import DEFAULT_ACTIVE_LIMIT, MODELS
from .._request._data_urls import is_data_url, shown_data_url
from .._request._models import Task, TaskResult
from .._request._requests import BaseRequest
from ._batch_feed import Job, JobFeed
from ._batch_progress import BatchProgress
from ._costs import CostBook
from ._ledger import ItemState, Ledger, LedgerFullError, LedgerItem
from ._outputs import existing_output, item_stem, sha256_file, stem_digits

__all__ = ["BatchRunner"]


class BatchRunner:
    """Drive the ledger's unfinished items to saved files (see the module docstring)."""

    def __init__(
        self,
        flux: AsyncFlux,
        ledger: Ledger,
        *,
        prompts: Path,
        out: Path,
        model: str,
        defaults: Mapping[str, Any],
        concurrency: int,
        costs: CostBook,
        progress: BatchProgress,
        notify: Callable[[str], None],
        allow_any_image_path: bool = False,
    ) -> None:
        self._flux = flux
        self._ledger = ledger
        self._out = out
        self._concurrency = concurrency
        self._costs = costs
        self._progress = progress
        self._notify = notify
        self._digits = stem_digits(progress.total)
        limit = flux.statistics().limiter.limit
        self._active = min(limit, concurrency)
        self._gate = anyio.Semaphore(self._active)
        # Finished tasks waiting for or running their download, beyond the workers.
        self._save_room = anyio.Semaphore(concurrency)
        self._saves: anyio.abc.TaskGroup | None = None
        self._model_gates: dict[str, anyio.Semaphore] = {}
        self._submitting = True
        self._interrupted = False
        self._feed_scope = anyio.CancelScope()
        self._waits: set[anyio.CancelScope] = set()
        # The client's clock: for result deadlines, and for backdating resumed tasks.
        self._clock: Clock = flux.clock
        self._jobs = JobFeed(
            ledger,
            prompts=prompts,
            model=model,
            defaults=defaults,
            allow_any_image_path=allow_any_image_path,
            provider=flux.provider_name,
            clock=self._clock,
            progress=progress,
            notify=notify,
        )

    async def run(self, stop: anyio.Event | None) -> None:
        """Run until every job is done, submitting stopped, or ``stop`` was set.

        Raises :class:`LedgerFullError` (bare, not in an ExceptionGroup) when the disk
        under the ledger filled up: the run stops at once, the ledger as last committed.
        """
        try:
            await self._run(stop)
        except BaseExceptionGroup as group:
            full = group.subgroup(LedgerFullError)
            if full is None:
                raise
            raise _first_leaf(full) from None

    async def _run(self, stop: anyio.Event | None) -> None:
        async with anyio.create_task_group() as outer:
            if stop is not None:
                outer.start_soon(self._watch, stop)
            send, receive = anyio.create_memory_object_stream[Job]()
            # Saves run in their own task group (see _hand_off): workers outlive none of them.
            async with anyio.create_task_group() as saves:
                self._saves = saves
                async with anyio.create_task_group() as workers:
                    workers.start_soon(self._feed, send)
                    async with receive:
                        for _ in range(self._concurrency):
                            workers.start_soon(self._work, receive.clone())
            outer.cancel_scope.cancel()

    def halt(self, reason: str, message: str | None = None) -> None:
        """Stop submitting (``reason`` goes to the summary); in-flight items go on."""
        if not self._submitting:
            return
        self._submitting = False
        self._progress.stopped = reason
        self._feed_scope.cancel()
        if message:
            self._notify(message)

    async def _watch(self, stop: anyio.Event) -> None:
        await stop.wait()
        self._interrupted = True
        self.halt("interrupted", "stopping: no new submits; generating tasks are kept for resume")
        for scope in list(self._waits):
            scope.cancel()

    async def _feed(self, send: anyio.abc.ObjectSendStream[Job]) -> None:
        async with send:
            with self._feed_scope:
                await self._jobs.feed(send)

    # -- one item ------------------------------------------------------------------------

    async def _work(self, receive: anyio.abc.ObjectReceiveStream[Job]) -> None:
        async with receive:
            async for job in receive:
                await self._process(job)

    async def _process(self, job: Job) -> None:
        item = job.item
        resumed = job.request is None
        if resumed and item.state is ItemState.READY and job.task is not None:
            # Already finished on the server: it takes no place under the active limit.
            result = await self._wait(item, job.task, resumed=True)
            if result is not None:
                await self._hand_off(item, result)
            return
        async with self._slot(item.model):
            if job.request is not None:
                task = await self._submit(item, job.request)
            else:
                task = job.task
            if task is None:
                return
            result = await self._wait(item, task, resumed=resumed)
        if result is not None:
            await self._hand_off(item, result)

    async def _hand_off(self, item: LedgerItem, result: TaskResult) -> None:
        """Save in the background so this worker takes the next item at once.

        A pipeline, not workers: with large images on a slow link a worker that kept its
        item through the download would leave the account's slots idle. At most
        ``concurrency`` saves wait or run beyond the workers (bounded memory).
        """
        if self._saves is None:  # pragma: no cover - only run() calls _process
            await self._save(item, result)
            return
        await self._save_room.acquire()
        self._saves.start_soon(self._save_then_free, item, result)

    async def _save_then_free(self, item: LedgerItem, result: TaskResult) -> None:
        try:
            await self._save(item, result)
        finally:
            self._save_room.release()

    @contextlib.asynccontextmanager
    async def _slot(self, model: str) -> AsyncIterator[None]:
        # The model's own cap first: a worker waiting for it must not hold an account slot.
        gate = self._model_gates.get(model)
        if gate is None:
            # As the client's limiter: only a model with its own, smaller cap (Kontext max)
            # is held below the account's limit.
            spec = MODELS.get(model)
            own = spec.active_limit if spec is not None else DEFAULT_ACTIVE_LIMIT
            cap = min(own, self._active) if own < DEFAULT_ACTIVE_LIMIT else self._active
            gate = self._model_gates[model] = anyio.Semaphore(cap)
        async with contextlib.AsyncExitStack() as held:
            # Waiting here is waiting for a slot: the polling regime must know.
            with self._flux._waiting_for_slot():
                await held.enter_async_context(gate)
                await held.enter_async_context(self._gate)
            yield

    async def _submit(self, item: LedgerItem, request: BaseRequest) -> Task | None:
        if not self._submitting:
            return None
        estimate = self._costs.estimate(request)
        if not self._costs.reserve(estimate):
            limit = self._costs.limit
            self.halt(
                "budget",
                f"stopped submitting: the next submit (about {estimate:g} credits) could take "
                f"the spend past --max-cost {limit:g} ({self._costs.spent:g} spent, "
                f"{self._costs.reserved:g} reserved for tasks in progress)",
            )
            return None
        index = item.index
        self._progress.submitting += 1
        try:
            await self._ledger.mark_submitting(index)
            try:
                # Built by build_request, so already valid. The destination goes to the
                # fleet's record: a survivor adopting the task saves it under this item's
                # name, where a resumed run finds it (``_recover``) without paying again.
                task = await self._flux._submit(request, output=await self._dest(item, request))
            except (InsufficientCreditsError, AuthenticationError) as exc:
                # Refused at the door: no task exists, the item simply waits for later.
                self._costs.settle(request.model, estimate, None, billed=False)
                await self._ledger.reset(index)
                reason = "credits" if isinstance(exc, InsufficientCreditsError) else "auth"
                self.halt(reason, f"stopped submitting: {exc}")
                return None
            except FluxError as exc:
                billed = bool(getattr(exc, "may_be_billed", False))
                self._costs.settle(request.model, estimate, None, billed=billed)
                await self._fail(item, exc, billed=billed)
                return None
            self._costs.settle(request.model, estimate, task.cost, billed=True)
            await self._ledger.mark_submitted(
                index, task_id=task.id, polling_url=task.polling_url, cost=task.cost
            )
        finally:
            self._progress.submitting -= 1
        self._progress.submitted += 1
        self._progress.spent = self._costs.spent
        return task

    async def _dest(self, item: LedgerItem, request: BaseRequest) -> tuple[Path, str]:
        """Return the folder and file name ``_save`` will give this item's image."""
        stem = await item_stem(self._ledger, item, digits=self._digits)
        return self._out, _file_name(stem, getattr(request, "output_format", None))

    async def _wait(self, item: LedgerItem, task: Task, *, resumed: bool) -> TaskResult | None:
        if self._interrupted:
            return None  # left submitted: a later run polls it
        outcome: TaskResult | FluxError | None = None
        self._progress.generating += 1
        try:
            with anyio.CancelScope() as scope:
                self._waits.add(scope)
                try:
                    outcome = await self._flux.wait(task)
                except FluxError as exc:
                    outcome = exc
                finally:
                    self._waits.discard(scope)
        finally:
            self._progress.generating -= 1
        if outcome is None:
            return None  # interrupted: the task id stays recorded for a later run
        # AsyncFlux.wait keeps every finished task's entry; at 100 000 items that is memory
        # and O(n) statistics. generate() forgets its tasks the same way.
        forget_finished(self._flux, task.id)
        if resumed and await self._recover(item, outcome):
            return None
        if isinstance(outcome, FluxError):
            await self._fail(item, outcome, billed=not isinstance(outcome, ModerationError))
            return None
        return outcome

    async def _recover(self, item: LedgerItem, outcome: TaskResult | FluxError) -> bool:
        """Take an image an earlier run saved but did not get to record; True if found."""
        stem = await item_stem(self._ledger, item, digits=self._digits)
        found = await anyio.to_thread.run_sync(
            existing_output, self._out, stem, item.updated_at - 1.0
        )
        if found is None:
            return False
        try:
            digest = await anyio.to_thread.run_sync(sha256_file, found)
        except OSError:
            return False  # gone or unreadable: download it again
        result = outcome if isinstance(outcome, TaskResult) else None
        await self._ledger.mark_saved(
            item.index,
            path=found.name,
            sha256=digest,
            seed=result.seed if result is not None else None,
            prompt_used=result.prompt if result is not None else None,
        )
        self._progress.saved += 1
        return True

    async def _save(self, item: LedgerItem, result: TaskResult) -> None:
        self._progress.saving += 1
        try:
            deadline = result_deadline(
                result.sample_url, end_time=result.end_time, now=self._clock.time()
            )
            # A relay's inline (b64_json) image is not stored a second time in the ledger:
            # nothing reads it back (a re-run re-polls), so only its header and length.
            url = result.sample_url
            stored = shown_data_url(url) if is_data_url(url) else url
            await self._ledger.mark_ready(item.index, sample_url=stored, deadline=deadline)
            stem = await item_stem(self._ledger, item, digits=self._digits)
            stem = _file_name(stem, result.task.output_format)
            try:
                # The ledger owns the folder's names: a re-download replaces its own file.
                saved = await self._flux._save_file(result, self._out / stem, overwrite=True)
            except StorageError as exc:
                self._not_saved(exc)
                return
            except FluxError as exc:
                await self._fail(item, exc, billed=True)
                return
            await self._ledger.mark_saved(
                item.index,
                path=saved.path.relative_to(self._out).as_posix(),
                sha256=saved.sha256,  # hashed while streaming: the file is not read again
                seed=result.seed,
                prompt_used=result.prompt,
            )
            self._progress.saved += 1
        finally:
            self._progress.saving -= 1

    def _not_saved(self, exc: StorageError) -> None:
        """Leave the item ``ready`` (paid, image still on the server) and stop submitting.

        Not ``failed``: a plain re-run re-polls it for a fresh URL and saves it with no
        new submit, and ``--retry-failed`` never pays for it again.
        """
        self._progress.not_saved += 1
        self.halt(
            "disk",
            f"stopped submitting: {exc}. Free space in {self._out} and re-run the same "
            "command: finished images are fetched again without a new submit",
        )

    async def _fail(self, item: LedgerItem, exc: FluxError, *, billed: bool) -> None:
        await self._ledger.mark_failed(item.index, reason=str(exc), may_be_billed=billed)
        self._progress.failed += 1


def _first_leaf(group: BaseExceptionGroup[LedgerFullError]) -> LedgerFullError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _file_name(stem: str, output_format: str | None) -> str:
    """Return the name an item's image is saved under, given its stem.

    The downloader adds an extension only to a name without a suffix, so a stem with a
    dot in it (a prompt that reads ``v1.5``) gets its extension here.
    """
    return stem + extension_for(output_format, None) if "." in stem else stem
