"""What a prompt item asks for: its fields, its reference images, its rules, its fingerprint.

``merged_fields`` lays an item's fields over the run's defaults; ``validate_item`` checks
the item against its model's rules before anything is paid for; ``input_fingerprint``
lets a resumed run notice that an item or the defaults changed. The items come from
``_prompts``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError, ValidationError
from ._prompts import ITEM_KEYS, InputProblem, PromptItem

__all__ = [
    "input_fingerprint",
    "merged_fields",
    "reference_image_fields",
    "validate_item",
]


def merged_fields(item: PromptItem, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Return the defaults overridden by the item's fields, without None values.

    None means "not given" on both sides, so an item can cancel a default with ``null``.
    ``prompt``, ``name``, ``model`` and ``images`` are never fields, even in defaults.
    An item that names its own model gets only the defaults that model accepts (a
    ``--width`` meant for FLUX.2 does not break a Kontext item); an item of the default
    model gets them all, so a default its model refuses is reported, not dropped.
    """
    merged = {k: v for k, v in defaults.items() if k not in ITEM_KEYS}
    if item.model is not None:
        accepted = _accepted_fields(item.model)
        if accepted is not None:
            merged = {k: v for k, v in merged.items() if k in accepted}
    merged.update(item.fields)
    return {k: v for k, v in merged.items() if v is not None}


def _accepted_fields(model: str) -> frozenset[str] | None:
    catalog = importlib.import_module("flux_async._request._catalog")
    try:
        return frozenset(catalog.get_model(model).accepted_fields)
    except ConfigurationError:
        return None  # an unknown model: the request builder reports it


def reference_image_fields(model: str, images: Sequence[str]) -> dict[str, Any]:
    """Map reference images, in order, to the fields ``model`` takes them in.

    ``input_image``, ``input_image_2``, … for FLUX.2 and Kontext, ``image_prompt`` for
    FLUX 1.1, ``image`` for fill/expand (from the model catalog). Raises ValueError when
    there are more images than the model accepts.
    """
    catalog = importlib.import_module("flux_async._request._catalog")
    try:
        names: tuple[str, ...] = tuple(catalog.get_model(model).request_type.reference_fields)
    except ConfigurationError:
        # The request builder reports the unknown model; name the images the common way.
        names = ("input_image", *(f"input_image_{n}" for n in range(2, len(images) + 1)))
    if len(images) > len(names):
        raise ValueError(
            f"{model} takes at most {len(names)} reference image(s), got {len(images)}"
        )
    return dict(zip(names, images, strict=False))


def _build_request(model: str, prompt: str | None, **fields: Any) -> object:
    # Imported on first use: the request module is heavier and validation is optional.
    requests = importlib.import_module("flux_async._request._build")
    return requests.build_request(model, prompt, **fields)


def validate_item(
    item: PromptItem,
    *,
    defaults: Mapping[str, Any],
    default_model: str,
    path: Path,
    builder: Callable[..., object] = _build_request,
    image_fields: Callable[[str, Sequence[str]], Mapping[str, Any]] = reference_image_fields,
) -> list[InputProblem]:
    """Return every rule the item breaks for its model (an empty list when it is valid).

    The defaults are merged under the item's fields and the request is built with
    ``builder(model, prompt, **fields)`` (``build_request`` unless a test passes another).
    Reference images are passed as the fields ``image_fields`` maps them to (their path
    or URL text: files are not opened here); too many images is a problem of ``images``.
    """
    model = item.model or default_model
    fields = merged_fields(item, defaults)
    if item.images:
        try:
            fields.update(image_fields(model, item.images))
        except ValueError as exc:
            return [InputProblem(path, item.line, "images", str(exc), item.index)]
    try:
        builder(model, item.prompt, **fields)
    except ValidationError as exc:
        return [InputProblem(path, item.line, f, r, item.index) for f, r in exc.errors]
    except ConfigurationError as exc:
        where = str(getattr(exc, "field", None) or "model")
        return [InputProblem(path, item.line, where, exc.message, item.index)]
    return []


def input_fingerprint(item: PromptItem, defaults: Mapping[str, Any], model: str) -> str:
    """Return the sha256 (hex) of the item's full request: model, prompt, fields, name, images.

    ``model`` is the run's default model (the item's own model wins). Two runs give the
    same fingerprint exactly when they would send the same request and name the file the
    same way, however the item and the defaults split the fields between them.
    """
    request = {
        "model": item.model or model,
        "prompt": item.prompt,
        "fields": merged_fields(item, defaults),
        "name": item.name,
        "images": list(item.images),
    }
    text = _CANONICAL_JSON.encode(request)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# One encoder for every fingerprint: json.dumps with options builds a new one per call,
# which is most of the cost of fingerprinting a million-line file.
_CANONICAL_JSON = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)
