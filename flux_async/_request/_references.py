"""Reference images for editing: from a URL, a local file, bytes or a ``data:`` URL.

A reference image goes into the model's reference fields in order (``input_image``,
``input_image_2`` ... for FLUX.2 and Kontext, ``image_prompt`` for FLUX1.1, ``image`` for
fill/expand; the catalog says how many). What is sent depends on the wire dialect:

- an ``http(s)://`` URL is passed through untouched (the server fetches it);
- a local file or ``bytes`` becomes raw base64 for BFL's dialect and a
  ``data:image/...;base64,`` URL for the OpenAI-style relays;
- a ``data:`` URL is kept for the relays and reduced to its base64 for BFL.

Everything that can be checked locally is checked before anything is sent: the count per
model, the type (PNG, JPEG or WebP, sniffed from the magic bytes, never trusted from a
name), the 20 MiB and 20 MP limits and whether a file can be read at all. A broken rule
raises :class:`~flux_async.ValidationError` naming the image by its position, e.g.
``images[2]``. Files are read off the event loop, and only when a request is submitted,
so a long batch holds no more images in memory than it has requests in progress.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from .._errors import ValidationError

__all__ = [
    "MAX_REFERENCE_BYTES",
    "MAX_REFERENCE_PIXELS",
    "Dialect",
    "ReferenceImage",
    "check_data_url",
    "check_references",
    "encode_reference_file",
    "image_dimensions",
    "inspect_reference_file",
    "reference_fields",
    "reference_placeholders",
    "resolve_references",
    "sniff_image_type",
]

MAX_REFERENCE_BYTES = 20 * 1024 * 1024
"""The largest reference image BFL and the relays take: 20 MiB, decoded."""

MAX_REFERENCE_PIXELS = 20_000_000
"""The most pixels a reference image may have (20 MP)."""

ReferenceImage = str | bytes | os.PathLike[str]
"""A URL, a ``data:`` URL, a local path (``str`` or ``Path``), or the image's bytes."""

Dialect = Literal["bfl", "openai"]

_TYPES = "PNG, JPEG or WebP"
# Enough of a file to find a JPEG's frame header behind typical EXIF/ICC segments.
_HEAD_BYTES = 256 * 1024
# Bytes above which base64 encoding moves off the event loop.
_INLINE_ENCODE_MAX = 256 * 1024


def sniff_image_type(head: bytes) -> str | None:
    """Return ``image/png``, ``image/jpeg`` or ``image/webp`` from the first bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_dimensions(head: bytes) -> tuple[int, int] | None:
    """Return ``(width, height)`` in pixels read from an image's header, or None if unsure."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_dimensions(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(head)
    return None


