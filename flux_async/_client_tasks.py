"""AsyncFlux's task-level methods: submit, wait and save, and a task's life in between.

:class:`TaskMethods` is the part of :class:`~flux_async.AsyncFlux` that sees one task
from its submit to its end: the limiter slot it holds, the scheduler entry that polls
it, its webhook watch and fleet record, the events it emits, and the download of its
image. ``AsyncFlux`` (``_client``) builds the parts these methods use and opens and
closes them; ``_client_generate`` builds ``generate`` and ``generate_many`` on them.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ._core._clock import Clock
from ._core._paths import task_stem
from ._engine._download import Downloader, SavedFile, result_deadline
from ._engine._limits import ActiveTaskLimiter, Slot
from ._engine._scheduler import Scheduler
from ._errors import ClientClosedError, DownloadError, FluxError
from ._fleet import Fleet, TaskRecord, adoption_target
from ._providers import Provider, ProviderPreset
from ._request._build import build_request, validate_request
from ._request._models import Status, Task, TaskResult
from ._request._references import ReferenceImage, reference_placeholders, resolve_references
from ._request._requests import BaseRequest
from ._submission import Submitter
from ._web._events import EventEmitter
from ._web._orphans import OrphanKeeper, WorkTracker
from ._web._webhook_app import WebhookReceiver

__all__ = ["ClientState", "TaskMethods", "forget_finished"]

logger = logging.getLogger("flux_async")


class ClientState(enum.Enum):
    """Where a client is in its life: it is opened once and closed once."""

    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class TaskMethods:
    """Submit, wait for and save one task at a time (see the module docstring)."""

    # Set by AsyncFlux.__init__; the open parts by AsyncFlux.__aenter__.
    _state: ClientState
    _clock: Clock
    _preset: ProviderPreset
    _limiter: ActiveTaskLimiter
    _submitter: Submitter
    _events: EventEmitter
    _webhooks: WebhookReceiver
    _work: WorkTracker
    _orphans: OrphanKeeper
    _fleet: Fleet | None
    _tg: anyio.abc.TaskGroup | None
    _provider: Provider | None
    _scheduler: Scheduler | None
    _downloader: Downloader | None

    def _abandon(self) -> None:
        lost = self._orphans.lost()
        if lost:
            logger.warning("client closed before saving orphaned task(s) %s", ", ".join(lost))
        if self._scheduler is None:
            return
        pending = self._scheduler.statistics().pending
        if pending:
            logger.warning("client closed with %d task(s) still pending on the server", pending)
        self._scheduler.abandon_all(ClientClosedError("the client was closed"))

    def _require_open(self) -> tuple[Provider, Scheduler, Downloader]:
        if self._state is not ClientState.OPENED:
            raise ClientClosedError(
                f"the client is {self._state.value}; use it inside `async with AsyncFlux()`"
            )
        if self._provider is None or self._scheduler is None or self._downloader is None:
            raise ClientClosedError("the client is not fully open")
        return self._provider, self._scheduler, self._downloader

    def _forget(self, task_id: str) -> None:
        """A task's caller is done with it (image saved, or it failed): forget it."""
        if self._scheduler is not None:
            self._scheduler.forget(task_id)
        if self._fleet is not None:
            self._fleet.unregister(task_id)

    def _adopt(self, record: TaskRecord, slot: Slot) -> None:
        """See a task of a dead fleet process to its end and save its image."""
        if self._tg is not None:
            self._tg.start_soon(self._keep_adopted, record, slot)

    async def _keep_adopted(self, record: TaskRecord, slot: Slot) -> None:
        # The first heartbeat adopts while the client is still opening: not yet OPENED,
        # but its scheduler is built. A client already closing leaves the record in
        # Redis and its lease held (its leave hands both on).
        scheduler = self._scheduler
        if scheduler is None or self._state is ClientState.CLOSED:
            return
        task = record.task(self._clock)
        dest, exact = await adoption_target(record, self._orphans.orphan_dir)
        self._work.enter()
        self._track(scheduler, task, slot, submitted=False, dest=dest)
        self._orphans.adopt(task, dest, None, exact=exact)

    # -- one image ----------------------------------------------------------------------

    def build_request(self, prompt: str | None = None, *, model: str, **fields: Any) -> BaseRequest:
        """Validate ``fields`` against ``model``'s rules; raise ValidationError naming the field."""
        return build_request(model, prompt, **fields)

    async def submit(
        self,
        request: BaseRequest | None = None,
        /,
        *,
        images: Sequence[ReferenceImage] | None = None,
        **fields: Any,
    ) -> Task:
        """Submit one request under the active-task limit and start polling it.

        Pass a request model, or fields (``prompt=``, ``model=``, ...). The task's slot is
        held until the scheduler sees a terminal status. ``images`` (URLs, paths, bytes or
        data: URLs) fill the model's reference fields, replacing any the request has;
        files are read only now, just before sending.

        Args:
            request: A request built with ``build_request`` (or None, and fields).
            images: Reference images, in order.
            **fields: ``prompt=``, ``model=`` and request fields, when no request is given.

        Returns:
            The created task; pass it to ``wait``.

        Raises:
            ValidationError: The request breaks its model's rules (nothing was sent).
            APIError: The server refused the submit.
            AmbiguousSubmitError: The submit may have created (and billed) a task whose
                id never came back; it is not sent again unless ``retry_ambiguous``.

        Examples:
            ```python
            task = await flux.submit(prompt="a red fox", model="flux-2-pro")
            result = await flux.wait(task)
            path = await flux.save(result, "out")
            ```
        """
        if request is not None:
            req = validate_request(request)
        else:
            model = fields.pop("model", "flux-2-pro")
            fields.update(reference_placeholders(images, model=model, fields=fields))
            req = build_request(model, fields.pop("prompt", None), **fields)
        return await self._submit(req, images)

    async def _submit(
        self,
        req: BaseRequest,
        images: Sequence[ReferenceImage] | None = None,
        output: tuple[Path, str | None] | None = None,
    ) -> Task:
        provider, scheduler, _ = self._require_open()
        if images:
            req = await self._with_references(req, images)
        req = self._webhooks.prepare(req)
        task, slot = await self._submitter.submit(provider, req)
        dest = output[0] / (output[1] or task.id) if output is not None else None
        self._track(scheduler, task, slot, dest=dest)
        if self._fleet is not None:
            await self._fleet.registered(task.id)
        return task

    async def _with_references(
        self, req: BaseRequest, images: Sequence[ReferenceImage]
    ) -> BaseRequest:
        """Return ``req`` with its reference fields filled from ``images``, as the wire needs."""
        resolved = await resolve_references(images, model=req.model, dialect=self._preset.dialect)
        changes: dict[str, Any] = dict.fromkeys(type(req).reference_fields)
        changes.update(resolved)
        return req.replace(**changes)

    def _track(
        self,
        scheduler: Scheduler,
        task: Task,
        slot: Slot,
        *,
        submitted: bool = True,
        dest: Path | None = None,
    ) -> None:
        # Only tasks submitted here carry this client's webhook; resumed ones are polled.
        key = self._webhooks.watch(task) if submitted else None
        self._events.submitted(task, webhook=key is not None)
        fleet = self._fleet
        if fleet is not None:
            # Recorded until its image is saved (with a destination) or until it ends.
            fleet.register(task, slot, dest)

        def ended(outcome: TaskResult | FluxError) -> None:
            slot.release()
            if fleet is not None and dest is None:
                fleet.unregister(task.id)
            self._webhooks.unwatch(task.id)
            self._work.notify()
            self._events.ended(task, outcome)

        scheduler.add(task, on_terminal=ended, key=key)

    async def wait(self, task: Task) -> TaskResult:
        """Wait until the shared scheduler sees ``task`` end; return its result or raise.

        A task this client did not submit (one recorded by an earlier run) is polled by its
        recorded ``polling_url`` and counted against the active-task limit until it ends.

        Args:
            task: A task from ``submit`` (or one recorded earlier).

        Returns:
            The result, with the signed URL of the image (valid for minutes: save it soon).

        Raises:
            TaskError: The task ended without an image (``ModerationError``,
                ``GenerationError``, ``TaskNotFoundError``, ``TaskTimeoutError`` ...).
        """
        _, scheduler, _ = self._require_open()
        if not scheduler.is_registered(task.id):
            self._track(scheduler, task, self._limiter.occupy(task.model), submitted=False)
        return await scheduler.wait(task)

    async def save(self, result: TaskResult, path: str | Path) -> Path:
        """Stream ``result``'s image to ``path`` (a file, or an existing folder) and return it.

        The extension comes from the output format or the content type when ``path`` has
        none. Bytes go to a temp file renamed into place only when complete. Into a
        folder, the name is the task id made safe (``_paths.task_stem``) and an existing
        file is never replaced (``NAME-1.jpeg``, ... instead); a file path the caller
        names is replaced if it exists.

        Args:
            result: A result from ``wait``.
            path: A file path, or an existing folder (the file is named by the task id).

        Returns:
            The path of the saved file.

        Raises:
            ResultExpiredError: The signed URL expired before the download.
            IncompleteDownloadError: The download ended early (no partial file is left).
            StorageError: The local disk refused the file (full, read-only, I/O error);
                the task is still ready, so saving again needs no new submit.
        """
        return (await self._save_file(result, path, overwrite=True)).path

    async def _save_new(self, result: TaskResult, path: str | Path) -> Path:
        """Save as :meth:`save` does, but never replace an existing file."""
        return (await self._save_file(result, path, overwrite=False)).path

    async def _save_file(
        self, result: TaskResult, path: str | Path, *, overwrite: bool
    ) -> SavedFile:
        """Save as :meth:`save` does; return the size and SHA-256 hashed while streaming."""
        _, _, downloader = self._require_open()
        dest = Path(path)
        if await anyio.Path(dest).is_dir():
            # The id is the server's string: never a path, only a sanitised name.
            dest, overwrite = dest / task_stem(result.task.id), False
        deadline = result_deadline(
            result.sample_url, end_time=result.end_time, now=self._clock.time()
        )
        try:
            saved = await downloader.download(
                result.sample_url,
                dest,
                deadline=deadline,
                task_id=result.task.id,
                refresh=lambda: self._fresh_url(result),
                output_format=result.task.output_format,
                overwrite=overwrite,
            )
        except DownloadError as exc:
            self._events.failed(exc, result.task)
            raise
        orphan = self._orphans.is_adopted(result.task.id)
        self._events.saved(result.task, saved.path, saved.size, orphan=orphan)
        return saved

    async def _fresh_url(self, result: TaskResult) -> str | None:
        provider, _, _ = self._require_open()
        reply = await provider.poll(result.task)
        sample = reply.sample() if reply.status == Status.READY else None
        # The same URL again is still worth one more try: the 403 may have been transient.
        return sample.sample if sample is not None and sample.sample else None


def forget_finished(flux: TaskMethods, task_id: str) -> None:
    """Free the scheduler's entry of a task whose outcome the caller has taken.

    ``wait`` keeps a finished task's entry so that waiting again answers at once; a
    caller that waits for each task once and holds on to the outcome (a batch of 100 000
    items) frees it here, or memory and ``statistics()`` grow with every task. In a fleet
    it also drops the task's record: the caller has the result.
    """
    flux._forget(task_id)
