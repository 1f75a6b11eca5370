"""Minimal server-side checks of a submit body, answered in FastAPI's 422 shape.

The real server validates with pydantic; this checks what clients most often get wrong
(prompt, sizes, output format, seed) per model family, after ``specs/PROTOCOL.md``.
Each problem is ``{"loc": ["body", field], "msg": ..., "type": ...}``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Shape", "check", "output_shape"]

_NO_PROMPT = frozenset({"flux-pro-1.0-fill", "flux-pro-1.0-expand"})
_RATIO_MODELS = frozenset({"flux-kontext-pro", "flux-kontext-max", "flux-pro-1.1-ultra"})
_FOUR_MP = 4 * 1024 * 1024
_INPUT_FIELD = re.compile(r"input_image(_[2-8])?|image_prompt|image")


@dataclass(frozen=True, slots=True)
class _SizeRule:
    multiple: int
    low: int
    high: int | None
    max_pixels: int | None


def _size_rule(model: str) -> _SizeRule | None:
    if model.startswith("flux-2-"):
        return _SizeRule(16, 64, None, _FOUR_MP)
    if model in {"flux-pro-1.1", "flux-dev"}:
        return _SizeRule(32, 256, 1440, None)
    return None


def _formats(model: str) -> tuple[str, ...]:
    return ("jpeg", "png", "webp") if model.startswith("flux-2-") else ("jpeg", "png")


def _problem(field: str | None, msg: str, kind: str) -> dict[str, Any]:
    loc = ["body"] if field is None else ["body", field]
    return {"loc": loc, "msg": msg, "type": kind}


def check(model: str, body: Any) -> list[dict[str, Any]]:
    """Return the validation problems of ``body`` for ``model`` (empty when it passes)."""
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return [_problem(None, msg, "model_attributes_type")]
    problems: list[dict[str, Any]] = []
    prompt = body.get("prompt")
    if model not in _NO_PROMPT and (prompt is None or prompt == ""):
        problems.append(_problem("prompt", "Field required", "missing"))
    elif prompt is not None and not isinstance(prompt, str):
        problems.append(_problem("prompt", "Input should be a valid string", "string_type"))
    for name in ("seed", "width", "height"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(_problem(name, "Input should be a valid integer", "int_type"))
    rule = _size_rule(model)
    if rule is not None and not problems:
        problems += _check_size(rule, body)
    fmt = body.get("output_format")
    allowed = _formats(model)
    if fmt is not None and fmt not in allowed:
        msg = "Input should be " + " or ".join(f"'{f}'" for f in allowed)
        problems.append(_problem("output_format", msg, "enum"))
    if model in _RATIO_MODELS and body.get("aspect_ratio") is not None:
        ratio = _ratio(body["aspect_ratio"])
        if ratio is None or not 9 / 21 <= ratio <= 21 / 9:
            msg = "Value error, aspect ratio must be 'W:H' between 21:9 and 9:21"
            problems.append(_problem("aspect_ratio", msg, "value_error"))
    return problems


def _check_size(rule: _SizeRule, body: dict[str, Any]) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    for name in ("width", "height"):
        value = body.get(name)
        # FLUX.2 reads 0 or an absent size as "take it from the first input image".
        if not value and rule.max_pixels is not None:
            continue
        if value is None:
            continue
        if value < rule.low:
            msg = f"Input should be greater than or equal to {rule.low}"
            problems.append(_problem(name, msg, "greater_than_equal"))
        elif rule.high is not None and value > rule.high:
            msg = f"Input should be less than or equal to {rule.high}"
            problems.append(_problem(name, msg, "less_than_equal"))
        elif value % rule.multiple:
            msg = f"Input should be a multiple of {rule.multiple}"
            problems.append(_problem(name, msg, "multiple_of"))
    width, height = body.get("width") or 0, body.get("height") or 0
    if not problems and rule.max_pixels is not None and width * height > rule.max_pixels:
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
