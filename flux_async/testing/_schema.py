"""BFL's OpenAPI document, shipped with the simulator, and a validator for what it uses.

``bfl-openapi.json`` (package data of :mod:`flux_async.testing`) is BFL's own document,
unchanged. :func:`request_schema` finds the request schema of ``POST /v1/{model}``;
:func:`validate` checks a body against it and returns FastAPI's 422 ``detail`` items
(``{"loc": ["body", field, ...], "msg", "type"}``), as the real server answers.

Why a validator of our own rather than ``jsonschema``: the simulator ships in the
package (``flux-async --simulate``), and the request schemas use only a small subset of
JSON Schema: ``type``, ``properties``, ``required``, ``additionalProperties``, ``anyOf``,
``$ref`` (local), ``enum``, ``minimum``/``maximum``, ``multipleOf``,
``minLength``/``maxLength`` and ``items``; ``format`` is an annotation. Any other
keyword raises ``NotImplementedError`` when met, so the subset cannot silently grow.
``tests/test_simulator_schema.py`` checks this validator against ``jsonschema`` on every
schema of the document.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["openapi_document", "request_schema", "validate"]

# Keywords that never constrain a value.
_ANNOTATIONS = frozenset({"title", "description", "default", "example", "examples", "format"})
_HANDLED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "anyOf",
        "$ref",
        "enum",
        "minimum",
        "maximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "items",
    }
)
# JSON Schema type -> (pydantic's wording, pydantic's error type), as FastAPI answers.
_TYPES = {
    "string": ("a valid string", "string_type"),
    "integer": ("a valid integer", "int_type"),
    "number": ("a valid number", "float_type"),
    "boolean": ("a valid boolean", "bool_type"),
    "object": ("a valid dictionary", "dict_type"),
    "array": ("a valid list", "list_type"),
    "null": ("None", "none_required"),
}
_TYPE_ERRORS = frozenset(error for _, error in _TYPES.values())


@cache
def openapi_document() -> dict[str, Any]:
    """Return BFL's OpenAPI document as shipped in ``flux_async/testing/bfl-openapi.json``."""
    text = resources.files(__package__).joinpath("bfl-openapi.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def request_schema(model: str) -> dict[str, Any] | None:
    """Return the JSON schema of ``POST /v1/{model}``'s body, or None if there is no route."""
    post = openapi_document()["paths"].get(f"/v1/{model}", {}).get("post")
    if post is None:
        return None
    schema: dict[str, Any] = post["requestBody"]["content"]["application/json"]["schema"]
    return _resolve(schema)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise NotImplementedError(f"only local $ref is supported, got {ref!r}")
        target: Any = openapi_document()
        for part in ref[2:].split("/"):
            target = target[part]
        schema = target
    return schema


def validate(schema: dict[str, Any], value: Any, loc: tuple[Any, ...] = ("body",)) -> list[Any]:
    """Return the problems of ``value`` against ``schema`` (empty when it is valid)."""
    schema = _resolve(schema)
    unknown = set(schema) - _HANDLED - _ANNOTATIONS
    if unknown:
        raise NotImplementedError(f"JSON Schema keyword(s) not supported: {sorted(unknown)}")
    if "anyOf" in schema:
        return _any_of(schema["anyOf"], value, loc)
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        wording, error = _TYPES[kind]
        return [_problem(loc, f"Input should be {wording}", error)]
    if "enum" in schema and value not in schema["enum"]:
        allowed = " or ".join(repr(v) for v in schema["enum"])
        return [_problem(loc, f"Input should be {allowed}", "enum")]
    if isinstance(value, dict):
        return _object(schema, value, loc)
    if isinstance(value, list) and "items" in schema:
        found: list[Any] = []
        for n, item in enumerate(value):
            found += validate(schema["items"], item, (*loc, n))
        return found
    if isinstance(value, str):
        return _string(schema, value, loc)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _number(schema, value, loc)
    return []


def _any_of(options: list[dict[str, Any]], value: Any, loc: tuple[Any, ...]) -> list[Any]:
    best: list[Any] | None = None
    for option in options:
        found = validate(option, value, loc)
        if not found:
            return []
        # Report the branch whose type matched (a range error, not "should be null").
        if best is None or not any(p["type"] in _TYPE_ERRORS for p in found):
            best = found
    return best or []


def _object(schema: dict[str, Any], value: dict[str, Any], loc: tuple[Any, ...]) -> list[Any]:
    found: list[Any] = []
    properties: dict[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            found.append(_problem((*loc, name), "Field required", "missing"))
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            found += validate(properties[name], item, (*loc, name))
        elif extra is False:
            found.append(_problem((*loc, name), "Extra inputs are not permitted", "extra"))
        elif isinstance(extra, dict):
            found += validate(extra, item, (*loc, name))
    return found


def _string(schema: dict[str, Any], value: str, loc: tuple[Any, ...]) -> list[Any]:
    if "minLength" in schema and len(value) < schema["minLength"]:
        n = schema["minLength"]
        return [_problem(loc, f"String should have at least {n} character(s)", "string_too_short")]
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        n = schema["maxLength"]
        return [_problem(loc, f"String should have at most {n} characters", "string_too_long")]
    return []


def _number(schema: dict[str, Any], value: float, loc: tuple[Any, ...]) -> list[Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and value < low:
        return [_problem(loc, f"Input should be >= {_num(low)}", "greater_than_equal")]
    if high is not None and value > high:
        return [_problem(loc, f"Input should be <= {_num(high)}", "less_than_equal")]
    step = schema.get("multipleOf")
    if step is not None and not math.isclose(value / step, round(value / step)):
        return [_problem(loc, f"Input should be a multiple of {_num(step)}", "multiple_of")]
    return []


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    types: dict[str, Any] = {
        "string": str,
        "boolean": bool,
        "object": dict,
        "array": list,
        "null": type(None),
    }
    return isinstance(value, types[kind])


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _problem(loc: tuple[Any, ...], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}
