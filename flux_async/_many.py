"""``generate_many``'s machinery: bounded workers feeding outcomes into a stream.

The workers run in the client's task group (so nothing outlives the client) under a
cancel scope the consumer's generator owns: when the consumer stops early, feeding stops;
tasks already submitted keep their slots until they end on the server.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ._core._guard import unexpected
from ._engine._pipeline import Stages, Ticket
from ._errors import FluxError, ValidationError
from ._request._build import build_request, validate_request
from ._request._models import GeneratedImage, Outcome
from ._request._references import ReferenceImage, reference_placeholders
from ._request._requests import BaseRequest

__all__ = ["GenerateOne", "Item", "run_many"]

Item = str | Mapping[str, Any] | BaseRequest
# (request, output dir, file stem, reference images, called once the task is Ready)
GenerateOne = Callable[
    [BaseRequest, Path, str | None, Sequence[ReferenceImage] | None, Callable[[], None]],
    Awaitable[GeneratedImage],
]


async def run_many(
    generate: GenerateOne,
    items: Iterable[Item] | AsyncIterable[Item],
    send: anyio.abc.ObjectSendStream[Outcome],
    scope: anyio.CancelScope,
    limit: int,
    model: str,
    output_dir: Path,
    defaults: Mapping[str, Any],
) -> None:
    """Run ``generate`` for every item, sending each outcome: at most ``limit`` items
    before their task is Ready, and as many again waiting for or in their download.
    """
    stages = Stages(limit, backlog=limit)
    with scope:
        async with send, anyio.create_task_group() as tg:
            index = 0
            async for item in _aiter(items):
                ticket = await stages.admit()
                tg.start_soon(
                    _one, generate, index, item, send, ticket, model, output_dir, defaults
                )
                index += 1


async def _one(
    generate: GenerateOne,
    index: int,
    item: Item,
    send: anyio.abc.ObjectSendStream[Outcome],
    ticket: Ticket,
    model: str,
    output_dir: Path,
    defaults: Mapping[str, Any],
) -> None:
    prompt: str | None = None
    try:
        request, images = item_request(item, model, defaults, index=index)
        prompt = getattr(request, "prompt", None)
        image = await generate(request, output_dir, f"{index:05d}", images, ticket.ready)
        outcome = Outcome(index=index, prompt=prompt, image=image, task_id=image.task_id)
    except FluxError as exc:
        prompt = prompt or item_prompt(item)
        outcome = Outcome(index=index, prompt=prompt, error=exc, task_id=exc.task_id)
    except Exception as exc:  # noqa: BLE001 - the guard: this item fails, the others go on
        error = unexpected(exc, task_id=None, where=f"item {index}")
        outcome = Outcome(index=index, prompt=prompt or item_prompt(item), error=error)
    finally:
        ticket.close()
    await send.send(outcome)


def item_request(
    item: Item, model: str, defaults: Mapping[str, Any], *, index: int = 0
) -> tuple[BaseRequest, Sequence[ReferenceImage] | None]:
    """Return the item's checked request and its reference images (read at submit time).

    Anything malformed (not a prompt, mapping or request; a key that is not a string;
    a value of the wrong type) raises ValidationError naming ``items[index]`` and the
    field, so it becomes that item's failed outcome and nothing is sent.
    """
    where = f"items[{index}]"
    if isinstance(item, BaseRequest):
        return validate_request(item), None
    if not isinstance(item, str | Mapping):
        kind = type(item).__name__
        rule = f"must be a prompt, a mapping of request fields or a request model, not {kind}"
        raise ValidationError(where, rule)
    if isinstance(item, Mapping):
        bad_keys = [key for key in item if not isinstance(key, str)]
        if bad_keys:
            raise ValidationError(where, f"field names must be strings, got {bad_keys[0]!r}")
    fields = {**defaults} if isinstance(item, str) else {**defaults, **item}
    images = fields.pop("images", None)
    item_model = fields.pop("model", model)
    prompt = item if isinstance(item, str) else fields.pop("prompt", None)
    try:
        if not isinstance(item_model, str):
            raise ValidationError(f"{where}.model", "must be a model name (a string)")
        if prompt is not None and not isinstance(prompt, str):
            raise ValidationError(f"{where}.prompt", "must be a string")
        fields.update(reference_placeholders(images, model=item_model, fields=fields))
        return build_request(item_model, prompt, **fields), images
    except FluxError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        # A shape the field checks did not foresee: still this item's failure only.
        raise ValidationError(where, f"malformed item: {exc}") from exc


def item_prompt(item: Item) -> str | None:
    """Return the prompt an item asked for, for reporting a failure that has no request."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        value = item.get("prompt")
        return value if isinstance(value, str) else None
    return getattr(item, "prompt", None)


async def _aiter(items: Iterable[Item] | AsyncIterable[Item]) -> AsyncIterator[Item]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
            # Yield control so a huge synchronous iterable cannot starve the event loop.
            await anyio.lowlevel.checkpoint()
