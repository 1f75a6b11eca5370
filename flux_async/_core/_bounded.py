"""Reading a body a server sends within limits: a byte cap on the decoded bytes.

httpx decodes ``gzip``/``deflate`` a whole network chunk at a time: 64 KiB of a gzip
bomb becomes 64 MiB in one step. :func:`decoded` instead decompresses the raw bytes with
a bounded output per step and stops as soon as more than ``limit`` decoded bytes came,
so memory stays a few chunks whatever the server sends. Only the encodings the clients
advertise (``ACCEPT_ENCODING``) are decoded; any other is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

__all__ = [
    "ACCEPT_ENCODING",
    "DEFAULT_MAX_IMAGE_BYTES",
    "BodyTooLarge",
    "UnsupportedEncoding",
    "decoded",
]

ACCEPT_ENCODING = "gzip, deflate"
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""The default cap on a saved image (decoded bytes): far above a 4 MP PNG (about 12 MB)."""
_STEP = 64 * 1024


class BodyTooLarge(ValueError):
    """The decoded body grew past its limit (internal; callers raise their own error)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than the limit of {limit} bytes")
        self.limit = limit


class UnsupportedEncoding(ValueError):
    """The server used a Content-Encoding that was not asked for (internal)."""


def _decompressor(encoding: str) -> zlib._Decompress | None:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        # zlib-wrapped, as the RFC says; a raw stream is detected on the first bytes.
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding[:40]!r}")


async def decoded(raw: AsyncIterator[bytes], encoding: str, limit: int) -> AsyncIterator[bytes]:
    """Yield the decoded body of ``raw`` (Content-Encoding ``encoding``), at most ``limit`` bytes.

    Raises :class:`BodyTooLarge` once the decoded size passes ``limit``,
    :class:`UnsupportedEncoding` for an encoding other than identity, gzip or deflate,
    and ``zlib.error`` (a ValueError-like ``Exception``) for a corrupt stream.
    """
    decoder = _decompressor(encoding)
    total = 0
    first = True
    async for chunk in raw:
        if decoder is None:
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(limit)
            yield chunk
            continue
        if first and encoding.strip().lower() == "deflate" and chunk and chunk[0] & 0x0F != 8:
            decoder = zlib.decompressobj(-zlib.MAX_WBITS)
        first = False
        data = chunk
        while data:
            out = decoder.decompress(data, _STEP)
            data = decoder.unconsumed_tail
            total += len(out)
            if total > limit:
                raise BodyTooLarge(limit)
            if out:
                yield out
    if decoder is not None:
        tail = decoder.flush()
        total += len(tail)
        if total > limit:
            raise BodyTooLarge(limit)
        if tail:
            yield tail
