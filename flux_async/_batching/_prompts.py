"""Prompt files in (txt, jsonl, csv), read as a stream, and the safe names of the files out.

``iter_prompt_file`` yields one :class:`PromptItem` per input item, or an
:class:`InputProblem` for an item that cannot be read, without ever holding the whole
file in memory. ``validate_item`` checks an item against its model's rules before
anything is paid for; ``input_fingerprint`` lets a resumed run notice that an item or
the defaults changed; ``output_stem`` (from ``_filenames``) names an item's image so
that nothing a prompt says can place it outside the output folder.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import importlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .._errors import ConfigurationError, ValidationError
from ._filenames import output_stem, prompt_slug, safe_name

__all__ = [
    "SUPPORTED_SUFFIXES",
    "InputProblem",
    "PromptItem",
    "aiter_prompt_file",
    "input_fingerprint",
    "iter_prompt_file",
    "merged_fields",
    "output_stem",
    "prompt_slug",
    "reference_image_fields",
    "safe_name",
    "validate_item",
]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".csv")

# Only these CSV columns are converted from text: every other value stays a string, so a
# prompt-like column ("aspect_ratio" = "16:9", a seed-looking name) is never mangled.
_INT_FIELDS = frozenset(
    {"width", "height", "seed", "steps", "safety_tolerance", "top", "bottom", "left", "right"}
)
_FLOAT_FIELDS = frozenset({"guidance", "image_prompt_strength"})
_BOOL_FIELDS = frozenset({"prompt_upsampling", "raw"})
_ITEM_KEYS = frozenset({"prompt", "name", "model", "images"})
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_INT_TEXT = re.compile(r"[+-]?\d+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One input item: a prompt, its request fields, and where it came from.

    ``index`` is the 0-based position among items (skipped blank and comment lines do not
    count, unreadable items do); ``line`` the 1-based line the item starts on. ``fields``
    holds the request fields of the item only, never ``prompt``/``name``/``model``/``images``.
    """

    index: int
    line: int
    prompt: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    model: str | None = None
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class InputProblem:
    """Why one input item cannot be used: the file, line, field and broken rule.

    ``index`` is the item's position when the problem belongs to an item (so a run that
    goes on past bad items can record it as failed), None for a problem of the whole file
    such as a CSV header without a ``prompt`` column. One item may have several problems.
    """

    path: Path
    line: int
    field: str
    rule: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.rule}"


def iter_prompt_file(path: Path) -> Iterator[PromptItem | InputProblem]:
    """Yield the items of a ``.txt``, ``.jsonl`` or ``.csv`` prompt file, in file order.

    The file is read line by line as it is iterated (never all at once) as UTF-8, with
    or without a BOM. This is blocking file I/O: from async code use
    :func:`aiter_prompt_file`. Raises ValueError at once for an unsupported suffix;
    OSError (file missing, unreadable) surfaces on the first iteration.
    """
    readers = {".txt": _txt_items, ".jsonl": _jsonl_items, ".csv": _csv_items}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise ValueError(f"{path}: unsupported prompt file type; use one of {supported}")
    return reader(path)


async def aiter_prompt_file(
    path: Path, *, chunk: int = 256
) -> AsyncIterator[PromptItem | InputProblem]:
    """Yield :func:`iter_prompt_file`'s items, reading ``chunk`` items at a time off the loop."""
    entries = iter_prompt_file(path)
    try:
        while True:
            batch = await anyio.to_thread.run_sync(_take, entries, chunk)
            if not batch:
                return
            for entry in batch:
                yield entry
    finally:
        close = getattr(entries, "close", None)
        if close is not None:
            close()


def _take(entries: Iterator[PromptItem | InputProblem], n: int) -> list[PromptItem | InputProblem]:
    return list(itertools.islice(entries, n))


