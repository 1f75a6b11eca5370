"""Making text a server sent safe to print: no control or escape characters, bounded length.

Every string a server chooses (an error ``detail``, a status, a revised prompt, a
moderation reason, a raw value quoted in an error) goes through :func:`clean_text` before
it enters an exception message, an event, a log line or a file the library writes. A
terminal then never receives an escape sequence a server chose, and a megabyte of
``detail`` becomes a line.
"""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["DEFAULT_LIMIT", "clean_text", "shown_value"]

DEFAULT_LIMIT = 200
_ELLIPSIS = "…"
# Control (Cc), format (Cf: bidi overrides, zero-width), surrogates (Cs), unassigned (Cn)
# and private use (Co) characters; normal letters, marks, symbols and spaces stay.
_DROPPED = frozenset({"Cc", "Cf", "Cs", "Cn", "Co"})
_SPACES = frozenset("\t\n\r\x0b\x0c\x85\u2028\u2029")


def clean_text(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """Return ``text`` with control and escape characters removed, at most ``limit`` chars.

    Line breaks and tabs become single spaces (a message stays one line); other control,
    format and private-use characters are dropped, ESC included, so an ANSI sequence
    loses its power. A longer result is cut and ends with "…". Non-strings are ``str()``-ed.
    """
    raw = text if isinstance(text, str) else str(text)
    # Looking at more than needed would let a huge string cost time for nothing.
    window = raw[: max(limit, 0) * 4 + 16]
    out: list[str] = []
    for char in window:
        if char in _SPACES:
            if out and out[-1] != " ":
                out.append(" ")
        elif unicodedata.category(char) not in _DROPPED:
            out.append(char)
    cleaned = "".join(out).strip()
    if len(cleaned) > limit or len(window) < len(raw):
        cleaned = cleaned[: max(limit - 1, 0)].rstrip() + _ELLIPSIS
    return cleaned


def shown_value(value: Any, limit: int = 80) -> str:
    """Return a short, printable ``repr``-like form of a raw wire value for an error message."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not break the error path
        text = f"<{type(value).__name__}>"
    return clean_text(text, limit)
