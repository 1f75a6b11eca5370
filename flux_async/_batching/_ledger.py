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
queries live in ``_ledger_reads``.

The ledger never stores an API key: the run configuration is scrubbed of key-like
entries before it is written.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio

from .._core._clock import Clock, SystemClock
from ._ledger_reads import LedgerReads
from ._ledger_schema import (
    LEDGER_NAME,
    RESET,
    AddReport,
    ItemState,
    LedgerError,
    LedgerFullError,
    LedgerItem,
    connect,
)
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

INTERRUPTED_SUBMIT = (
    "the run stopped while this item was being submitted: a task may have been created and billed"
)


class Ledger(LedgerReads):
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
        super().__init__(directory / LEDGER_NAME, conn)
        self.directory = directory
        self.run_config = run_config
        self._lock_fd = lock_fd
        self._previous = previous_config
        self._clock = clock
        self._commit_every = commit_every
        self._commit_interval = commit_interval
        # Touched only inside the worker thread, which the limiter serialises.
        self._in_tx = False
        self._uncommitted = 0
        self._tx_started = 0.0

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

    async def add_items(
        self,
        items: Iterable[tuple[int, str, str | None, str, str | None]],
        *,
        chunk: int = 500,
        replace_changed: Literal["none", "unstarted", "all"] = "none",
    ) -> AddReport:
        """Insert ``(index, fingerprint, prompt, model, name)`` rows as pending where absent.

        Idempotent: a known index is counted as existing, or as changed when its
        fingerprint differs. A changed item is left as it was (``"none"``), or given its
        new input and started over as :meth:`replace` does: only when nothing was paid
        for it yet, pending or failed unbilled (``"unstarted"``), or always (``"all"``).
        ``items`` is consumed ``chunk`` rows at a time in the worker thread (a generator
        reading a file runs off the loop too), each chunk committed at once.
        """
        iterator = iter(items)
        added = existing = changed = replaced = 0
        first_kept: list[int] = []

        def work(conn: sqlite3.Connection) -> bool:
            nonlocal added, existing, changed, replaced
            rows = [next(iterator, None) for _ in range(chunk)]
            batch = [r for r in rows if r is not None]
            if not batch:
                return False
            marks = ",".join("?" * len(batch))
            sql = (
                "SELECT idx, fingerprint, state = 'pending' OR (state = 'failed' AND "  # noqa: S608
                f"may_be_billed = 0) FROM items WHERE idx IN ({marks})"
            )
            known = {
                i: (fp, bool(fresh)) for i, fp, fresh in conn.execute(sql, [r[0] for r in batch])
            }
            now = self._clock.time()
            fresh = [(*r, ItemState.PENDING.value, now) for r in batch if r[0] not in known]
            renewed = []
            for row in batch:
                if row[0] not in known:
                    continue
                existing += 1
                old, unstarted = known[row[0]]
                if old == row[1]:
                    continue
                changed += 1
                if replace_changed == "all" or (replace_changed == "unstarted" and unstarted):
                    renewed.append((*row[1:], now, row[0]))
                elif len(first_kept) < 20:
                    first_kept.append(row[0])
            self._begin(conn)
            cursor = conn.executemany(
                "INSERT OR IGNORE INTO items (idx, fingerprint, prompt, model, name, state, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                fresh,
            )
            added += max(cursor.rowcount, 0)
            conn.executemany(
                "UPDATE items SET fingerprint = ?, prompt = ?, model = ?, name = ?, "  # noqa: S608
                f"{RESET}, updated_at = ? WHERE idx = ?",
                renewed,
            )
            replaced += len(renewed)
            self._commit(conn)
            return len(batch) == chunk

        while await self._run(work, shield=True):
            pass
        return AddReport(added, existing, changed, tuple(first_kept), replaced)

    async def replace(
        self, index: int, *, fingerprint: str, prompt: str | None, model: str, name: str | None
    ) -> None:
        """Give item ``index`` a new input and start it over as pending (a changed input)."""
        await self._update(
            index,
            f"fingerprint = ?, prompt = ?, model = ?, name = ?, {RESET}",
            (fingerprint, prompt, model, name),
            critical=True,
        )

    async def remove_from(self, index: int) -> int:
        """Delete every item with an index of ``index`` or more (an input that shrank). Durable."""

        def work(conn: sqlite3.Connection) -> int:
            self._commit(conn)
            return conn.execute("DELETE FROM items WHERE idx >= ?", (index,)).rowcount

        return await self._run(work, shield=True)

    async def mark_submitting(self, index: int) -> None:
        """Record, durably and before the HTTP submit, that item ``index`` is being submitted."""
        await self._update(index, "state = 'submitting'", (), critical=True)

    async def mark_submitted(
        self, index: int, *, task_id: str, polling_url: str | None, cost: float | None
    ) -> None:
        """Record the task id, committed before anything else happens to the task."""
        await self._update(
            index,
            "state = 'submitted', task_id = ?, polling_url = ?, cost = ?, error = NULL, "
            "may_be_billed = 1",
            (task_id, polling_url, cost),
            critical=True,
        )

    async def mark_ready(self, index: int, *, sample_url: str, deadline: float) -> None:
        """Record the signed result URL and its deadline (epoch seconds). Batched."""
        await self._update(
            index, "state = 'ready', sample_url = ?, deadline = ?", (sample_url, deadline)
        )

    async def mark_saved(
        self,
        index: int,
        *,
        path: str,
        sha256: str,
        seed: int | None,
        prompt_used: str | None,
    ) -> None:
        """Record the saved file (``path`` relative to DIR, POSIX style preferred). Batched."""
        await self._update(
            index,
            "state = 'saved', path = ?, sha256 = ?, seed = ?, prompt_used = ?, error = NULL",
            (path, sha256, seed, prompt_used),
        )

    async def mark_failed(self, index: int, *, reason: str, may_be_billed: bool) -> None:
        """Record why item ``index`` failed and whether it may have cost credits. Durable."""
        # A task that ended unbilled (moderated) cost nothing, whatever its submit quoted.
        await self._update(
            index,
            "state = 'failed', error = ?, may_be_billed = ?, "
            "cost = CASE WHEN ? = 0 AND cost IS NOT NULL THEN 0 ELSE cost END",
            (reason, int(may_be_billed), int(may_be_billed)),
            critical=True,
        )

    async def mark_invalid(self, reasons: Iterable[tuple[int, str]]) -> int:
        """Fail pending items whose input breaks a rule, as not billed; return how many. Durable.

        ``reasons`` holds ``(index, reason)`` pairs; items not pending are left alone.
        """
        params = [(reason, self._clock.time(), index) for index, reason in reasons]

        def work(conn: sqlite3.Connection) -> int:
            self._begin(conn)
            cursor = conn.executemany(
                "UPDATE items SET state = 'failed', error = ?, may_be_billed = 0, updated_at = ? "
                "WHERE idx = ? AND state = 'pending'",
                params,
            )
            self._commit(conn)
            return cursor.rowcount

        return await self._run(work, shield=True) if params else 0

    async def mark_interrupted_submits(self) -> int:
        """Fail every item left in ``submitting`` as possibly billed; return how many.

        A resumed run calls this first: such a submit may have created a task whose id
        was never recorded, so it is reported, not replayed.
        """
        return await self._update_where(
            "state = 'failed', error = ?, may_be_billed = 1",
            "state = 'submitting'",
            (INTERRUPTED_SUBMIT,),
        )

    async def reset(self, index: int) -> None:
        """Put item ``index`` back to pending for a new attempt (``--retry-*``). Durable.

        Its task id and result are forgotten; their cost still counts in :meth:`spent`.
        """
        await self._update(index, RESET, (), critical=True)

    async def reset_failed(self, *, ambiguous: bool) -> int:
        """Reset failed items to pending and return how many.

        ``ambiguous=True`` resets only the possibly billed submits without a task id
        (``--retry-ambiguous``); ``ambiguous=False`` resets every other failure
        (``--retry-failed``).
        """
        where = "state = 'failed' AND may_be_billed = 1 AND task_id IS NULL"
        if not ambiguous:
            where = f"state = 'failed' AND NOT ({where})"
        return await self._update_where(RESET, where, ())

    async def _update(
        self, index: int, assignments: str, params: tuple[Any, ...], *, critical: bool = False
    ) -> None:
        sql = f"UPDATE items SET {assignments}, updated_at = ? WHERE idx = ?"  # noqa: S608

        def work(conn: sqlite3.Connection) -> None:
            if not critical:
                self._begin(conn)
            cursor = conn.execute(sql, (*params, self._clock.time(), index))
            if cursor.rowcount == 0:
                raise LedgerError(f"item {index} is not in the ledger")
            if critical or self._due():
                self._commit(conn)

        await self._run(work, shield=critical)

    async def _update_where(self, assignments: str, where: str, params: tuple[Any, ...]) -> int:
        sql = f"UPDATE items SET {assignments}, updated_at = ? WHERE {where}"  # noqa: S608

        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(sql, (*params, self._clock.time()))
            self._commit(conn)
            return cursor.rowcount

        return await self._run(work, shield=True)

    def _begin(self, conn: sqlite3.Connection) -> None:
        if not self._in_tx:
            conn.execute("BEGIN")
            self._in_tx = True
            self._tx_started = self._clock.monotonic()
        self._uncommitted += 1

    def _due(self) -> bool:
        elapsed = self._clock.monotonic() - self._tx_started
        return self._uncommitted >= self._commit_every or elapsed >= self._commit_interval

    def _commit(self, conn: sqlite3.Connection) -> None:
        # Without an open batch a statement has already committed itself (autocommit).
        if self._in_tx:
            conn.execute("COMMIT")
            self._in_tx = False
            self._uncommitted = 0
