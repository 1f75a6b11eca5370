"""Deterministic, valid images of any declared size, streamed without building them whole.

Each image is one solid colour (derived from the task's seed) at the requested width and
height, encoded by hand: baseline JPEG (4:2:0, DC-only blocks), PNG (a one-colour palette) or
lossless WebP (VP8L with single-symbol prefix codes, so pixels cost no bits). Each format
carries a padding section (a JPEG comment, a private PNG chunk, an unknown RIFF chunk)
that grows to make the body exactly as long as asked, so a 20 MB delivery costs 20 MB of
zero bytes streamed in chunks, never a 20 MB string.

An :class:`ImageBody` is a list of parts: ``bytes``, or an ``int`` n meaning n zero bytes.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["CONTENT_TYPES", "ImageBody", "render"]

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

_MARK = b"flux_async simulator"
_ZEROS = bytes(65_536)
_COM_MAX = 65_533  # data bytes of one JPEG comment segment (its length field counts itself)

Part = bytes | int


@dataclass(frozen=True, slots=True)
class ImageBody:
    """One encoded image: its parts, total length in bytes and content type."""

    content_type: str
    parts: tuple[Part, ...]
    size: int

    def chunks(self, start: int = 0, end: int | None = None, size: int = 65_536) -> Iterator[bytes]:
        """Yield bytes ``start`` up to (excluding) ``end`` in chunks of at most ``size``."""
        stop = self.size if end is None else min(end, self.size)
        offset = 0
        for part in self.parts:
            length = part if isinstance(part, int) else len(part)
            lo, hi = max(start, offset), min(stop, offset + length)
            offset += length
            while lo < hi:
                step = min(size, hi - lo)
                rel = lo - (offset - length)
                yield _ZEROS[:step] if isinstance(part, int) else part[rel : rel + step]
                lo += step


def render(fmt: str, width: int, height: int, seed: int, target: int) -> ImageBody:
    """Encode a ``width`` x ``height`` image for ``seed``, at least ``target`` bytes long."""
    rgb = hashlib.blake2b(str(seed).encode(), digest_size=3).digest()
    if fmt == "png":
        parts = _png(width, height, rgb, target)
    elif fmt == "webp":
        parts = _webp(width, height, rgb, target)
    else:
        fmt, parts = "jpeg", _jpeg(width, height, rgb, target)
    total = sum(p if isinstance(p, int) else len(p) for p in parts)
    return ImageBody(CONTENT_TYPES[fmt], tuple(parts), total)


# --- JPEG -------------------------------------------------------------------------------


def _jpeg(width: int, height: int, rgb: bytes, target: int) -> list[Part]:
    r, g, b = rgb
    ycc = (
        0.299 * r + 0.587 * g + 0.114 * b,
        128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
        128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
    )
    # With an all-ones quantisation table a flat block's DC coefficient is 8 * (v - 128).
    dcs = [8 * (min(255, max(0, round(v))) - 128) for v in ycc]
    cats = [abs(dc).bit_length() for dc in dcs]
    symbols = [0, *sorted(set(cats) - {0})]
    # Canonical codes with one symbol per length: 0, 10, 110, 1110 (never all ones).
    codes = {sym: "1" * i + "0" for i, sym in enumerate(symbols)}

    def dc_bits(dc: int, cat: int) -> str:
        value = dc if dc >= 0 else dc + (1 << cat) - 1
        return codes[cat] + (format(value, f"0{cat}b") if cat else "")

    # First MCU: four Y blocks, then Cb and Cr; each block is a DC code plus EOB ("0").
    head = dc_bits(dcs[0], cats[0]) + "0" + "00" * 3
    head += dc_bits(dcs[1], cats[1]) + "0" + dc_bits(dcs[2], cats[2]) + "0"
    mcus = -(-width // 16) * -(-height // 16)
    # Every later MCU repeats the predictor: six blocks of "0" (DC diff 0) + "0" (EOB).
    entropy = _entropy(head, len(head) + 12 * (mcus - 1))

    bits = [0] * 16
    bits[: len(symbols)] = [1] * len(symbols)
    dht_dc = b"\x00" + bytes(bits) + bytes(symbols)
    dht_ac = b"\x10" + bytes([1] + [0] * 15) + b"\x00"
    components = b"\x01\x22\x00\x02\x11\x00\x03\x11\x00"
    sof = struct.pack(">BHHB", 8, height, width, 3) + components
    before = [
        b"\xff\xd8" + _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"),
    ]
    after = [
        _segment(0xDB, b"\x00" + b"\x01" * 64)
        + _segment(0xC0, sof)
        + _segment(0xC4, dht_dc)
        + _segment(0xC4, dht_ac)
        + _segment(0xDA, b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00"),
        *entropy,
        b"\xff\xd9",
    ]
    natural = sum(p if isinstance(p, int) else len(p) for p in [*before, *after])
    return [*before, *_comments(max(target - natural, 4 + len(_MARK))), *after]


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _comments(total: int) -> list[Part]:
    """Return comment segments taking exactly ``total`` (>= 4 + len(_MARK)) bytes."""
    count = -(-total // (_COM_MAX + 4))
    data = total - 4 * count
    parts: list[Part] = []
    for i in range(count):
        share = data // count + (1 if i < data % count else 0)
        lead = _MARK[:share] if i == 0 else b""
        parts += [struct.pack(">BBH", 0xFF, 0xFE, share + 2) + lead, share - len(lead)]
    return parts


def _entropy(head: str, total_bits: int) -> list[Part]:
    """Return the scan bytes: ``head`` then zero bits to ``total_bits``, 1-padded."""
    nbytes = -(-total_bits // 8)
    pad = nbytes * 8 - total_bits
    head_bytes = -(-len(head) // 8)
    if head_bytes >= nbytes:
        explicit = head + "0" * (total_bits - len(head)) + "1" * pad
        zeros, tail = 0, b""
    else:
        explicit = head + "0" * (head_bytes * 8 - len(head))
        zeros = nbytes - head_bytes - (1 if pad else 0)
        tail = bytes([(1 << pad) - 1]) if pad else b""
    raw = int(explicit, 2).to_bytes(len(explicit) // 8, "big")
    # A 0xFF inside a scan must be followed by a stuffed 0x00.
    return [raw.replace(b"\xff", b"\xff\x00"), zeros, tail]


# --- PNG --------------------------------------------------------------------------------


def _png(width: int, height: int, rgb: bytes, target: int) -> list[Part]:
    # One-entry palette, 1 bit per pixel: every pixel is index 0, so the compressed
    # pixels depend on the size only (and are cached); the colour lives in PLTE.
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0))
    plte = _chunk(b"PLTE", rgb)
    idat = _chunk(b"IDAT", _png_pixels(width, height))
    iend = _chunk(b"IEND", b"")
    natural = 8 + len(ihdr) + len(plte) + 12 + len(_MARK) + len(idat) + len(iend)
    zeros = max(0, target - natural)
    # "flPd": ancillary, private, safe-to-copy; decoders skip it.
    pad_head = struct.pack(">I", len(_MARK) + zeros) + b"flPd" + _MARK
    pad_crc = struct.pack(">I", _crc_with_zeros(b"flPd" + _MARK, zeros))
    return [b"\x89PNG\r\n\x1a\n" + ihdr + plte + pad_head, zeros, pad_crc + idat + iend]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=32)
def _png_pixels(width: int, height: int) -> bytes:
    packer = zlib.compressobj(9)
    row = bytes(1 + -(-width // 8))  # filter type 0, then the row's zero bits
    batch = max(1, 1_048_576 // len(row))
    out = [packer.compress(row * min(batch, height - done)) for done in range(0, height, batch)]
    out.append(packer.flush())
    return b"".join(out)


@functools.lru_cache(maxsize=32)
def _crc_with_zeros(prefix: bytes, zeros: int) -> int:
    crc = zlib.crc32(prefix)
    for _ in range(zeros // len(_ZEROS)):
        crc = zlib.crc32(_ZEROS, crc)
    return zlib.crc32(_ZEROS[: zeros % len(_ZEROS)], crc)


# --- WebP -------------------------------------------------------------------------------


def _webp(width: int, height: int, rgb: bytes, target: int) -> list[Part]:
    r, g, b = rgb
    fields = [(0x2F, 8), (width - 1, 14), (height - 1, 14), (0, 1), (0, 3)]
    fields += [(0, 1), (0, 1), (0, 1)]  # no transform, no colour cache, no meta codes
    # Five single-symbol ("simple") prefix codes: green, red, blue, alpha, distance.
    for symbol in (g, r, b, 255):
        fields += [(1, 1), (0, 1), (1, 1), (symbol, 8)]
    fields += [(1, 1), (0, 1), (0, 1), (0, 1)]
    vp8l = _pack_lsb(fields)
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    body = _riff_chunk(b"VP8X", vp8x) + _riff_chunk(b"VP8L", vp8l)
    natural = 12 + len(body) + 8 + len(_MARK)
    zeros = max(0, target - natural)
    zeros += (len(_MARK) + zeros) % 2  # RIFF chunks are padded to even lengths
    riff_size = 4 + len(body) + 8 + len(_MARK) + zeros
    header = b"RIFF" + struct.pack("<I", riff_size) + b"WEBP" + body
    return [header + b"PADD" + struct.pack("<I", len(_MARK) + zeros) + _MARK, zeros]


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) % 2)


def _pack_lsb(fields: list[tuple[int, int]]) -> bytes:
    value, nbits = 0, 0
    for field_value, width in fields:
        value |= field_value << nbits
        nbits += width
    return value.to_bytes(-(-nbits // 8), "little")
