"""The batch runner: every item's path from submit to a saved file, under a cost budget.

One feeder streams jobs (tasks an earlier run recorded first, then the pending items in
index order) to ``concurrency`` workers through an unbuffered stream, so memory does not
grow with the batch. Each ledger write comes at the moment the protocol needs it::

    mark_submitting → submit → mark_submitted → wait → mark_ready → save → mark_saved

A worker takes its place under the account's active-task limit *before* marking the item
``submitting``: an item is never left ``submitting`` (possibly billed) while it only
waited for a free slot.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .._client import AsyncFlux
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
from ._batch_input import ScannedReader, item_request
from ._batch_progress import BatchProgress
from ._filenames import output_stem
from ._ledger import ItemState, Ledger, LedgerFullError, LedgerItem

__all__ = ["COST_ESTIMATES", "BatchRunner", "CostBook", "estimate_cost"]

#: Credits (1 credit = US$0.01) assumed for a submit before the server has priced one of
#: that model in this run: (first megapixel, each further started megapixel, each
#: reference image). Rounded up from BFL's price list; the server's ``cost`` replaces
#: them as soon as it is seen.
COST_ESTIMATES: Mapping[str, tuple[float, float, float]] = {
    "flux-2-pro": (3.0, 1.5, 1.5),
    "flux-2-pro-preview": (3.0, 1.5, 1.5),
    "flux-2-max": (7.0, 3.0, 3.0),
    "flux-2-flex": (6.0, 6.0, 6.0),
    "flux-2-klein-4b": (1.5, 1.0, 1.0),
    "flux-2-klein-9b": (2.0, 1.5, 1.5),
    "flux-2-klein-9b-preview": (2.0, 1.5, 1.5),
    "flux-kontext-pro": (4.0, 0.0, 0.0),
    "flux-kontext-max": (8.0, 0.0, 0.0),
    "flux-pro-1.1": (4.0, 0.0, 0.0),
    "flux-pro-1.1-ultra": (6.0, 0.0, 0.0),
    "flux-dev": (2.5, 0.0, 0.0),
    "flux-pro-1.0-fill": (5.0, 0.0, 0.0),
    "flux-pro-1.0-expand": (5.0, 0.0, 0.0),
}
_UNKNOWN_MODEL_ESTIMATE = 10.0
_AUTO_STEM = re.compile(r"(\d+)(?:-.*)?")
_MAX_BACKDATE = 60.0


def estimate_cost(request: BaseRequest) -> float:
    """Return the credits ``request`` is assumed to cost from :data:`COST_ESTIMATES`."""
    rates = COST_ESTIMATES.get(request.model)
    if rates is None:
        return _UNKNOWN_MODEL_ESTIMATE
    first, further, per_image = rates
    width = getattr(request, "width", None) or 1024
    height = getattr(request, "height", None) or 1024
    megapixels = max(1, math.ceil(width * height / (1024 * 1024)))
    images = sum(1 for name in request.reference_fields if getattr(request, name, None))
    return first + further * (megapixels - 1) + per_image * images


class CostBook:
    """Credits spent and reserved against an optional budget (``limit``, in credits).

    A submit reserves its estimate (the highest cost seen for its model so far, else
    :func:`estimate_cost`) and is refused when ``spent + reserved + estimate`` would
    exceed the limit; the server's ``cost`` then replaces the estimate.
    """

    def __init__(self, limit: float | None, spent: float) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = 0.0
        self._seen: dict[str, float] = {}

    def estimate(self, request: BaseRequest) -> float:
        """Return what ``request`` is expected to cost, in credits."""
        seen = self._seen.get(request.model)
        return seen if seen is not None else estimate_cost(request)

    def reserve(self, amount: float) -> bool:
        """Reserve ``amount`` credits; False (nothing reserved) when the limit forbids it."""
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-9:
            return False
        self.reserved += amount
        return True

    def settle(self, model: str, reserved: float, cost: float | None, *, billed: bool) -> None:
        """Replace a reservation with what was billed (``cost``, else the reservation)."""
        self.reserved = max(self.reserved - reserved, 0.0)
        if billed:
            self.spent += cost if cost is not None else reserved
        if cost is not None:
            self._seen[model] = max(cost, self._seen.get(model, 0.0))


@dataclass(frozen=True, slots=True)
class _Job:
    item: LedgerItem
    request: BaseRequest | None = None  # None: a task an earlier run recorded
    task: Task | None = None


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
        self._allow_any_image_path = allow_any_image_path
        self._ledger = ledger
        self._prompts = prompts
        self._out = out
        self._model = model
        self._defaults = defaults
        self._concurrency = concurrency
        self._costs = costs
        self._progress = progress
        self._notify = notify
        self._digits = max(5, len(str(max(progress.total - 1, 0))))
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
        self._input_moved = False
        # The client's clock, for backdating resumed tasks (AsyncFlux does not publish it).
        self._clock: Clock = flux.clock

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
            send, receive = anyio.create_memory_object_stream[_Job]()
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

    # -- feeding -------------------------------------------------------------------------

    async def _feed(self, send: anyio.abc.ObjectSendStream[_Job]) -> None:
        async with send:
            with self._feed_scope:
                resumed = self._ledger.iter_items({ItemState.SUBMITTED, ItemState.READY})
                async with contextlib.aclosing(resumed) as items:
                    async for item in items:
                        await send.send(_Job(item, task=self._recorded_task(item)))
                await self._feed_pending(send)

    async def _feed_pending(self, send: anyio.abc.ObjectSendStream[_Job]) -> None:
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

    async def _pending_job(self, item: LedgerItem, reader: ScannedReader) -> _Job | None:
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
        return _Job(item, request=request)

    def _recorded_task(self, item: LedgerItem) -> Task:
        # Backdate the submit (by at most a minute, well inside any task timeout) so the
        # poll schedule treats the task as the old one it is and polls it at once.
        age = min(max(time.time() - item.updated_at, 0.0), _MAX_BACKDATE)
        return Task(
            id=item.task_id or "",
            polling_url=item.polling_url,
            model=item.model,
            provider=self._flux.provider_name,
            cost=item.cost,
            prompt=item.prompt,
            submitted_at=max(self._clock.monotonic() - age, 1e-9),
        )

    # -- one item ------------------------------------------------------------------------

    async def _work(self, receive: anyio.abc.ObjectReceiveStream[_Job]) -> None:
        async with receive:
            async for job in receive:
                await self._process(job)

    async def _process(self, job: _Job) -> None:
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
        stem = await self._stem(item)
        if "." in stem:
            stem += extension_for(getattr(request, "output_format", None), None)
        return self._out, stem

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
        self._forget(task.id)
        if resumed and await self._recover(item, outcome):
            return None
        if isinstance(outcome, FluxError):
            await self._fail(item, outcome, billed=not isinstance(outcome, ModerationError))
            return None
        return outcome

    def _forget(self, task_id: str) -> None:
        # AsyncFlux.wait keeps every finished task's entry in its scheduler; at 100 000
        # items that is memory and O(n) statistics. generate() forgets its tasks the same way.
        # In a fleet it also drops the task's record: this run has the result.
        self._flux._forget(task_id)

    async def _recover(self, item: LedgerItem, outcome: TaskResult | FluxError) -> bool:
        """Take an image an earlier run saved but did not get to record; True if found."""
        stem = await self._stem(item)
        found = await anyio.to_thread.run_sync(
            _existing_output, self._out, stem, item.updated_at - 1.0
        )
        if found is None:
            return False
        try:
            digest = await anyio.to_thread.run_sync(_sha256_file, found)
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
            stem = await self._stem(item)
            if "." in stem:
                # The downloader adds an extension only to a name without a suffix.
                stem += extension_for(result.task.output_format, None)
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

    async def _stem(self, item: LedgerItem) -> str:
        """Return the item's file-name stem; a name already taken gets ``-INDEX`` appended.

        The lowest index keeps a shared name, and a name that spells another (unnamed)
        item's automatic stem yields to it, so the result is the same in every run.
        """
        digits = self._digits
        stem = output_stem(item.index, item.prompt, item.name, digits=digits)
        if item.name is None:
            return stem
        first = await self._ledger.first_index_named(item.name)
        clash = first is not None and first != item.index
        auto = _AUTO_STEM.fullmatch(stem)
        if not clash and auto is not None and len(auto.group(1)) == digits:
            other = await self._ledger.get(int(auto.group(1)))
            clash = (
                other is not None
                and other.index != item.index
                and other.name is None
                and output_stem(other.index, other.prompt, None, digits=digits) == stem
            )
        return f"{stem}-{item.index:0{digits}d}" if clash else stem

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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _existing_output(out: Path, stem: str, since: float) -> Path | None:
    """Return a complete image of ``stem`` in ``out`` written after ``since`` (epoch s)."""
    for name in (stem + ext for ext in (".jpeg", ".png", ".webp", ".jpg")):
        candidate = out / name
        try:
            info = candidate.stat()
        except OSError:
            continue
        # Files are renamed into place only when complete, so one that exists is whole;
        # one older than the item's last ledger update belongs to an earlier attempt.
        if info.st_mtime >= since and info.st_size > 0:
            return candidate
    return None


def _first_leaf(group: BaseExceptionGroup[LedgerFullError]) -> LedgerFullError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
