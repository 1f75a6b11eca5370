"""The files a batch writes: each item's file name, and an earlier run's image found again.

:func:`item_stem` names an item's image the same way in every run (``_filenames`` makes
each name safe; the ledger settles clashes). :func:`existing_output` finds an image an
earlier run saved but did not get to record, and :func:`sha256_file` hashes it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ._filenames import output_stem
from ._ledger_reads import LedgerReads
from ._ledger_schema import LedgerItem

__all__ = ["existing_output", "item_stem", "sha256_file", "stem_digits"]

_AUTO_STEM = re.compile(r"(\d+)(?:-.*)?")


def stem_digits(total: int) -> int:
    """Return how many digits an automatic stem has in a batch of ``total`` items."""
    return max(5, len(str(max(total - 1, 0))))


async def item_stem(ledger: LedgerReads, item: LedgerItem, *, digits: int) -> str:
    """Return the item's file-name stem; a name already taken gets ``-INDEX`` appended.

    The lowest index keeps a shared name, and a name that spells another (unnamed)
    item's automatic stem yields to it, so the result is the same in every run.
    """
    stem = output_stem(item.index, item.prompt, item.name, digits=digits)
    if item.name is None:
        return stem
    first = await ledger.first_index_named(item.name)
    clash = first is not None and first != item.index
    auto = _AUTO_STEM.fullmatch(stem)
    if not clash and auto is not None and len(auto.group(1)) == digits:
        other = await ledger.get(int(auto.group(1)))
        clash = (
            other is not None
            and other.index != item.index
            and other.name is None
            and output_stem(other.index, other.prompt, None, digits=digits) == stem
        )
    return f"{stem}-{item.index:0{digits}d}" if clash else stem


def sha256_file(path: Path) -> str:
    """Return the SHA-256 (hex) of the file at ``path``, read 1 MiB at a time (blocking)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def existing_output(out: Path, stem: str, since: float) -> Path | None:
    """Return a complete image of ``stem`` in ``out`` written after ``since`` (epoch s)."""
    for name in (stem + ext for ext in (".jpeg", ".png", ".webp", ".jpg")):
        candidate = out / name
        try:
            info = candidate.stat()
        except OSError:
            continue
        # Files are renamed into place only when complete, so one that exists is whole;
        # one older than the item's last ledger update belongs to an earlier attempt.
        if info.st_mtime >= since and info.st_size > 0:
            return candidate
    return None
