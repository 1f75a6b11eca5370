"""Safe file names for generated images: a prompt's slug, a user's name, made harmless.

Nothing a prompt or a ``name`` says can place a file outside the output folder: a stem
never contains a path separator, never starts with a dot, never names a Windows device.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["NAME_MAX_BYTES", "SLUG_MAX", "output_stem", "prompt_slug", "safe_name"]

SLUG_MAX = 48
NAME_MAX_BYTES = 120  # leaves room under the 255-byte file-name limit for suffix and temp name
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp")
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{n}" for n in range(10)}
    | {f"lpt{n}" for n in range(10)}
    | {"com¹", "com²", "com³", "lpt¹", "lpt²", "lpt³"}
)
_UNSAFE_NAME_CHARS = re.compile(r'[\\/:*?"<>|\s]+')


def prompt_slug(prompt: str | None, *, limit: int = SLUG_MAX) -> str:
    """Return an ASCII slug of ``prompt``: lowercase ``[a-z0-9-]``, at most ``limit`` chars."""
    if not prompt:
        return ""
    folded = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    return slug[:limit].rstrip("-")


def safe_name(name: str, *, max_bytes: int = NAME_MAX_BYTES) -> str:
    """Return ``name`` made into one harmless file-name stem (possibly empty).

    Path separators, drive colons, characters Windows forbids and whitespace become
    ``-``; control and format characters (NUL, escapes, bidi overrides) are dropped;
    leading dots and dashes go (no ``..``, no hidden files); a trailing image suffix goes
    (the writer adds the real one); Windows device names get a ``_`` prefix; the result
    is cut to ``max_bytes`` of UTF-8. Letters of any script are kept.
    """
    text = unicodedata.normalize("NFC", name)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))
    text = _UNSAFE_NAME_CHARS.sub("-", text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"-{2,}", "-", text)
    lowered = text.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lowered.endswith(suffix):
            text = text[: -len(suffix)]
            break
    text = text.strip(".- ")
    if text.split(".", 1)[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    encoded = text.encode("utf-8")[:max_bytes]
    return encoded.decode("utf-8", errors="ignore").rstrip(".- ")


def output_stem(index: int, prompt: str | None, name: str | None, *, digits: int) -> str:
    """Return the file-name stem (no suffix) of item ``index``'s image.

    The item's own ``name`` wins when anything of it survives :func:`safe_name`;
    otherwise the stem is the index zero-padded to ``digits`` plus ``-`` and the prompt's
    slug (just the index when the slug is empty). The stem never contains a path
    separator or starts with a dot, so ``DIR / (stem + suffix)`` stays inside ``DIR``.
    """
    if index < 0 or digits < 1:
        raise ValueError("index must be >= 0 and digits >= 1")
    if name is not None:
        stem = safe_name(name)
        if stem:
            return stem
    number = f"{index:0{digits}d}"
    slug = prompt_slug(prompt)
    return f"{number}-{slug}" if slug else number
