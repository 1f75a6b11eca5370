"""The write side of the batch ledger: items added, moved through their states, reset.

:class:`LedgerWrites` adds to :class:`~flux_async._batching._ledger_reads.LedgerReads`
every statement that changes an item, and the batching of the cheap ones (see the
durability rules in ``_ledger``): a critical write commits at once, shielded from
cancellation; ``ready`` and ``saved`` join an open transaction committed every
``commit_every`` updates or after ``commit_interval`` seconds.
:class:`~flux_async._batching._ledger.Ledger` adds the lifecycle and the run's notes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from .._core._clock import Clock
from ._ledger_reads import LedgerReads
from ._ledger_schema import RESET, AddReport, ItemState, LedgerError

__all__ = ["INTERRUPTED_SUBMIT", "LedgerWrites"]

INTERRUPTED_SUBMIT = (
    "the run stopped while this item was being submitted: a task may have been created and billed"
)


class LedgerWrites(LedgerReads):
    """Writes to an open ledger; every call runs on one worker thread at a time."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        clock: Clock,
        commit_every: int,
        commit_interval: float,
    ) -> None:
        super().__init__(path, conn)
        self._clock = clock
        self._commit_every = commit_every
        self._commit_interval = commit_interval
        # Touched only inside the worker thread, which the limiter serialises.
        self._in_tx = False
        self._uncommitted = 0
        self._tx_started = 0.0

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
