"""A batch item's ``images`` entries: the library's reference-image checks, plus a fence.

Prompt files come from other people, so an entry gets exactly the checks
``flux.generate(images=...)`` applies (``_references``: PNG/JPEG/WebP sniffed from the
first bytes, at most 20 MiB and 20 MP; the count per model is checked with the request)
and one more: a file entry is resolved against the prompt file's folder, symlinks
followed, and must stay inside that folder unless the user opted in
(``--allow-any-image-path``, ``run_batch(allow_any_image_path=True)``).

An entry is, in this order: an ``http(s)://`` URL (passed on; the server fetches it), a
``data:`` URL (checked), a path (any entry of at most 4096 characters that names a file,
or looks like a path), else base64 text (checked as a data: URL's payload). A file's
size comes from ``stat`` before a byte is read, so a huge file is refused without being
read, and at submit only 20 MiB + 1 bytes are ever read.

All functions here block: call them in a worker thread.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from .._errors import ValidationError
from .._request._references import check_data_url, encode_reference_file, inspect_reference_file

__all__ = ["check_image_entries", "image_entry_value"]

_REMOTE = ("http://", "https://")
_PATH_MAX = 4096
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def check_image_entries(
    images: Sequence[str], *, base_dir: Path, allow_any_path: bool
) -> list[tuple[str, str]]:
    """Return a ``(field, rule)`` for every entry of ``images`` that breaks a rule."""
    problems = []
    for index, image in enumerate(images):
        try:
            _check(index, image, base_dir, allow_any_path)
        except ValidationError as exc:
            problems.append((exc.field, exc.rule))
    return problems


def image_entry_value(index: int, image: str, *, base_dir: Path, allow_any_path: bool) -> str:
    """Return what entry ``index`` sends: a URL or data: URL as is, a file as raw base64.

    Raises ValidationError (field ``images[index]``) when the entry breaks a rule now
    (the file may have changed since the scan).
    """
    field = f"images[{index}]"
    path = _local_file(field, image, base_dir, allow_any_path)
    if path is None:
        return image
    return encode_reference_file(field, path, "bfl")


def _check(index: int, image: str, base_dir: Path, allow_any_path: bool) -> None:
    field = f"images[{index}]"
    if not image.strip():
        raise ValidationError(field, "must not be empty")
    lowered = image[:16].lower()
    if lowered.startswith(_REMOTE):
        return
    if lowered.startswith("data:"):
        check_data_url(field, image)
        return
    path = _local_file(field, image, base_dir, allow_any_path)
    if path is not None:
        inspect_reference_file(field, path)
        return
    if _looks_like_path(image):
        raise ValidationError(field, f"no such image file: {image[:80]}")
    try:
        base64.b64decode(image[:64], validate=True)
    except ValueError:
        raise ValidationError(field, "is neither a URL, a file nor base64 image data") from None
    check_data_url(field, f"data:image/*;base64,{image}")


def _local_file(field: str, image: str, base_dir: Path, allow_any_path: bool) -> Path | None:
    """Return the file ``image`` names (None: not a file); refuse one outside ``base_dir``."""
    if image[:16].lower().startswith((*_REMOTE, "data:")) or len(image) > _PATH_MAX:
        return None
    candidate = base_dir / Path(image).expanduser()
    try:
        if not candidate.exists():
            return None
        resolved = candidate.resolve(strict=True)
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte, a loop
        return None
    root = base_dir.resolve()
    if not allow_any_path and not resolved.is_relative_to(root):
        rule = (
            f"{image[:80]} resolves outside the prompt file's folder {root} "
            "(--allow-any-image-path allows it)"
        )
        raise ValidationError(field, rule)
    return resolved


def _looks_like_path(image: str) -> bool:
    if len(image) > _PATH_MAX:
        return False
    return "/" in image or "\\" in image or image.lower().endswith(_IMAGE_SUFFIXES)
