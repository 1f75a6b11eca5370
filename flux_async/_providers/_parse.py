"""Every reply parsed at the boundary: bytes in, a typed model or a MalformedReplyError out.

A provider hands the scheduler and the downloader only models whose fields have the
types the code relies on: a task id that is a bounded string, a status that is a
string, a Ready result whose ``sample`` is a usable URL and whose ``seed`` is an integer.
Anything else raises what :func:`._http.fail_malformed` raises, naming the field and a
short, printable form of the raw value. Optional fields nothing depends on (``cost``,
``progress``, ...) are dropped when they have the wrong type, with a debug log: a
server's new or odd bookkeeping never fails a paid task.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pydantic

from .._core._text import clean_text, shown_value
from .._errors import FluxError
from .._request._data_urls import is_data_url
from .._request._models import PollReply, SampleResult, Status, SubmitReply
from ._http import Phase, fail_malformed

__all__ = [
    "MAX_ID_CHARS",
    "MAX_STATUS_CHARS",
    "checked_task_id",
    "is_usable_url",
    "load_json",
    "parse_poll",
    "parse_submit",
]

logger = logging.getLogger("flux_async")

MAX_ID_CHARS = 256
"""Longest task id accepted from a server (BFL's are 36-character UUIDs)."""
MAX_STATUS_CHARS = 100
_MAX_URL_CHARS = 16_384
_MAX_PROMPT = 10_000
# A seed is stored as SQLite's signed 64-bit integer.
_INT64 = (-(2**63), 2**63 - 1)

_M = TypeVar("_M", bound=pydantic.BaseModel)


def load_json(content: bytes, *, phase: Phase, task_id: str | None = None) -> Any:
    """Return the JSON value of ``content``; raise the malformed-reply error if it is none."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError) as exc:
        fail_malformed(
            "not JSON", phase=phase, task_id=task_id, raw=shown_value(content[:60]), cause=exc
        )


def is_usable_url(value: str, *, allow_data: bool = False) -> bool:
    """Return whether ``value`` is an http(s) URL httpx can request (or a data: URL if allowed)."""
    if is_data_url(value):
        # Its size was bounded with the reply that carried it (max_reply_bytes).
        return allow_data
    if not value or len(value) > _MAX_URL_CHARS or not value.isprintable() or " " in value:
        return False
    return _parses_as_http_url(value)


@functools.lru_cache(maxsize=4096)
def _parses_as_http_url(value: str) -> bool:
    # Cached: a task's polling URL is checked again on every poll of it.
    try:
        parts = urlsplit(value)
        url = httpx.URL(value)
    except (ValueError, httpx.InvalidURL):
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and bool(url.host)


def checked_task_id(value: object, *, phase: Phase, field: str = "id") -> str:
    """Return ``value`` if it is a usable task id: a non-empty, printable, bounded string."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > MAX_ID_CHARS
        or not value.isprintable()
    ):
        fail_malformed(
            "not a task id (a printable string of 1-256 characters)",
            phase=phase,
            field=field,
            raw=shown_value(value),
        )
    return value


def _lenient(model: type[_M], data: dict[str, Any], *, strict: frozenset[str]) -> _M:
    """Validate ``data``, dropping optional top-level fields of the wrong type.

    A wrong field named in ``strict`` is not dropped: the pydantic error propagates.
    """
    for _ in range(len(data) + 1):
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
            if not bad or bad & strict:
                raise
            logger.debug("dropping reply field(s) of the wrong type: %s", ", ".join(sorted(bad)))
            data = {name: value for name, value in data.items() if name not in bad}
    return model.model_validate(data)  # pragma: no cover - each round drops a field


