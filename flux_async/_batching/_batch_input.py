"""A batch's input, read twice as a stream: once to check it into the ledger, once to run it.

The first pass (:func:`scan_input`) reads the prompt file in chunks off the event loop,
fingerprints every item, validates the new and changed ones against their model's rules
and fills the ledger, before anything is paid for. The second (:class:`PendingFeed`)
walks the ledger's pending items in index order beside a fresh read of the file and
hands each back with its request. Neither ever holds more than a chunk of items.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio

from .._request._build import build_request
from .._request._requests import BaseRequest
from ._batch_images import check_image_entries, image_entry_value
from ._filenames import safe_name
from ._item_fields import input_fingerprint, merged_fields, reference_image_fields, validate_item
from ._ledger import Ledger
from ._prompts import InputProblem, PromptItem, iter_prompt_file

__all__ = [
    "MAX_PROBLEMS_SHOWN",
    "InputScan",
    "Scanned",
    "item_request",
    "iter_scanned",
    "scan_input",
]

MAX_PROBLEMS_SHOWN = 50
_CHUNK = 2000


@dataclass(slots=True)
class Scanned:
    """One input item as the batch sees it: the item (None when unreadable) and its problems.

    ``index`` is None only for a problem of the whole file (a CSV header). ``name`` is
    the item's ``name`` made into a safe file-name stem (None when it has none).
    """

    index: int | None
    item: PromptItem | None
    problems: list[InputProblem]
    fingerprint: str = ""
    model: str = ""
    name: str | None = None

    @property
    def reason(self) -> str:
        """Return the problems as one line (``field: rule; field: rule``)."""
        return "; ".join(f"{p.field}: {p.rule}" for p in self.problems)


@dataclass
class InputScan:
    """What the first pass found: item counts, what the ledger made of them, the problems."""

    total: int = 0
    added: int = 0
    existing: int = 0
    changed: int = 0
    replaced: int = 0
    changed_indices: list[int] = field(default_factory=list)
    invalid_items: int = 0
    problem_count: int = 0
    problems: list[InputProblem] = field(default_factory=list)
    file_problems: list[InputProblem] = field(default_factory=list)

    def note(self, problem: InputProblem) -> None:
        """Count ``problem`` and keep it when fewer than MAX_PROBLEMS_SHOWN are kept."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS_SHOWN:
            self.problems.append(problem)


def iter_scanned(
    path: Path, *, model: str, defaults: Mapping[str, Any], fingerprints: bool = True
) -> Generator[Scanned, None, None]:
    """Yield each item of ``path`` once, its problems grouped, with its fingerprint (blocking).

    ``fingerprints=False`` leaves the fingerprints of readable items empty (see
    :func:`fingerprint`): a reader looking for a few items need not pay for every one.
    """
    current: Scanned | None = None
    for entry in iter_prompt_file(path):
        if isinstance(entry, InputProblem):
            if current is not None and entry.index is not None and current.index == entry.index:
                current.problems.append(entry)
                continue
            if current is not None:
                yield _finish_unreadable(current)
            current = Scanned(entry.index, None, [entry], model=model)
            continue
        if current is not None:
            yield _finish_unreadable(current)
        current = None
        yield _scanned_item(entry, model, defaults, fingerprints=fingerprints)
    if current is not None:
        yield _finish_unreadable(current)


def _scanned_item(
    item: PromptItem, model: str, defaults: Mapping[str, Any], *, fingerprints: bool = True
) -> Scanned:
    name = (safe_name(item.name) or None) if item.name is not None else None
    return Scanned(
        item.index,
        item,
        [],
        fingerprint=input_fingerprint(item, defaults, model) if fingerprints else "",
        model=item.model or model,
        name=name,
    )


def _finish_unreadable(scanned: Scanned) -> Scanned:
    # No item to fingerprint: the problems stand in, so fixing the line reads as a change.
    text = "\n".join(str(p) for p in scanned.problems)
    scanned.fingerprint = "unreadable:" + hashlib.sha256(text.encode()).hexdigest()
    return scanned


def _take(source: Iterator[Scanned], n: int) -> list[Scanned]:
    return list(itertools.islice(source, n))


def _validate(
    batch: Sequence[Scanned],
    model: str,
    defaults: Mapping[str, Any],
    path: Path,
    allow_any_image_path: bool,
) -> None:
    for scanned in batch:
        item = scanned.item
        if item is None:
            continue
        scanned.problems.extend(
            validate_item(item, defaults=defaults, default_model=model, path=path)
        )
        found = check_image_entries(
            item.images, base_dir=path.parent, allow_any_path=allow_any_image_path
        )
        for field_name, rule in found:
            scanned.problems.append(InputProblem(path, item.line, field_name, rule, item.index))


