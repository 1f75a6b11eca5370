"""Writing a file so that no reader ever sees it half written.

Bytes go to a hidden ``.{name}.{random}.part`` file beside the target, are flushed and
fsynced, and the temp file is moved into place only when the body checked out: renamed
over the target (``overwrite=True``, the batch's ledger owns its names), or linked to
the first free name so an existing file is never replaced (``overwrite=False``, see
``_paths.place_new``). On any failure or cancellation the temp file is removed and
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import aiofiles
import aiofiles.os
import anyio
import anyio.to_thread

from .._core._paths import place_new

__all__ = ["write_atomically"]

# Bytes of the final name kept in `.{name}.{random}.part`: stays under the 255-byte limit.
_TEMP_STEM_MAX = 180


def temp_path(final: Path) -> Path:
    """Return a fresh hidden temp file name beside ``final``."""
    stem = final.name.encode("utf-8", "surrogateescape")[:_TEMP_STEM_MAX]
    return final.with_name(f".{stem.decode('utf-8', 'ignore')}.{secrets.token_hex(6)}.part")


async def write_atomically(
    chunks: AsyncGenerator[bytes, None],
    final: Path,
    *,
    verify: Callable[[int], None],
    on_chunk: Callable[[int], None] | None = None,
    overwrite: bool = True,
) -> tuple[Path, int, str]:
    """Write ``chunks`` to a temp file beside ``final``, then rename it into place.

    ``verify(size)`` runs after the last chunk and raises if the body is not whole;
    ``on_chunk(n)`` is told of every ``n`` bytes written. Returns the path written (with
    ``overwrite=False``, maybe ``final`` renamed ``stem-N.ext``), the size in bytes and
    the sha256 (hex). Raises OSError for disk trouble, or whatever ``chunks`` or
    ``verify`` raise; the temp file is gone then.
    """
    temp = temp_path(final)
    digest = hashlib.sha256()
    size = 0
    done = False
    try:
        # Shielded: a cancelled open would leak the handle and the file it created.
        with anyio.CancelScope(shield=True):
            handle = await aiofiles.open(temp, "wb")
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    await handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    if on_chunk is not None:
                        on_chunk(len(chunk))
            verify(size)
            await handle.flush()
            # fsync before the rename: otherwise a power cut can leave an empty file
            # under the final name, which a resumed batch would take for a saved image.
            await anyio.to_thread.run_sync(os.fsync, handle.fileno())
        finally:
            with anyio.CancelScope(shield=True):
                await handle.close()
        # Shielded: once the rename starts, finish it rather than race it with cleanup.
        with anyio.CancelScope(shield=True):
            if overwrite:
                await aiofiles.os.replace(temp, final)
            else:
                final = await anyio.to_thread.run_sync(place_new, temp, final)
        done = True
    finally:
        if not done:
            with anyio.CancelScope(shield=True):
                await _remove_quietly(temp)
    return final, size, digest.hexdigest()


async def _remove_quietly(path: Path) -> None:
    try:
        await aiofiles.os.remove(path)
    except FileNotFoundError:
        # The open itself failed, so there is nothing to clean up.
        return
