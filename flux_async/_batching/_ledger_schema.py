"""What the ledger stores: its SQLite schema, item states, rows, and the folder lock.

``_ledger.py`` holds the :class:`~flux_async._batching._ledger.Ledger` that reads and writes these;
this module knows the tables and never the event loop.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .._errors import FluxError

__all__ = [
    "COLUMNS",
    "LEDGER_NAME",
    "LOCK_NAME",
    "RESET",
    "SCHEMA_VERSION",
    "AddReport",
    "ItemState",
    "LedgerError",
    "LedgerFullError",
    "LedgerItem",
    "connect",
]

LEDGER_NAME = ".flux-async.sqlite"
LOCK_NAME = ".flux-async.lock"
SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    idx INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL, prompt TEXT, model TEXT NOT NULL,
    name TEXT, state TEXT NOT NULL, task_id TEXT, polling_url TEXT, cost REAL,
    sample_url TEXT, deadline REAL, path TEXT, sha256 TEXT, seed INTEGER, prompt_used TEXT,
    error TEXT, may_be_billed INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL,
    prior_cost REAL NOT NULL DEFAULT 0
);
CREATE INDEX items_by_state ON items (state, idx);
CREATE INDEX items_by_name ON items (name COLLATE NOCASE) WHERE name IS NOT NULL;
PRAGMA user_version = {SCHEMA_VERSION};
"""
COLUMNS = (
    "idx, fingerprint, prompt, model, name, state, task_id, polling_url, cost, sample_url, "
    "deadline, path, sha256, seed, prompt_used, error, may_be_billed, updated_at"
)
# A new attempt starts without the old task; its cost moves to prior_cost so that
# Ledger.spent() still counts credits paid for attempts that were retried.
RESET = (
    "state = 'pending', prior_cost = prior_cost + CASE WHEN task_id IS NULL THEN 0 "
    "ELSE COALESCE(cost, 0) END, task_id = NULL, polling_url = NULL, cost = NULL, "
    "sample_url = NULL, deadline = NULL, path = NULL, sha256 = NULL, seed = NULL, "
    "prompt_used = NULL, error = NULL, may_be_billed = 0"
)


class LedgerError(FluxError, RuntimeError):
    """Raised when the ledger cannot be used: another run holds it, it is closed, or unknown."""


class LedgerFullError(LedgerError):
    """Raised when SQLite cannot write the ledger: the disk (or a quota) is full.

    The write that failed was rolled back, so the ledger holds what was committed before
    it; ``directory`` is the folder to free space in before re-running.
    """

    def __init__(self, directory: Path, reason: str) -> None:
        super().__init__(
            f"the disk under {directory} is full ({reason}): free space there and re-run the "
            "same command; the ledger is intact and no finished task is paid for again"
        )
        self.directory = directory


class ItemState(StrEnum):
    """Where one item is in its life (see ``_ledger``'s docstring)."""

    PENDING = "pending"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    READY = "ready"
    SAVED = "saved"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LedgerItem:
    """One item's row. ``deadline`` and ``updated_at`` are wall-clock epoch seconds.

    Wall-clock, not monotonic, because they must mean something to the next process.
    ``sample_url`` is signed: never show it without ``redact_url``.
    """

    index: int
    fingerprint: str
    prompt: str | None
    model: str
    name: str | None
    state: ItemState
    task_id: str | None
    polling_url: str | None
    cost: float | None
    sample_url: str | None
    deadline: float | None
    path: str | None
    sha256: str | None
    seed: int | None
    prompt_used: str | None
    error: str | None
    may_be_billed: bool
    updated_at: float

    @property
    def ambiguous(self) -> bool:
        """Return True for a failure that may be billed but has no task id to poll."""
        return self.state is ItemState.FAILED and self.may_be_billed and self.task_id is None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> LedgerItem:
        """Build an item from a row selected as :data:`COLUMNS`."""
        values = list(row)
        values[5] = ItemState(values[5])
        values[16] = bool(values[16])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class AddReport:
    """What ``Ledger.add_items`` found: new rows, known rows, and known rows that changed.

    ``replaced`` counts the changed items that were given their new input;
    ``changed_indices`` lists the first few (at most 20) changed items left as they were,
    for a message: the caller decides about those (``Ledger.replace`` or refuse).
    """

    added: int = 0
    existing: int = 0
    changed: int = 0
    changed_indices: tuple[int, ...] = ()
    replaced: int = 0


def connect(
    directory: Path, config_text: str
) -> tuple[sqlite3.Connection, int, dict[str, Any] | None]:
    """Open ``directory``'s ledger: return the connection, the lock's fd and the stored config.

    Creates the folder and the database as needed; ``config_text`` (JSON) is stored as
    the run config when there is none yet. Blocking: call it from a worker thread. The
    connection is in autocommit mode (the ledger opens its own transactions) and may be
    used from any one thread at a time.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = lock_folder(directory)
    conn = None
    try:
        conn = sqlite3.connect(
            directory / LEDGER_NAME, isolation_level=None, check_same_thread=False
        )
        previous = prepare(conn, config_text)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        if isinstance(exc, sqlite3.DatabaseError):
            raise LedgerError(f"{directory / LEDGER_NAME} is not a usable ledger: {exc}") from exc
        raise
    return conn, lock_fd, previous


def lock_folder(directory: Path) -> int:
    """Lock ``directory`` for this process and return the lock's file descriptor.

    Two runs sharing a folder would submit the same items twice. flock is released by
    the kernel when the process dies, so a SIGKILL leaves no stale lock. (Windows has no
    flock; there the lock file exists but does not exclude.)
    """
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if sys.platform != "win32":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise LedgerError(
                f"another flux-async run is using {directory}; wait for it or use another folder"
            ) from exc
    return fd


def prepare(conn: sqlite3.Connection, config_text: str) -> dict[str, Any] | None:
    """Set the pragmas, create or check the schema, and return the stored run config.

    The run config ``config_text`` (JSON) is stored only when there is none yet.
    """
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA busy_timeout = 5000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            raise LedgerError("the file is an SQLite database but not a flux-async ledger")
        conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
    elif version != SCHEMA_VERSION:
        raise LedgerError(
            f"the ledger has schema version {version}; this flux-async reads {SCHEMA_VERSION}"
        )
    row = conn.execute("SELECT value FROM meta WHERE key = 'run_config'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('run_config', ?)", (config_text,))
        return None
    previous: dict[str, Any] = json.loads(row[0])
    return previous
