"""Prompt files in (txt, jsonl, csv), read as a stream, and the safe names of the files out.

``iter_prompt_file`` yields one :class:`PromptItem` per input item, or an
:class:`InputProblem` for an item that cannot be read, without ever holding the whole
file in memory. ``output_stem`` (from ``_filenames``) names an item's image so that
nothing a prompt says can place it outside the output folder. What an item asks for
(its merged fields, its rules, its fingerprint) is worked out in ``_item_fields``.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ._filenames import output_stem, prompt_slug, safe_name

__all__ = [
    "ITEM_KEYS",
    "SUPPORTED_SUFFIXES",
    "InputProblem",
    "PromptItem",
    "aiter_prompt_file",
    "iter_prompt_file",
    "output_stem",
    "prompt_slug",
    "safe_name",
]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".csv")
#: The keys of an item that are not request fields (``_item_fields`` keeps them out too).
ITEM_KEYS = frozenset({"prompt", "name", "model", "images"})

# Only these CSV columns are converted from text: every other value stays a string, so a
# prompt-like column ("aspect_ratio" = "16:9", a seed-looking name) is never mangled.
_INT_FIELDS = frozenset(
    {"width", "height", "seed", "steps", "safety_tolerance", "top", "bottom", "left", "right"}
)
_FLOAT_FIELDS = frozenset({"guidance", "image_prompt_strength"})
_BOOL_FIELDS = frozenset({"prompt_upsampling", "raw"})
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
    fields = {k: v for k, v in obj.items() if k not in ITEM_KEYS}
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
