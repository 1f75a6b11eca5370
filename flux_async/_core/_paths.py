"""Where an image may be written: names from the caller, never from the server.

Every writer (``generate``, ``generate_many``, ``save`` into a folder, batch, orphans)
builds its target with these functions:

- :func:`task_stem` turns a task id (a string the server chose) into a harmless file
  name stem: only ``[A-Za-z0-9_-]`` is kept (no dot: the writer always adds the image's
  own extension, so an id like ``a.pth`` cannot choose one), at most
  :data:`TASK_STEM_MAX` characters, never starting with ``-``, never empty; when
  anything had to change, ``-`` and
  the first 10 hex digits of the id's SHA-256 are appended, so two ids never share a
  stem by accident. A well-formed id (a UUID) is kept as it is.
- :func:`check_file_name` refuses a caller's ``filename`` / ``--name`` that is not one
  plain file name (a separator, ``..``, an absolute path, NUL, control characters) with
  a :class:`ValidationError` naming the field and the rule, before anything is paid.
- :func:`contained` checks that ``folder / name``, resolved (symlinks followed), lies
  inside the resolved folder.
- :func:`place_new` moves a finished temp file to a name nobody holds: ``stem.ext``,
  else ``stem-1.ext``, ``stem-2.ext``, ... Each try is one atomic ``link()`` that fails
  if the name exists, so two writers (two processes included) never both win a name and
  an existing file is never replaced.
- :func:`prepare_folder` creates an output folder and proves it writable (a temp file
  created and removed) before the first submit; :class:`WritableFolders` does it once
  per folder for a client.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
from pathlib import Path

import anyio
import anyio.to_thread

from .._errors import ConfigurationError, ValidationError

__all__ = [
    "FREE_NAME_TRIES",
    "TASK_STEM_MAX",
    "WritableFolders",
    "check_file_name",
    "contained",
    "place_new",
    "prepare_folder",
    "task_stem",
]

TASK_STEM_MAX = 64
FREE_NAME_TRIES = 1000
_HASH_DIGITS = 10
_KEEP = re.compile(r"[^A-Za-z0-9_-]+")
# link() is not offered everywhere (FAT, some network and FUSE file systems).
_NO_LINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS})


def task_stem(task_id: str) -> str:
    """Return the file-name stem for an image saved under its task id (see module doc)."""
    cleaned = _KEEP.sub("-", task_id).lstrip("-")[:TASK_STEM_MAX].rstrip("-")
    if cleaned == task_id and cleaned:
        return cleaned
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_DIGITS]
    return f"{cleaned}-{digest}" if cleaned else f"task-{digest}"


def check_file_name(name: str, *, field: str = "filename") -> str:
    """Return ``name`` if it is one plain file name; else raise ValidationError.

    Refused: empty, ``.`` or ``..``, a path separator (``/``, or ``\\`` anywhere, for
    portability), a drive or absolute path, NUL or any control character, a leading
    ``.`` (hidden files, and the writer's own temp files start so).
    """
    rule: str | None = None
    if not isinstance(name, str) or not name:
        rule = "must be a non-empty file name"
    elif name in {".", ".."}:
        rule = "must be a file name, not '.' or '..'"
    elif "/" in name or "\\" in name or os.sep in name:
        rule = "must be a plain file name without path separators"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        rule = "must not contain NUL or control characters"
    elif Path(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        rule = "must not be an absolute path or name a drive"
    elif name.startswith("."):
        rule = "must not start with '.'"
    elif len(name.encode("utf-8", "surrogatepass")) > 200:
        rule = "must be at most 200 bytes of UTF-8"
    if rule is not None:
        raise ValidationError(field, rule)
    return name


def contained(folder: Path, name: str) -> Path:
    """Return ``folder / name``; raise ValueError unless it resolves inside ``folder``."""
    target = folder / name
    root = folder.resolve()
    resolved = target.resolve()
    if Path(name).name != name or name in {".", ".."}:
        raise ValueError(f"{name!r} is not a single file name")
    if not resolved.is_relative_to(root) or resolved == root:
        raise ValueError(f"{target} resolves to {resolved}, outside {root}")
    return target


def place_new(temp: Path, final: Path, *, tries: int = FREE_NAME_TRIES) -> Path:
    """Move ``temp`` to ``final`` or the first free ``final``-N name; return where (blocking).

    Never replaces a file. Raises FileExistsError when ``tries`` names are all taken and
    OSError for disk trouble; ``temp`` is left in place then (the caller removes it).
    """
    stem, suffix = final.stem, final.suffix
    for n in range(tries):
        # link() never follows a symlink at the target: an existing one is just taken.
        candidate = final if n == 0 else final.with_name(f"{stem}-{n}{suffix}")
        try:
            os.link(temp, candidate)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if not _reserve(candidate):
                continue
            os.replace(temp, candidate)
            return candidate
        temp.unlink()
        return candidate
    raise FileExistsError(errno.EEXIST, f"no free name after {tries} tries", str(final))


def _reserve(path: Path) -> bool:
    """Claim ``path`` with an O_EXCL create (where link() is missing); False if taken."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def prepare_folder(folder: Path) -> Path:
    """Create ``folder`` and prove it writable; raise ConfigurationError saying why not.

    Blocking: run it off the event loop. Called before the first submit, so a folder
    that cannot take the image costs nothing.
    """
    probe = folder / f".flux-async-write-test.{secrets.token_hex(6)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(
            f"output folder {folder} is not writable ({reason}); nothing was submitted"
        ) from exc
    return folder


class WritableFolders:
    """The output folders one client has proven writable (a web backend's one: once)."""

    def __init__(self) -> None:
        self._ready: dict[Path, anyio.Event] = {}

    async def prepare(self, folder: str | Path) -> Path:
        """Create and write-test ``folder`` unless done before; raise ConfigurationError."""
        path = Path(folder)
        ready = self._ready.get(path)
        if ready is not None and ready.is_set():
            return path  # no checkpoint: concurrent callers keep their order
        if ready is None:
            # The first caller tests the folder; the others wait for it and wake together.
            ready = self._ready[path] = anyio.Event()
            try:
                await anyio.to_thread.run_sync(prepare_folder, path)
            except BaseException:
                del self._ready[path]
                raise
            finally:
                ready.set()
            return path
        await ready.wait()
        # Look again: proven by now, or it failed (so this caller tries, and fails, itself).
        return await self.prepare(path)