def _offending(exc: pydantic.ValidationError, data: Any) -> tuple[str, str]:
    """Return the dotted field name and the shown raw value of the first error."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    return ".".join(loc) or "body", shown_value(error.get("input", data))


def parse_submit(content: bytes) -> SubmitReply:
    """Parse a 2xx submit reply; a missing or unusable id is an ambiguous submit."""
    data = load_json(content, phase="submit")
    if not isinstance(data, dict):
        fail_malformed("not a JSON object", phase="submit", raw=shown_value(data))
    task_id = checked_task_id(data.get("id"), phase="submit")
    polling_url = data.get("polling_url")
    if polling_url is not None and not (
        isinstance(polling_url, str) and is_usable_url(polling_url)
    ):
        # The id is known and paid for: poll the documented fallback rather than fail it.
        logger.warning(
            "task %s: ignoring unusable polling_url %s", task_id, shown_value(polling_url)
        )
        data = {**data, "polling_url": None}
    try:
        return _lenient(SubmitReply, data, strict=frozenset({"id"}))
    except pydantic.ValidationError as exc:  # pragma: no cover - the id was checked above
        field, raw = _offending(exc, data)
        fail_malformed("wrong type", phase="submit", field=field, raw=raw, cause=exc)


def parse_poll(content: bytes, *, task_id: str | None = None) -> PollReply:
    """Parse a 2xx poll reply (BFL's ``get_result`` shape) into a :class:`PollReply`.

    ``status`` must be a bounded string; a Ready reply's ``result`` must be an object
    whose ``sample`` is a usable URL and whose ``seed``, ``prompt`` and times have their
    documented types. Other fields of the wrong type are dropped.
    """
    data = load_json(content, phase="poll", task_id=task_id)
    return poll_reply(data, task_id=task_id)


def poll_reply(data: Any, *, task_id: str | None = None, phase: Phase = "poll") -> PollReply:
    """Validate an already decoded poll reply ``data``; see :func:`parse_poll`."""
    if not isinstance(data, dict):
        fail_malformed("not a JSON object", phase=phase, task_id=task_id, raw=shown_value(data))
    status = data.get("status")
    if not isinstance(status, str) or not status or len(status) > MAX_STATUS_CHARS:
        fail_malformed(
            "no status string",
            phase=phase,
            field="status",
            task_id=task_id,
            raw=shown_value(status),
        )
    if status == Status.READY:
        data = {**data, "result": ready_result(data.get("result"), task_id=task_id, phase=phase)}
    try:
        return _lenient(PollReply, data, strict=frozenset({"status", "result"}))
    except pydantic.ValidationError as exc:  # pragma: no cover - status and result checked
        field, raw = _offending(exc, data)
        fail_malformed("wrong type", phase=phase, field=field, task_id=task_id, raw=raw, cause=exc)


def ready_result(value: Any, *, task_id: str | None, phase: Phase = "poll") -> SampleResult:
    """Return a Ready reply's ``result`` as a checked :class:`SampleResult`."""
    if not isinstance(value, dict):
        fail_malformed(
            "Ready without a result object",
            phase=phase,
            field="result",
            task_id=task_id,
            raw=shown_value(value),
        )
    try:
        result = SampleResult.model_validate(value, strict=False)
    except pydantic.ValidationError as exc:
        field, raw = _offending(exc, value)
        fail_malformed(
            "wrong type", phase=phase, field=f"result.{field}", task_id=task_id, raw=raw, cause=exc
        )
    if result.seed is not None and not _INT64[0] <= result.seed <= _INT64[1]:
        fail_malformed(
            "seed out of range",
            phase=phase,
            field="result.seed",
            task_id=task_id,
            raw=shown_value(result.seed),
        )
    if result.prompt is not None:
        # The revised prompt is server text bound for logs, results.jsonl and HTML pages.
        result = result.model_copy(update={"prompt": clean_text(result.prompt, _MAX_PROMPT)})
    sample = result.sample
    if sample is not None and not is_usable_url(sample, allow_data=True):
        fail_malformed(
            "not a usable image URL",
            phase=phase,
            field="result.sample",
            task_id=task_id,
            raw=shown_value(sample[:120]),
        )
    return result


def named(error: FluxError, task_id: str) -> FluxError:
    """Return ``error`` with ``task_id`` filled in where it had none."""
    if error.task_id is None:
        error.task_id = task_id
    return error