def _lines(path: Path) -> Generator[tuple[int, str, bool], None, None]:
    """Yield ``(line number, text with its line ending, decoded cleanly)`` for each line."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            data = (
                raw[len(codecs.BOM_UTF8) :]
                if number == 1 and raw.startswith(codecs.BOM_UTF8)
                else raw
            )
            try:
                yield number, data.decode("utf-8"), True
            except UnicodeDecodeError:
                yield number, data.decode("utf-8", errors="replace"), False


def _txt_items(path: Path) -> Generator[PromptItem | InputProblem, None, None]:
    index = 0
    for number, text, clean in _lines(path):
        prompt = text.strip()
        if not prompt or prompt.startswith("#"):
            continue
        if clean:
            yield PromptItem(index=index, line=number, prompt=prompt)
        else:
            yield InputProblem(path, number, "line", "not valid UTF-8", index)
        index += 1


def _jsonl_items(path: Path) -> Generator[PromptItem | InputProblem, None, None]:
    index = 0
    for number, text, clean in _lines(path):
        stripped = text.strip()
        if not stripped:
            continue
        if not clean:
            yield InputProblem(path, number, "line", "not valid UTF-8", index)
        else:
            try:
                obj = json.loads(stripped)
            except json.JSONDecodeError as exc:
                rule = f"not a JSON object: {exc.msg} at column {exc.colno}"
                yield InputProblem(path, number, "line", rule, index)
            else:
                if isinstance(obj, dict):
                    yield from _item_from_mapping(obj, path, number, index)
                else:
                    rule = f"not a JSON object: got {type(obj).__name__}"
                    yield InputProblem(path, number, "line", rule, index)
        index += 1


def _item_from_mapping(
    obj: Mapping[str, Any], path: Path, line: int, index: int
) -> list[PromptItem | InputProblem]:
    problems: list[PromptItem | InputProblem] = []
    texts: dict[str, str | None] = {}
    for key in ("prompt", "name", "model"):
        value = obj.get(key)
        if value is None or isinstance(value, str):
            texts[key] = value
        else:
            problems.append(InputProblem(path, line, key, "must be a string", index))
    images = obj.get("images")
    if images is None:
        images = []
    elif not (isinstance(images, list) and all(isinstance(i, str) for i in images)):
        problems.append(
            InputProblem(path, line, "images", "must be a list of paths or URLs", index)
        )
    if problems:
        return problems
    fields = {k: v for k, v in obj.items() if k not in _ITEM_KEYS}
    item = PromptItem(
        index=index,
        line=line,
        prompt=texts["prompt"],
        fields=fields,
        name=texts["name"],
        model=texts["model"],
        images=list(images),
    )
    return [item]


def _csv_items(path: Path) -> Generator[PromptItem | InputProblem, None, None]:
    undecodable: set[int] = set()

    def text_lines() -> Iterator[str]:
        for number, text, clean in _lines(path):
            if not clean:
                undecodable.add(number)
            yield text

    reader = csv.reader(text_lines())
    header: list[str] | None = None
    index = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if header is not None:
                yield InputProblem(path, start, "line", f"not valid CSV: {exc}", index)
                index += 1
            else:
                yield InputProblem(path, start, "header", f"not valid CSV: {exc}")
                return
            if reader.line_num < start:  # the reader made no progress: stop, do not spin
                return
            continue
        bad_text = any(n in undecodable for n in range(start, reader.line_num + 1))
        undecodable.clear()
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            problem = _header_problem(header)
            if bad_text:
                problem = "not valid UTF-8"
            if problem is not None:
                yield InputProblem(path, start, "header", problem)
                return
            continue
        if bad_text:
            yield InputProblem(path, start, "line", "not valid UTF-8", index)
        elif len(row) > len(header):
            rule = f"has {len(row)} cells but the header has {len(header)}"
            yield InputProblem(path, start, "line", rule, index)
        else:
            yield from _item_from_row(header, row, path, start, index)
        index += 1


def _header_problem(header: list[str]) -> str | None:
    if "prompt" not in header:
        return "needs a 'prompt' column"
    named = [h for h in header if h]
    duplicates = sorted({h for h in named if named.count(h) > 1})
    if duplicates:
        return f"repeats the column(s) {', '.join(duplicates)}"
    return None


def _item_from_row(
    header: list[str], row: list[str], path: Path, line: int, index: int
) -> list[PromptItem | InputProblem]:
    values: dict[str, Any] = {}
    problems: list[PromptItem | InputProblem] = []
    for column, cell in zip(header, row, strict=False):
        text = cell.strip()
        if not column or not text:
            continue  # an empty cell means "not given": the default applies
        try:
            values[column] = _convert_cell(column, text)
        except ValueError as exc:
            problems.append(InputProblem(path, line, column, str(exc), index))
    if problems:
        return problems
    images = values.pop("images", None)
    values["images"] = [p.strip() for p in images.split("|") if p.strip()] if images else None
    return _item_from_mapping(values, path, line, index)


def _convert_cell(column: str, text: str) -> Any:
    shown = text if len(text) <= 40 else text[:37] + "..."
    if column in _BOOL_FIELDS:
        lowered = text.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValueError(f"must be true or false, got {shown!r}")
    if column in _INT_FIELDS:
        if _INT_TEXT.fullmatch(text):
            return int(text)
        if _FLOAT_TEXT.fullmatch(text) and float(text).is_integer():
            return int(float(text))  # "1024.0", as spreadsheets like to export it
        raise ValueError(f"must be a whole number, got {shown!r}")
    if column in _FLOAT_FIELDS:
        if _FLOAT_TEXT.fullmatch(text):
            return float(text)
        raise ValueError(f"must be a number, got {shown!r}")
    return text


def merged_fields(item: PromptItem, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Return the defaults overridden by the item's fields, without None values.

    None means "not given" on both sides, so an item can cancel a default with ``null``.
    ``prompt``, ``name``, ``model`` and ``images`` are never fields, even in defaults.
    An item that names its own model gets only the defaults that model accepts (a
    ``--width`` meant for FLUX.2 does not break a Kontext item); an item of the default
    model gets them all, so a default its model refuses is reported, not dropped.
    """
    merged = {k: v for k, v in defaults.items() if k not in _ITEM_KEYS}
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
