"""The read side of the batch ledger, and the one door to its worker thread.

:class:`LedgerReads` holds the connection and runs every statement off the event loop
(:meth:`LedgerReads._run`); the queries here only read.
:class:`~flux_async._batching._ledger_writes.LedgerWrites` adds every write, and
:class:`~flux_async._batching._ledger.Ledger` the lifecycle.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncGenerator, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import anyio

from ._ledger_schema import COLUMNS, ItemState, LedgerError, LedgerFullError, LedgerItem

__all__ = ["LedgerReads"]

_T = TypeVar("_T")


class LedgerReads:
    """Queries of an open ledger; every call runs on one worker thread at a time."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._limiter = anyio.CapacityLimiter(1)
        self._full = False  # the disk filled up: every later SQLite error is that too

    async def meta(self, key: str) -> str | None:
        """Return the value stored under ``key`` by ``Ledger.set_meta`` (None: nothing)."""

        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(work)

    async def fingerprints(self, indices: Collection[int]) -> dict[int, str]:
        """Return the stored fingerprint of each of ``indices`` that is in the ledger."""
        marks = ",".join("?" * len(indices))
        sql = f"SELECT idx, fingerprint FROM items WHERE idx IN ({marks})"  # noqa: S608

        def work(conn: sqlite3.Connection) -> dict[int, str]:
            return dict(conn.execute(sql, list(indices)).fetchall())

        return await self._run(work) if indices else {}

    async def first_index_named(self, name: str) -> int | None:
        """Return the lowest index of an item named ``name``, ASCII case ignored (None: none).

        Case is ignored because two names differing only in case are one file on the
        file systems of macOS and Windows.
        """

        def work(conn: sqlite3.Connection) -> int | None:
            sql = "SELECT MIN(idx) FROM items WHERE name = ? COLLATE NOCASE"
            row = conn.execute(sql, (name,)).fetchone()
            return None if row[0] is None else int(row[0])

        return await self._run(work)

    async def count_from(self, index: int) -> int:
        """Return how many items have an index of ``index`` or more."""

        def work(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute("SELECT COUNT(*) FROM items WHERE idx >= ?", (index,)).fetchone()[0]
            )

        return await self._run(work)

    async def get(self, index: int) -> LedgerItem | None:
        """Return item ``index``'s row, or None when there is none."""

        def work(conn: sqlite3.Connection) -> LedgerItem | None:
            sql = f"SELECT {COLUMNS} FROM items WHERE idx = ?"  # noqa: S608
            row = conn.execute(sql, (index,)).fetchone()
            return None if row is None else LedgerItem.from_row(row)

        return await self._run(work)

    async def iter_items(
        self, states: Collection[ItemState] | None = None, *, batch: int = 500
    ) -> AsyncGenerator[LedgerItem, None]:
        """Yield items (only those in ``states`` if given) in index order, ``batch`` per query.

        Pages are fetched by index, so memory stays constant and rows updated while the
        iteration runs are seen in their newest state when their page is read.
        """
        wanted = [ItemState(s).value for s in states] if states is not None else []
        if states is not None and not wanted:
            return
        filt = f" AND state IN ({','.join('?' * len(wanted))})" if wanted else ""
        sql = f"SELECT {COLUMNS} FROM items WHERE idx > ?{filt} ORDER BY idx LIMIT ?"  # noqa: S608
        after = -1

        def page(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, (after, *wanted, batch)).fetchall()

        while True:
            rows = await self._run(page)
            for row in rows:
                yield LedgerItem.from_row(row)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    async def counts(self) -> dict[ItemState, int]:
        """Return how many items are in each state (every state present, zero included)."""

        def work(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            return conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()

        found = {ItemState(state): n for state, n in await self._run(work)}
        return {state: found.get(state, 0) for state in ItemState}

    async def ambiguous_count(self) -> int:
        """Return how many items failed possibly billed without a task id (see ``ambiguous``)."""

        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM items WHERE state = 'failed' AND may_be_billed = 1 "
                "AND task_id IS NULL"
            ).fetchone()
            return int(row[0])

        return await self._run(work)

    async def spent(self) -> float:
        """Return the credits spent: the cost of every task id recorded, earlier attempts too."""

        def work(conn: sqlite3.Connection) -> float:
            row = conn.execute(
                "SELECT COALESCE(SUM(prior_cost), 0) + "
                "COALESCE(SUM(CASE WHEN task_id IS NOT NULL THEN cost END), 0) FROM items"
            ).fetchone()
            return float(row[0])

        return await self._run(work)

    async def _run(self, work: Callable[[sqlite3.Connection], _T], *, shield: bool = False) -> _T:
        """Run ``work(conn)`` on the ledger's worker thread; shielded when it must not be lost."""

        def call() -> _T:
            conn = self._conn
            if conn is None:
                raise LedgerError(f"the ledger {self.path} is closed")
            try:
                return work(conn)
            except sqlite3.OperationalError as exc:
                # SQLITE_FULL rolls the statement (or the transaction) back; what follows
                # (a COMMIT with no transaction left) fails for the same reason.
                code = getattr(exc, "sqlite_errorcode", None)
                self._full = self._full or code == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
                if self._full:
                    raise LedgerFullError(self.path.parent, str(exc)) from exc
                raise

        if self._conn is None:
            raise LedgerError(f"the ledger {self.path} is closed")
        with anyio.CancelScope(shield=shield):
            result = await anyio.to_thread.run_sync(call, limiter=self._limiter)
        return result  # noqa: RET504 - outside the with: mypy cannot see a scope never swallows
