"""``data:`` URLs holding an image: read the header, show them safely, decode in chunks.

An OpenAI-style relay may return the image itself as ``b64_json``; the provider hands it
on as ``data:image/...;base64,...`` and the downloader saves it from here, a chunk at a
time, so the decoded image never sits in memory next to its base64 text.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

__all__ = ["data_url_header", "decoded_chunks", "is_data_url", "shown_data_url"]

# A header longer than this is no image media type: stop looking for the comma.
_HEADER_MAX = 200


def is_data_url(url: str) -> bool:
    """Return whether ``url`` is a ``data:`` URL."""
    return url[:5].lower() == "data:"


def data_url_header(url: str) -> tuple[str | None, int]:
    """Return the media type (or None) and where the base64 starts; ValueError if not base64."""
    comma = url.find(",", 0, _HEADER_MAX)
    header = url[5:comma].strip().lower() if comma > 0 else ""
    if not header.endswith(";base64"):
        raise ValueError("only base64 data: URLs can be saved")
    return header.split(";", 1)[0] or None, comma + 1


def shown_data_url(url: str) -> str:
    """Return ``url`` as logs and errors may show it: the header and the length, no image."""
    comma = url.find(",", 0, _HEADER_MAX)
    header = url[5:comma] if comma > 0 else "?"
    return f"data:{header},<{len(url)} chars>"


def decoded_chunks(url: str, start: int, chunk_size: int) -> Iterator[bytes]:
    """Yield the bytes of the base64 in ``url[start:]``, about ``chunk_size`` at a time.

    Raises ``binascii.Error`` (a ValueError) when the base64 is corrupt. A missing final
    padding is tolerated.
    """
    # Whole 4-character groups decode on their own, so each slice decodes independently.
    step = max(4, chunk_size // 3 * 4)
    end = len(url)
    for offset in range(start, end, step):
        piece = url[offset : offset + step]
        if offset + step >= end:
            piece += "=" * (-len(piece) % 4)
        yield base64.b64decode(piece, validate=True)
