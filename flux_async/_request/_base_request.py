"""``BaseRequest``: what every request model shares (strict fields, rules, body, repr).

The families, one class per request schema of ``bfl-openapi.json``, live in ``_requests``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Self

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ._request_rules import (
    OutputFormat,
    Rule,
    Seed,
    WebhookUrl,
    convert_errors,
    image_order_rules,
    raise_rules,
    rule_error,
)

__all__ = ["BaseRequest"]

_BOOL_FIELDS = frozenset({"prompt_upsampling", "raw"})
_REPR_MAX = 80


class BaseRequest(BaseModel):
    """One image request; ``model`` names the endpoint and is not part of the body.

    Construct a family class directly or call :func:`build_request`; either raises
    :class:`~flux_async.ValidationError` (never pydantic's) when a rule is broken.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_name: ClassVar[str] = ""
    """The request schema's name in ``bfl-openapi.json``."""
    reference_fields: ClassVar[tuple[str, ...]] = ()
    """Fields holding reference images, in the order they must be filled."""
    image_fields: ClassVar[tuple[str, ...]] = ()
    """Every field that carries an image (URL, base64 or data: URL), masks included."""

    model: str
    seed: Seed | None = None
    output_format: OutputFormat | None = None
    webhook_url: WebhookUrl | None = None
    webhook_secret: str | None = Field(default=None, repr=False)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            model = data.get("model")
            raise convert_errors(
                exc,
                model=model if isinstance(model, str) else None,
                accepted=type(self).accepted_fields(),
            ) from exc

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # Set fields only, and base64 images cut short: a repr ends up in logs.
        for name, value in super().__repr_args__():
            if isinstance(value, str) and len(value) > _REPR_MAX:
                yield name, f"{value[: _REPR_MAX - 20]}...({len(value)} chars)"
            elif value is not None:
                yield name, value

    @classmethod
    def accepted_fields(cls) -> tuple[str, ...]:
        """Return the body fields this request type accepts, sorted by name."""
        return tuple(sorted(name for name in cls.model_fields if name != "model"))

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads True as 1; for a size or a seed that is always a slip.
        if isinstance(value, bool) and info.field_name not in _BOOL_FIELDS:
            raise rule_error("must not be true/false")
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        raise_rules(self._rules())
        return self

    def _rules(self) -> list[Rule]:
        """Return the cross-field rules this request breaks (subclasses add theirs)."""
        return image_order_rules((name, getattr(self, name)) for name in self.reference_fields)

    @property
    def prompt_text(self) -> str:
        """Return the prompt, or ``""`` when none was given (for logs and file names)."""
        prompt = getattr(self, "prompt", None)
        return prompt if isinstance(prompt, str) else ""

    def to_body(self) -> dict[str, Any]:
        """Return the JSON body: set fields only, without ``model``."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"model"})

    def reference_images(self) -> list[str]:
        """Return the reference images set (``input_image*``, ``image_prompt``, ``image``)."""
        values = (getattr(self, name) for name in self.reference_fields)
        return [value for value in values if value is not None]

    def images(self) -> dict[str, str]:
        """Return every image-carrying field that is set, masks included, by field name."""
        found = {name: getattr(self, name) for name in self.image_fields}
        return {name: value for name, value in found.items() if value is not None}

    def replace(self, **changes: Any) -> Self:
        """Return a validated copy with ``changes`` applied; ``None`` unsets a field."""
        data = {name: value for name, value in self if value is not None}
        data.update(changes)
        return type(self)(**{name: value for name, value in data.items() if value is not None})
