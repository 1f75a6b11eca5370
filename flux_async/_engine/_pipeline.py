"""A pipeline, not workers: an item holds a submit place only until its task is Ready.

``generate_many`` runs each item as submit → wait → download. If the item kept its place
among the ``concurrency`` in progress through the download, then with large images on a
slow link the next items would not be submitted while the account's slots sit idle.
:class:`Stages` gives each item a :class:`Ticket` holding two places: one of ``limit``
*submit* places (from admission until the task is Ready or failed), and one of
``limit + backlog`` *alive* places (until its outcome is out). So submitting is gated
only by the active-task limiter and the feed, downloads (in the downloader's own
deadline-first lanes) never hold back the next submit, and at most ``backlog`` finished
tasks wait for their download: memory stays bounded whatever the link's speed.
"""

from __future__ import annotations

import anyio

__all__ = ["Stages", "Ticket"]


class Stages:
    """Admit items: at most ``limit`` before Ready, at most ``limit + backlog`` in all."""

    def __init__(self, limit: int, backlog: int) -> None:
        if limit < 1 or backlog < 0:
            raise ValueError("need limit >= 1 and backlog >= 0")
        self._submit = anyio.Semaphore(limit)
        self._alive = anyio.Semaphore(limit + backlog)

    async def admit(self) -> Ticket:
        """Wait for both places and return the ticket holding them."""
        await self._alive.acquire()
        try:
            # No second checkpoint when a place is free: items start as fast as before
            # (one yield each), so a burst of submits stays a burst.
            try:
                self._submit.acquire_nowait()
            except anyio.WouldBlock:
                await self._submit.acquire()
        except BaseException:
            self._alive.release()
            raise
        return Ticket(self._submit, self._alive)


class Ticket:
    """One item's places; :meth:`ready` gives back the submit place, :meth:`close` both."""

    __slots__ = ("_alive", "_submit")

    def __init__(self, submit: anyio.Semaphore | None, alive: anyio.Semaphore | None) -> None:
        self._submit = submit
        self._alive = alive

    def ready(self) -> None:
        """The task is Ready (its download comes next): let the next item submit."""
        if self._submit is not None:
            self._submit.release()
            self._submit = None

    def close(self) -> None:
        """The item is finished (saved or failed): give back every place it holds."""
        self.ready()
        if self._alive is not None:
            self._alive.release()
            self._alive = None

    @property
    def submitting(self) -> bool:
        """Whether the ticket still holds its submit place."""
        return self._submit is not None
