"""The rules a request is checked against, and how broken rules are worded.

The field types here carry the limits of ``bfl-openapi.json`` plus the documented rules
the document leaves out (FLUX.2's 16-pixel grid and 4 MP cap, the 21:9..9:21 aspect
range, http(s) webhooks). Every pydantic error is turned into our
:class:`~flux_async._errors.ValidationError`, worded ``field: rule for model (got value)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import pydantic
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from .._errors import ValidationError

__all__ = [
    "FLUX2_MAX_PIXELS",
    "SEED_MAX",
    "AspectRatio",
    "Flux1Side",
    "Flux2Side",
    "ImageRef",
    "OutputFormat",
    "Prompt",
    "Rule",
    "Seed",
    "WebhookUrl",
    "convert_errors",
    "image_order_rules",
    "raise_rules",
    "rule_error",
]

FLUX2_MAX_PIXELS = 2048 * 2048
"""FLUX.2 output cap: 4 MP (4_194_304 pixels), any shape."""

FLUX2_MIN_SIDE = 64
FLUX1_MIN_SIDE, FLUX1_MAX_SIDE = 256, 1440

SEED_MAX = 2**63 - 1
"""Seeds are kept to a signed 64-bit integer: the ledger stores them in SQLite INTEGER."""

WEBHOOK_URL_MAX = 2083
_ASPECT_MIN = Fraction(9, 21)
_ASPECT_MAX = Fraction(21, 9)
_ASPECT_RE = re.compile(r"(\d+):(\d+)")
_GOT_MAX = 60
# Values that must never be echoed in an error message.
_SECRET_FIELDS = frozenset({"webhook_secret"})
_RULE = "flux_rule"
_RULES = "flux_rules"


class Rule(NamedTuple):
    """One broken rule: the field, what was expected, and the offending value as text."""

    field: str
    rule: str
    got: str | None = None


def rule_error(rule: str) -> PydanticCustomError:
    """Return the error a field validator raises for a broken rule (its text is final)."""
    return PydanticCustomError(_RULE, rule)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise rule_error("must not be empty")
    return value


def _aspect_ratio(value: str) -> str:
    match = _ASPECT_RE.fullmatch(value)
    if match is None:
        raise rule_error('must be "W:H" with whole numbers, e.g. "16:9"')
    width, height = int(match[1]), int(match[2])
    if width == 0 or height == 0 or not _ASPECT_MIN <= Fraction(width, height) <= _ASPECT_MAX:
        raise rule_error("must be between 21:9 and 9:21")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise rule_error("must be an http:// or https:// URL")
    return value


def _flux2_side(value: int) -> int:
    if value < FLUX2_MIN_SIDE:
        raise rule_error(f"must be >= {FLUX2_MIN_SIDE} (or 0: the first input image's size)")
    if value % 16:
        raise rule_error("must be a multiple of 16")
    return value


def _flux1_side(value: int) -> int:
    if not FLUX1_MIN_SIDE <= value <= FLUX1_MAX_SIDE or value % 32:
        raise rule_error(f"must be a multiple of 32 from {FLUX1_MIN_SIDE} to {FLUX1_MAX_SIDE}")
    return value


Prompt = Annotated[str, AfterValidator(_non_blank)]
ImageRef = Annotated[str, Field(min_length=1)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Flux2Side = Annotated[int, AfterValidator(_flux2_side)]
Flux1Side = Annotated[int, AfterValidator(_flux1_side)]
AspectRatio = Annotated[str, AfterValidator(_aspect_ratio)]
WebhookUrl = Annotated[
    str, Field(min_length=1, max_length=WEBHOOK_URL_MAX), AfterValidator(_http_url)
]
OutputFormat = Literal["jpeg", "png", "webp"]


def raise_rules(rules: Sequence[Rule]) -> None:
    """Raise one pydantic error carrying every cross-field rule broken, if any."""
    if rules:
        raise PydanticCustomError(
            _RULES, "{count} cross-field rule(s) broken", {"count": len(rules), "rules": rules}
        )


def image_order_rules(values: Iterable[tuple[str, str | None]]) -> list[Rule]:
    """Check reference images are filled in order: no ``input_image_3`` without ``_2``."""
    rules: list[Rule] = []
    first_gap: str | None = None
    for name, value in values:
        if value is None:
            first_gap = first_gap or name
        elif first_gap is not None:
            rules.append(
                Rule(name, f"is set but {first_gap} is not: fill reference images in order")
            )
    return rules


def _show(field: str, value: Any) -> str | None:
    """Render an offending value for a message: short, and never a secret."""
    if field in _SECRET_FIELDS:
        return None
    text = repr(value)
    if len(text) > _GOT_MAX:
        return f"{text[: _GOT_MAX - 10]}... ({len(text)} chars)"
    return text


# pydantic error types and how we word them; ``{...}`` is filled from the error's ctx.
_TEMPLATES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
    "greater_than": "must be > {gt}",
    "less_than": "must be < {lt}",
    "multiple_of": "must be a multiple of {multiple_of}",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "literal_error": "must be one of {expected}",
}
_IMAGE_RE = re.compile(r"input_image(?:_\d+)?")


def _not_accepted(field: str, model: str, accepted: Sequence[str]) -> str:
    if _IMAGE_RE.fullmatch(field):
        images = [name for name in accepted if _IMAGE_RE.fullmatch(name)]
        if images:
            return (
                f"not accepted by {model} (at most {len(images)} reference images: "
                f"{images[0]} .. {images[-1]})"
            )
    return f"not accepted by {model} (accepted: {', '.join(accepted)})"


def _describe(err: Any, model: str | None, accepted: Sequence[str]) -> list[tuple[str, str]]:
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx", {})
    loc = err["loc"]
    field = str(loc[0]) if loc else "request"
    suffix = f" for {model}" if model else ""
    if kind == _RULES:
        return [(r.field, _with_got(f"{r.rule}{suffix}", r.got)) for r in ctx["rules"]]
    if kind == "extra_forbidden":
        return [(field, _not_accepted(field, model or "this model", accepted))]
    if kind == "missing":
        return [(field, f"is required{suffix}")]
    if kind in _TEMPLATES:
        base = _TEMPLATES[kind].format(**ctx)
    else:  # our own rules (their text is final) and pydantic types we do not reword
        base = str(err["msg"])
        base = base[:1].lower() + base[1:]
    value = err.get("input")
    got = f"{len(value)} characters" if kind == "string_too_long" else _show(field, value)
    return [(field, _with_got(f"{base}{suffix}", got))]


def _with_got(rule: str, got: str | None) -> str:
    return rule if got is None else f"{rule} (got {got})"


def convert_errors(
    exc: pydantic.ValidationError, *, model: str | None, accepted: Sequence[str]
) -> ValidationError:
    """Turn a pydantic error into ours, with every ``(field, rule)`` pair it holds."""
    pairs: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        pairs.extend(_describe(err, model, accepted))
    field, rule = pairs[0]
    return ValidationError(field, rule, model=model, errors=pairs)
