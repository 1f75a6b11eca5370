"""What a saved result is called, what was saved, and until when its URL can be fetched.

A result URL is signed and expires (its ``se`` query parameter, about ten minutes after
the task ended); a saved file takes its extension from what the bytes are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .._request._models import url_expiry

__all__ = [
    "CONTENT_TYPE_EXTENSIONS",
    "DEFAULT_EXTENSION",
    "FORMAT_EXTENSIONS",
    "MIME_EXTENSIONS",
    "SavedFile",
    "extension_for",
    "result_deadline",
]

CONTENT_TYPE_EXTENSIONS = {
    "image/jpeg": ".jpeg",
    "image/jpg": ".jpeg",
    "image/pjpeg": ".jpeg",
    "image/png": ".png",
    "image/webp": ".webp",
}
FORMAT_EXTENSIONS = {"jpeg": ".jpeg", "jpg": ".jpeg", "png": ".png", "webp": ".webp"}
DEFAULT_EXTENSION = ".jpeg"
MIME_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpeg", "image/webp": ".webp"}


@dataclass(frozen=True, slots=True)
class SavedFile:
    """A file that was written completely and renamed into place."""

    path: Path
    size: int
    sha256: str
    content_type: str | None


def result_deadline(
    url: str, *, end_time: float | None, now: float, lifetime: float = 600.0
) -> float:
    """Return when the signed result ``url`` expires, in wall-clock epoch seconds.

    The URL's ``se`` query parameter (ISO-8601) wins; without a readable one the URL is
    assumed to live ``lifetime`` seconds after ``end_time`` (the task's end, epoch
    seconds), else ``lifetime`` seconds after ``now``.
    """
    expiry = _parse_expiry(url_expiry(url))
    if expiry is not None:
        return expiry
    if end_time is not None:
        return end_time + lifetime
    return now + lifetime


def _parse_expiry(text: str | None) -> float | None:
    if not text:
        return None
    # parse_qs turns an unescaped "+" of "+00:00" into a space.
    text = text.strip().replace(" ", "+")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def extension_for(output_format: str | None, content_type: str | None) -> str:
    """Return the file extension (with its dot) for a downloaded image.

    A known image Content-Type wins, since it says what the bytes are; otherwise the
    requested ``output_format``; otherwise ``.jpeg``, the API's default format.
    """
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in CONTENT_TYPE_EXTENSIONS:
            return CONTENT_TYPE_EXTENSIONS[mime]
    if output_format:
        fmt = output_format.strip().lower().lstrip(".")
        if fmt in FORMAT_EXTENSIONS:
            return FORMAT_EXTENSIONS[fmt]
    return DEFAULT_EXTENSION