def _webp_dimensions(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        return width, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30:
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg_dimensions(head: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 9 <= len(head):
        if head[offset] != 0xFF:
            return None
        marker = head[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[offset + 5 : offset + 9])
            return int(width), int(height)
        (length,) = struct.unpack(">H", head[offset + 2 : offset + 4])
        offset += 2 + length
    return None


@dataclass(frozen=True, slots=True)
class _Source:
    """One reference image, classified without any I/O."""

    field: str  # how errors name it: images[i]
    kind: Literal["url", "data", "file", "bytes"]
    value: str | bytes | Path


def reference_fields(model: str) -> tuple[str, ...]:
    """Return the fields ``model`` takes reference images in, in the order they fill."""
    from ._catalog import get_model  # here: the catalog imports the request models

    return tuple(get_model(model).request_type.reference_fields)


def _classify(index: int, image: object) -> _Source:
    field = f"images[{index}]"
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        _check_bytes(field, data)
        return _Source(field, "bytes", data)
    if isinstance(image, os.PathLike):
        return _Source(field, "file", Path(image))
    if not isinstance(image, str):
        kind = type(image).__name__
        raise ValidationError(field, f"must be a URL, a data: URL, a path or bytes (got {kind})")
    if not image.strip():
        raise ValidationError(field, "must not be empty")
    lowered = image[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return _Source(field, "url", image)
    if lowered.startswith("data:"):
        _check_data_url(field, image)
        return _Source(field, "data", image)
    if "://" in image[:32]:
        scheme = image.split("://", 1)[0]
        raise ValidationError(field, f"{scheme}:// is not supported: pass an http(s) URL or a path")
    return _Source(field, "file", Path(image).expanduser())


def _classify_all(images: Sequence[ReferenceImage], model: str) -> list[_Source]:
    if isinstance(images, (str, bytes, os.PathLike)):
        raise ValidationError("images", "must be a list of images, not a single one", model=model)
    names = reference_fields(model)
    if len(images) > len(names):
        rule = (
            f"{model} takes at most {len(names)} reference image(s) "
            f"({names[0]} .. {names[-1]}), got {len(images)}"
        )
        raise ValidationError("images", rule, model=model)
    try:
        return [_classify(i, image) for i, image in enumerate(images)]
    except ValidationError as exc:
        raise ValidationError(exc.field, exc.rule, model=model) from None


def reference_placeholders(
    images: Sequence[ReferenceImage] | None,
    *,
    model: str,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Return each reference field ``images`` will fill, with a stand-in text value.

    Lets a request be built and checked (counts, field order, required images) before any
    file is read; :func:`resolve_references` supplies the real values at submit time.
    Raises ValidationError when there are too many images, one is of an unusable kind,
    or ``fields`` already sets a reference field.
    """
    if not images:
        return {}
    sources = _classify_all(images, model)
    names = reference_fields(model)
    for name in names:
        if fields is not None and fields.get(name) is not None:
            rule = f"given together with {name}: pass reference images one way"
            raise ValidationError("images", rule, model=model)
    return {name: _placeholder(source) for name, source in zip(names, sources, strict=False)}


def _placeholder(source: _Source) -> str:
    if isinstance(source.value, bytes):
        return f"<{len(source.value)} bytes>"
    return str(source.value)


async def check_references(images: Sequence[ReferenceImage], *, model: str) -> None:
    """Check ``images`` for ``model`` without loading them: count, kind, size, type.

    Files are opened (off the event loop) to read their size and first bytes only, so a
    batch can be checked up front at little cost. Raises ValidationError.
    """
    for source in _classify_all(images, model):
        if source.kind == "file":
            assert isinstance(source.value, Path)
            try:
                await anyio.to_thread.run_sync(_inspect_file, source.field, source.value)
            except ValidationError as exc:
                raise ValidationError(exc.field, exc.rule, model=model) from None


async def resolve_references(
    images: Sequence[ReferenceImage], *, model: str, dialect: Dialect
) -> dict[str, str]:
    """Return the reference fields of ``model`` filled with ``images``, as ``dialect`` sends them.

    URLs pass through; files and bytes are read (off the event loop) and encoded as raw
    base64 (``bfl``) or as ``data:`` URLs (``openai``). Raises ValidationError naming the
    image (``images[i]``) for anything that cannot be sent.
    """
    sources = _classify_all(images, model)
    resolved: dict[str, str] = {}
    for name, source in zip(reference_fields(model), sources, strict=False):
        try:
            resolved[name] = await _resolve(source, dialect)
        except ValidationError as exc:
            raise ValidationError(exc.field, exc.rule, model=model) from None
    return resolved


async def _resolve(source: _Source, dialect: Dialect) -> str:
    value = source.value
    if source.kind == "url":
        assert isinstance(value, str)
        return value
    if source.kind == "data":
        assert isinstance(value, str)
        # BFL documents raw base64; the relays document data: URLs.
        return value if dialect == "openai" else value[value.index(",") + 1 :]
    if isinstance(value, Path):
        return await anyio.to_thread.run_sync(_encode_file, source.field, value, dialect)
    assert isinstance(value, bytes)
    if len(value) <= _INLINE_ENCODE_MAX:
        return _encode(value, dialect)
    return await anyio.to_thread.run_sync(_encode, value, dialect)


def _encode(data: bytes, dialect: Dialect) -> str:
    text = base64.b64encode(data).decode("ascii")
    if dialect == "openai":
        return f"data:{sniff_image_type(data[:16])};base64,{text}"
    return text


def _check_bytes(field: str, data: bytes) -> str:
    """Check an image held in memory; return its MIME type."""
    if not data:
        raise ValidationError(field, "is empty")
    if len(data) > MAX_REFERENCE_BYTES:
        raise ValidationError(field, f"is {len(data)} bytes; at most 20 MiB")
    return _check_head(field, data[:_HEAD_BYTES])


def _check_head(field: str, head: bytes) -> str:
    mime = sniff_image_type(head)
    if mime is None:
        raise ValidationError(field, f"is not a {_TYPES} image")
    size = image_dimensions(head)
    if size is not None and size[0] * size[1] > MAX_REFERENCE_PIXELS:
        width, height = size
        raise ValidationError(field, f"is {width}x{height} pixels; at most 20 MP")
    return mime


def _check_data_url(field: str, url: str) -> None:
    comma = url.find(",", 0, 200)
    header = url[5:comma].lower() if comma > 0 else ""
    if not header.endswith(";base64"):
        raise ValidationError(field, 'a data: URL must be "data:image/...;base64,..."')
    payload_chars = len(url) - comma - 1
    if payload_chars * 3 // 4 > MAX_REFERENCE_BYTES + 2:
        raise ValidationError(field, f"holds about {payload_chars * 3 // 4} bytes; at most 20 MiB")
    try:
        head = base64.b64decode(url[comma + 1 : comma + 1 + 4 * (_HEAD_BYTES // 3)])
    except (binascii.Error, ValueError):
        raise ValidationError(field, "the data: URL's base64 is corrupt") from None
    _check_head(field, head)


def _inspect_file(field: str, path: Path) -> None:
    """Check a file's size and header (runs in a worker thread)."""
    with _open(field, path) as handle:
        size = os.fstat(handle.fileno()).st_size
        _check_size(field, path, size)
        _check_head(field, handle.read(_HEAD_BYTES))


def _encode_file(field: str, path: Path, dialect: Dialect) -> str:
    """Read, check and encode one file (runs in a worker thread)."""
    with _open(field, path) as handle:
        _check_size(field, path, os.fstat(handle.fileno()).st_size)
        try:
            # One byte over the limit is enough to know a growing file broke it.
            data = handle.read(MAX_REFERENCE_BYTES + 1)
        except OSError as exc:
            raise ValidationError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    _check_bytes(field, data)
    return _encode(data, dialect)


def _open(field: str, path: Path) -> Any:
    try:
        if path.is_dir():
            raise ValidationError(field, f"{path} is a folder, not an image file")
        return path.open("rb")
    except FileNotFoundError:
        raise ValidationError(field, f"no such file: {path}") from None
    except OSError as exc:
        raise ValidationError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def _check_size(field: str, path: Path, size: int) -> None:
    if size == 0:
        raise ValidationError(field, f"{path} is empty")
    if size > MAX_REFERENCE_BYTES:
        raise ValidationError(field, f"{path} is {size} bytes; at most 20 MiB")


# The same checks for callers that hold one entry (a batch's ``images``): blocking.
check_data_url = _check_data_url
inspect_reference_file = _inspect_file
encode_reference_file = _encode_file
