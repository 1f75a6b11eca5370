"""Server-side checks of a submit body, answered in FastAPI's 422 shape.

Two layers, nothing else:

1. BFL's OpenAPI document (``bfl-openapi.json``, shipped with this package): the body
   is validated against the request schema of ``POST /v1/{model}`` (see ``_schema``).
   What the document allows is accepted: ``output_format: "webp"`` on every model, a
   blank or missing ``prompt`` where it is optional (``flux-pro-1.1``, ``flux-dev``,
   ``flux-pro-1.1-ultra``, fill, expand), unknown fields (ignored, as FastAPI does).
2. The model rules BFL's model pages state beyond the document, each in
   :data:`DOCUMENTED_RULES` with its source.

Each problem is ``{"loc": ["body", field], "msg": ..., "type": ...}``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ._schema import request_schema, validate

__all__ = ["DOCUMENTED_RULES", "Shape", "check", "output_shape"]

_FLUX2 = "flux-2-"
_RATIO_MODELS = frozenset({"flux-kontext-pro", "flux-kontext-max", "flux-pro-1.1-ultra"})
_FOUR_MP = 4 * 1024 * 1024
_INPUT_FIELD = re.compile(r"input_image(_[2-8])?|image_prompt|image")

#: The rules checked beyond the OpenAPI document: ``(models, rule, source)``.
DOCUMENTED_RULES: tuple[tuple[str, str, str], ...] = (
    (
        "flux-2-*",
        "width and height are multiples of 16",
        "BFL docs, FLUX.2 'Image dimensions' (the schema only says minimum 64)",
    ),
    (
        "flux-2-*",
        "width x height is at most 4 megapixels",
        "BFL docs, FLUX.2 'Image dimensions': output up to 4MP",
    ),
    (
        "flux-kontext-pro, flux-kontext-max, flux-pro-1.1-ultra",
        "aspect_ratio is 'W:H' between 21:9 and 9:21",
        "BFL docs, Kontext and FLUX1.1 [pro] Ultra pages (the schema types it as a string)",
    ),
)


def _problem(field: str | None, msg: str, kind: str) -> dict[str, Any]:
    loc = ["body"] if field is None else ["body", field]
    return {"loc": loc, "msg": msg, "type": kind}


def check(model: str, body: Any) -> list[dict[str, Any]]:
    """Return the validation problems of ``body`` for ``model`` (empty when it passes).

    The OpenAPI schema first; the documented rules only for a body the schema accepts.
    A model without a route in the document (a test's own) gets the object check only.
    """
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return [_problem(None, msg, "model_attributes_type")]
    schema = request_schema(model)
    problems: list[dict[str, Any]] = [] if schema is None else validate(schema, body)
    if problems:
        return problems
    if model.startswith(_FLUX2):
        problems += _flux2_size(body)
    if model in _RATIO_MODELS and body.get("aspect_ratio") is not None:
        ratio = _ratio(body["aspect_ratio"])
        if ratio is None or not 9 / 21 <= ratio <= 21 / 9:
            msg = "Value error, aspect ratio must be 'W:H' between 21:9 and 9:21"
            problems.append(_problem("aspect_ratio", msg, "value_error"))
    return problems


def _flux2_size(body: dict[str, Any]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    for name in ("width", "height"):
        value = body.get(name)
        if value is not None and value % 16:
            msg = "Input should be a multiple of 16"
            problems.append(_problem(name, msg, "multiple_of"))
    width, height = body.get("width") or 0, body.get("height") or 0
    if not problems and width * height > _FOUR_MP:
        msg = "Value error, width x height must be at most 4 megapixels"
        problems.append(_problem(None, msg, "value_error"))
    return problems


def _ratio(value: Any) -> float | None:
    if not isinstance(value, str) or value.count(":") != 1:
        return None
    left, right = value.split(":")
    if not (left.isdigit() and right.isdigit()) or int(right) == 0 or int(left) == 0:
        return None
    return int(left) / int(right)


@dataclass(frozen=True, slots=True)
class Shape:
    """The image a valid body asks for: pixel size and file format."""

    width: int
    height: int
    output_format: str
    input_images: int

    @property
    def output_mp(self) -> float:
        """Return the output size in megapixels, two decimals, as the reply states it."""
        return round(self.width * self.height / 1_000_000, 2)


def output_shape(model: str, body: dict[str, Any]) -> Shape:
    """Return the size and format of the image a (valid) ``body`` produces."""
    width, height = body.get("width") or 0, body.get("height") or 0
    if not (width and height):
        ratio = _ratio(body.get("aspect_ratio"))
        if model == "flux-pro-1.1-ultra":
            width, height = _from_ratio(ratio or 16 / 9, _FOUR_MP)
        elif model in _RATIO_MODELS:
            width, height = _from_ratio(ratio or 1.0, 1024 * 1024)
        elif model in {"flux-pro-1.1", "flux-dev"}:
            width, height = width or 1024, height or 768
        else:
            width, height = width or 1024, height or 1024
    default = "png" if model.startswith("flux-kontext") else "jpeg"
    fmt = body.get("output_format") or default
    inputs = sum(1 for key, value in body.items() if value and _INPUT_FIELD.fullmatch(key))
    return Shape(width, height, fmt, inputs)


def _from_ratio(ratio: float, pixels: int) -> tuple[int, int]:
    width = math.sqrt(pixels * ratio)
    return max(16, round(width / 16) * 16), max(16, round(width / ratio / 16) * 16)
