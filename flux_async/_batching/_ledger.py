"""The batch ledger: ``DIR/.flux-async.sqlite``, the source of truth of a bulk run.

Every input item has one row, moving through::

    pending → submitting → submitted → ready → saved
                  │            │          │
                  └────────────┴──────────┴──→ failed

Durability follows what a crash would cost. ``submitting`` is committed *before* the
HTTP submit, so an item caught mid-submit is known to be possibly billed; ``submitted``
(the task id) is committed before anything else happens to the task, so a resumed run
polls it instead of paying for it again; ``failed`` and ``reset`` are committed at once
because they decide what a resumed run retries. ``ready`` and ``saved`` are frequent and
cheap to redo (a resumed run re-polls the task id and downloads again), so they are
batched: committed every ``commit_every`` updates, after ``commit_interval`` seconds (checked
on the next write), or at :meth:`Ledger.flush` / :meth:`Ledger.aclose`.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives the process being
killed (SIGKILL included) though not necessarily a power cut. Every call runs off the
event loop on one worker thread at a time (a dedicated ``CapacityLimiter(1)``); the
critical writes are shielded from cancellation so Ctrl-C cannot drop a task id. The read
queries live in ``_ledger_reads``, the item writes in ``_ledger_writes``.

The ledger never stores an API key: the run configuration is scrubbed of key-like
entries before it is written.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from .._core._clock import Clock, SystemClock
from ._ledger_schema import (
    LEDGER_NAME,
    AddReport,
    ItemState,
    LedgerError,
    LedgerFullError,
    LedgerItem,
    connect,
)
from ._ledger_writes import INTERRUPTED_SUBMIT, LedgerWrites
from ._runconfig import normalise_run_config, run_config_changes, scrub_secrets

__all__ = [
    "INTERRUPTED_SUBMIT",
    "LEDGER_NAME",
    "AddReport",
    "ItemState",
    "Ledger",
    "LedgerError",
    "LedgerFullError",
    "LedgerItem",
    "run_config_changes",
    "scrub_secrets",
]


class Ledger(LedgerWrites):
    """The SQLite ledger of one output folder. Create it with :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        conn: sqlite3.Connection,
        lock_fd: int,
        *,
        previous_config: dict[str, Any] | None,
        run_config: dict[str, Any],
        clock: Clock,
        commit_every: int,
        commit_interval: float,
    ) -> None:
        super().__init__(
            directory / LEDGER_NAME,
            conn,
            clock=clock,
            commit_every=commit_every,
            commit_interval=commit_interval,
        )
        self.directory = directory
        self.run_config = run_config
        self._lock_fd = lock_fd
        self._previous = previous_config

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        run_config: Mapping[str, Any],
        clock: Clock | None = None,
        commit_every: int = 256,
        commit_interval: float = 1.0,
    ) -> Ledger:
        """Open (creating DIR and the database if needed) the ledger of ``directory``.

        ``run_config`` (model, defaults, input file and its size/mtime, ...) is scrubbed
        of secrets; on the first run it is stored, later runs keep the stored one until
        :meth:`record_run_config` (so a refused change is still detected next time).
        ``commit_interval`` is in seconds of ``clock.monotonic()``.
        Raises LedgerError when another process holds the folder or the file is not a
        ledger this version understands.
        """
        config = normalise_run_config(run_config)
        text = json.dumps(config, sort_keys=True)

        def open_sync() -> Ledger:
            conn, lock_fd, previous = connect(directory, text)
            return cls(
                directory,
                conn,
                lock_fd,
                previous_config=previous,
                run_config=config,
                clock=clock or SystemClock(),
                commit_every=commit_every,
                commit_interval=commit_interval,
            )

        with anyio.CancelScope(shield=True):  # a cancelled open must not leak the lock
            ledger = await anyio.to_thread.run_sync(open_sync)
        return ledger  # noqa: RET504 - outside the with: mypy cannot see a scope never swallows

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"Ledger({str(self.path)!r}, {state})"

    def stored_run_config(self) -> dict[str, Any] | None:
        """Return the run configuration stored before this open (None on the first run)."""
        return self._previous

    async def record_run_config(self) -> None:
        """Store this run's configuration as the one later runs compare against."""
        text = json.dumps(self.run_config, sort_keys=True)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('run_config', ?)", (text,))
            self._commit(conn)

        await self._run(work, shield=True)

    async def set_meta(self, key: str, value: str | None) -> None:
        """Store ``value`` under ``key`` for later runs (None deletes it). Durable.

        For the batch runner's own notes; ``run_config`` is kept by the methods above.
        """
        if key == "run_config":
            raise ValueError("the run configuration is stored by record_run_config")

        def work(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
            self._commit(conn)

        await self._run(work, shield=True)

    async def aclose(self) -> None:
        """Commit what is pending, close the database and release the folder. Idempotent."""

        def work(conn: sqlite3.Connection) -> None:
            try:
                self._commit(conn)
            finally:
                self._conn = None
                conn.close()
                os.close(self._lock_fd)

        if self._conn is not None:
            await self._run(work, shield=True)

    async def flush(self) -> None:
        """Commit the batched updates now."""
        await self._run(self._commit, shield=True)