async def scan_input(
    ledger: Ledger,
    path: Path,
    *,
    model: str,
    defaults: Mapping[str, Any],
    skip_invalid: bool,
    replace_changed: Literal["none", "unstarted", "all"],
    allow_any_image_path: bool = False,
) -> InputScan:
    """Check every item of ``path`` and record it in ``ledger``; return what was found.

    Items the ledger already holds with the same fingerprint were checked by an earlier
    run and are not validated again. Invalid items are added as failed (not billed) only
    with ``skip_invalid``. ``images`` entries get the library's reference-image checks
    and must stay inside the prompt file's folder unless ``allow_any_image_path`` (see
    ``_batch_images``). Raises ValueError for an unsupported file type, OSError when
    the file cannot be read.
    """
    scan = InputScan()
    source = iter_scanned(path, model=model, defaults=defaults)
    try:
        while batch := await anyio.to_thread.run_sync(_take, source, _CHUNK):
            indices = [s.index for s in batch if s.index is not None]
            known = await ledger.fingerprints(indices)
            unchecked = [
                s for s in batch if s.index is not None and known.get(s.index) != s.fingerprint
            ]
            if unchecked:
                await anyio.to_thread.run_sync(
                    _validate, unchecked, model, defaults, path, allow_any_image_path
                )
            await _record(ledger, scan, batch, known, skip_invalid, replace_changed)
    finally:
        source.close()
    return scan


async def _record(
    ledger: Ledger,
    scan: InputScan,
    batch: list[Scanned],
    known: Mapping[int, str],
    skip_invalid: bool,
    replace_changed: Literal["none", "unstarted", "all"],
) -> None:
    rows = []
    invalid = []
    for scanned in batch:
        if scanned.index is None:
            scan.file_problems.extend(scanned.problems)
            continue
        scan.total = max(scan.total, scanned.index + 1)
        if known.get(scanned.index) == scanned.fingerprint:
            scan.existing += 1  # recorded by an earlier run (if invalid, as failed already)
            continue
        for problem in scanned.problems:
            scan.note(problem)
        if scanned.problems:
            scan.invalid_items += 1
            invalid.append((scanned.index, scanned.reason))
            if not skip_invalid:
                continue
        prompt = scanned.item.prompt if scanned.item is not None else None
        rows.append((scanned.index, scanned.fingerprint, prompt, scanned.model, scanned.name))
    # Rows the ledger already held unchanged were skipped: a resumed scan stays read-only.
    if not rows:
        return
    report = await ledger.add_items(rows, chunk=len(rows) + 1, replace_changed=replace_changed)
    scan.added += report.added
    scan.existing += report.existing
    scan.changed += report.changed
    scan.replaced += report.replaced
    room = 20 - len(scan.changed_indices)
    scan.changed_indices.extend(report.changed_indices[: max(room, 0)])
    if skip_invalid and invalid:
        await ledger.mark_invalid(invalid)


# --- the second pass --------------------------------------------------------------------


class ScannedReader:
    """Read :class:`Scanned` items of a file in index order, a chunk at a time off the loop."""

    def __init__(self, path: Path, *, model: str, defaults: Mapping[str, Any]) -> None:
        self._model = model
        self._defaults = defaults
        self._source = iter_scanned(path, model=model, defaults=defaults, fingerprints=False)
        self._batch: list[Scanned] = []
        self._pos = 0
        self._done = False

    async def seek(self, index: int) -> Scanned | None:
        """Return the item at ``index`` (None when the file has none); indices must grow."""
        while True:
            while self._pos < len(self._batch):
                scanned = self._batch[self._pos]
                if scanned.index is not None and scanned.index >= index:
                    if scanned.index != index:
                        return None
                    if scanned.item is not None and not scanned.fingerprint:
                        item = scanned.item
                        scanned.fingerprint = input_fingerprint(item, self._defaults, self._model)
                    return scanned
                self._pos += 1
            if self._done:
                return None
            self._batch = await anyio.to_thread.run_sync(_take, self._source, _CHUNK)
            self._pos = 0
            self._done = not self._batch

    def close(self) -> None:
        """Stop reading the file."""
        self._source.close()


async def item_request(
    item: PromptItem,
    *,
    model: str,
    defaults: Mapping[str, Any],
    base_dir: Path,
    allow_any_image_path: bool = False,
) -> BaseRequest:
    """Build ``item``'s request: defaults under its fields, reference images read from disk.

    A reference image that names a file (relative to ``base_dir``, the prompt file's
    folder, and inside it unless ``allow_any_image_path``) is checked again and sent as
    base64; URLs, ``data:`` URLs and base64 text go as they are. Raises ValidationError
    or ConfigurationError as ``build_request`` does.
    """
    model = item.model or model
    fields = merged_fields(item, defaults)
    if item.images:
        images = [
            await anyio.to_thread.run_sync(
                partial(
                    image_entry_value,
                    index,
                    image,
                    base_dir=base_dir,
                    allow_any_path=allow_any_image_path,
                )
            )
            for index, image in enumerate(item.images)
        ]
        fields.update(reference_image_fields(model, images))
    return build_request(model, item.prompt, **fields)
