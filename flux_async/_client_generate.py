"""AsyncFlux's image methods: ``generate`` one image, ``generate_many`` from a stream.

:class:`GenerateMethods` builds on the task-level methods (``_client_tasks``): each
image is a submit, a wait and a save into an output folder, under the orphan keeper's
guard once paid for; ``generate_many`` runs them from a task group (``_many``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio

from ._client_tasks import TaskMethods
from ._core._paths import WritableFolders, check_file_name, task_stem
from ._errors import ClientClosedError
from ._many import Item, run_many
from ._request._build import build_request
from ._request._models import GeneratedImage, Outcome
from ._request._references import ReferenceImage, reference_placeholders
from ._request._requests import BaseRequest

__all__ = ["GenerateMethods"]


class GenerateMethods(TaskMethods):
    """Generate images into a folder (see the module docstring)."""

    # Set by AsyncFlux.__init__.
    _folders: WritableFolders
    _held_back: int

    async def generate(
        self,
        prompt: str | None = None,
        *,
        model: str = "flux-2-pro",
        output_dir: str | Path = ".",
        filename: str | None = None,
        images: Sequence[ReferenceImage] | None = None,
        **fields: Any,
    ) -> GeneratedImage:
        """Generate one image and save it under ``output_dir``; return where it is.

        ``images`` are reference images for editing: URLs, local paths, bytes or data:
        URLs, in the order of the model's ``input_image`` fields. ``filename`` must be a
        plain file name (no separator, ``..``, absolute path or control character: a
        ValidationError before anything is sent); without it the name is the task id
        made safe. An existing file is never replaced: ``NAME-1.jpeg``, ``NAME-2.jpeg``,
        ... is used instead (``img.path`` says which). ``output_dir`` is created and
        write-tested before the submit (ConfigurationError if it cannot be written).

        Args:
            prompt: The text prompt (optional only where the model allows it).
            model: A model of the catalog (``flux_async.MODELS``).
            output_dir: The folder the image is saved in (created if missing).
            filename: The file name without extension (default: the task id).
            images: Reference images, in order.
            **fields: Any other request field of the model (``width``, ``seed`` ...).

        Returns:
            Where the image was saved, with its task id, seed and cost.

        Raises:
            ConfigurationError: An unknown model; the client is set up wrongly.
            ValidationError: A field breaks the model's rules (nothing was sent).
            APIError: The server refused the submit (``AuthenticationError``,
                ``InsufficientCreditsError``, ``RateLimitError`` ...).
            TaskError: The task ended without an image (``ModerationError``,
                ``GenerationError``, ``TaskTimeoutError`` ...).
            DownloadError: The image could not be saved.

        Examples:
            ```python
            async with AsyncFlux() as flux:  # the key comes from BFL_API_KEY
                image = await flux.generate("a red fox", width=1024, height=768, seed=7)
                print(image.path, image.task_id, image.cost)
            ```
        """
        if filename is not None:
            check_file_name(filename, field="filename")
        fields.update(reference_placeholders(images, model=model, fields=fields))
        request = build_request(model, prompt, **fields)
        folder = await self._folders.prepare(output_dir)
        return await self._generate(request, folder, filename, images)

    async def _generate(
        self,
        request: BaseRequest,
        output_dir: Path,
        stem: str | None,
        images: Sequence[ReferenceImage] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> GeneratedImage:
        task = await self._submit(request, images, (output_dir, stem))
        dest = output_dir / (stem or task_stem(task.id))
        # Paid from here on: if this caller is cancelled, the orphan keeper takes over.
        with self._orphans.guard(task, dest) as guard:
            result = guard.result = await self.wait(task)
            if on_ready is not None:
                on_ready()  # generate_many: the next item may submit during this download
            saved = await self._save_file(result, dest, overwrite=False)
        return GeneratedImage(
            path=saved.path,
            task_id=task.id,
            model=task.model,
            prompt=task.prompt,
            seed=result.seed,
            cost=task.cost,
            size=saved.size,
            prompt_used=result.prompt,
        )

    @contextlib.contextmanager
    def _waiting_for_slot(self) -> Iterator[None]:
        """Count the caller as a submission waiting for a slot while inside the block.

        For callers that queue before :meth:`submit` (``flux-async batch`` does): the
        polling regime (``polling="auto"``) then knows a backlog waits, as it knows of
        the limiter's own waiters.
        """
        self._held_back += 1
        try:
            yield
        finally:
            self._held_back -= 1

    # -- many images --------------------------------------------------------------------

    async def generate_many(
        self,
        items: Iterable[Item] | AsyncIterable[Item],
        *,
        model: str = "flux-2-pro",
        output_dir: str | Path = ".",
        concurrency: int | None = None,
        **defaults: Any,
    ) -> AsyncGenerator[Outcome, None]:
        """Yield an :class:`Outcome` per item as each finishes; never raise for one item.

        Items are prompts, mappings of request fields (``prompt``, ``model``, ...), or
        request models. ``defaults`` apply to every item; an item's own fields win.
        At most ``concurrency`` items are being submitted or generated (default: twice
        the active limit); an item whose task is Ready makes room for the next while its
        image downloads, and at most ``concurrency`` more wait for or run their download.
        Item ``i`` is saved as ``{i:05d}.<ext>``, or ``{i:05d}-1.<ext>``, ... when that
        name is taken: an existing file is never replaced. A malformed item (wrong type,
        unknown field, a rule broken) is that item's failed outcome (ValidationError).
        ``output_dir`` is created and write-tested before the first submit
        (ConfigurationError, raised by the first iteration, if it cannot be written).

        Args:
            items: Prompts, mappings of request fields, or request models; an async
                iterable is read as items are needed.
            model: The model of items that do not name one.
            output_dir: The folder every image is saved in.
            concurrency: Items in progress at once.
            **defaults: Request fields applied to every item.

        Yields:
            One ``Outcome`` per item, in finishing order: ``index``, ``ok``, ``path``,
            ``error`` (the exception an item's failure would have raised).

        Raises:
            ClientClosedError: The client is not open.

        Examples:
            ```python
            async for outcome in flux.generate_many(["a cat", "a dog"], output_dir="out"):
                print(outcome.index, outcome.ok, outcome.path, outcome.error)
            ```
        """
        self._require_open()
        if self._tg is None:
            raise ClientClosedError("the client is not fully open")
        folder = await self._folders.prepare(output_dir)
        limit = concurrency or 2 * self._limiter.limit
        send, receive = anyio.create_memory_object_stream[Outcome](limit)
        scope = anyio.CancelScope()
        self._tg.start_soon(
            run_many, self._generate, items, send, scope, limit, model, folder, defaults
        )
        try:
            async with receive:
                async for outcome in receive:
                    yield outcome
        finally:
            # The consumer stopped early: stop feeding; submitted tasks keep their slots.
            scope.cancel()
