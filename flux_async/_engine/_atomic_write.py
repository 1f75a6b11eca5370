"""Writing a file so that no reader ever sees it half written.

Bytes go to a hidden ``.{name}.{random}.part`` file beside the target, are flushed and
fsynced, and the temp file is moved into place only when the body checked out: renamed
over the target (``overwrite=True``, the batch's ledger owns its names), or linked to
the first free name so an existing file is never replaced (``overwrite=False``, see
``_paths.place_new``). On any failure or cancellation the temp file is removed and
nothing is left behind.

The disk work runs in aiofiles' worker threads (the event loop's executor, through
``aiofiles.os.wrap``), a batch of chunks per hand-off: the first one
creates the folder and opens the temp file, each one writes and hashes its chunks
(``hashlib`` releases the GIL on large buffers, so the hash costs the event loop
nothing), the last one also flushes, fsyncs, closes and renames. A small image costs
one hand-off, a 6 MB one six at the default 1 MiB batch; memory stays one batch per
stream.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import BinaryIO

import aiofiles.os
import anyio

from .._core._paths import place_new

__all__ = ["DEFAULT_BATCH_BYTES", "FolderUnavailable", "temp_path", "write_atomically"]

# Bytes of the final name kept in `.{name}.{random}.part`: stays under the 255-byte limit.
_TEMP_STEM_MAX = 180
DEFAULT_BATCH_BYTES = 1024 * 1024
"""Bytes gathered before each hand-off to a writer thread: one batch per stream in memory."""


class FolderUnavailable(OSError):
    """The target's folder could not be created (raised from the first hand-off)."""


def temp_path(final: Path) -> Path:
    """Return a fresh hidden temp file name beside ``final``."""
    stem = final.name.encode("utf-8", "surrogateescape")[:_TEMP_STEM_MAX]
    return final.with_name(f".{stem.decode('utf-8', 'ignore')}.{secrets.token_hex(6)}.part")


def _open_part(path: Path) -> BinaryIO:
    # "xb": the random name is new; never write through something already there.
    return open(path, "xb")  # closed by _PartFile.finish or .discard


class _PartFile:
    """The temp file and its running sha256; every method is blocking (a worker thread's).

    Calls never overlap: the coroutine that owns it awaits each hand-off in turn.
    """

    __slots__ = ("_digest", "_file", "final", "placed", "temp", "touched")

    def __init__(self, final: Path) -> None:
        self.final = final
        self.temp = temp_path(final)
        self._file: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self.placed = False
        self.touched = False  # an open was tried: a temp file may exist

    def write(self, pieces: list[bytes]) -> None:
        """Write and hash ``pieces``, creating the folder and the temp file first if needed."""
        if self._file is None:
            try:
                os.makedirs(self.final.parent, exist_ok=True)
            except OSError as exc:
                raise FolderUnavailable(
                    exc.errno, f"cannot create folder {self.final.parent}: {exc}"
                ) from exc
            self.touched = True
            self._file = _open_part(self.temp)
        for piece in pieces:
            self._file.write(piece)
            self._digest.update(piece)

    def finish(self, pieces: list[bytes], overwrite: bool) -> tuple[Path, str]:
        """Write the last ``pieces``, fsync, close and move the file into place."""
        self.write(pieces)
        handle = self._file
        if handle is None:  # pragma: no cover - write() always opens it
            raise RuntimeError("the temp file was never opened")
        handle.flush()
        # fsync before the rename: otherwise a power cut can leave an empty file
        # under the final name, which a resumed batch would take for a saved image.
        os.fsync(handle.fileno())
        self._file = None
        handle.close()
        if overwrite:
            os.replace(self.temp, self.final)
            final = self.final
        else:
            final = place_new(self.temp, self.final)
        self.placed = True
        return final, self._digest.hexdigest()

    def discard(self) -> None:
        """Close and remove the temp file, whatever state it is in."""
        if self._file is not None:
            handle, self._file = self._file, None
            handle.close()
        if not self.placed:
            try:
                os.remove(self.temp)
            except FileNotFoundError:
                # Never opened (or the open itself failed): nothing to clean up.
                return


async def write_atomically(
    chunks: AsyncGenerator[bytes, None],
    final: Path,
    *,
    verify: Callable[[int], None],
    on_chunk: Callable[[int], None] | None = None,
    overwrite: bool = True,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> tuple[Path, int, str]:
    """Write ``chunks`` to a temp file beside ``final``, then rename it into place.

    ``verify(size)`` runs after the last chunk and raises if the body is not whole;
    ``on_chunk(n)`` is told of every ``n`` bytes written. Chunks are handed to a writer
    thread once ``batch_bytes`` have gathered. Returns the path written (with
    ``overwrite=False``, maybe ``final`` renamed ``stem-N.ext``), the size in bytes and
    the sha256 (hex). Raises OSError for disk trouble (:class:`FolderUnavailable` when
    the folder cannot be created), or whatever ``chunks`` or ``verify`` raise; the temp
    file is gone then.
    """
    part = _PartFile(final)
    pending: list[bytes] = []
    gathered = size = 0
    try:
        async for chunk in chunks:
            pending.append(chunk)
            gathered += len(chunk)
            if gathered >= batch_bytes:
                # Not cancellable while the thread runs: the file's state stays known.
                await aiofiles.os.wrap(part.write)(pending)
                size += gathered
                if on_chunk is not None:
                    on_chunk(gathered)
                pending, gathered = [], 0
        size += gathered
        verify(size)
        # Shielded: once the rename starts, finish it rather than race it with cleanup.
        with anyio.CancelScope(shield=True):
            final, digest = await aiofiles.os.wrap(part.finish)(pending, overwrite)
        if on_chunk is not None and gathered:
            on_chunk(gathered)
    finally:
        await chunks.aclose()
        if part.touched and not part.placed:
            with anyio.CancelScope(shield=True):
                await aiofiles.os.wrap(part.discard)()
    return final, size, digest
