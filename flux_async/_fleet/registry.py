"""Every paid task of the fleet, recorded in Redis until its image is saved.

A task is registered as soon as its submit is accepted (``task:<id>``: id, polling URL,
model, provider, lease, owner, destination, deadline) and stays registered until its
image is saved (or, for a task submitted without a destination, until it ends). When an
owner stops heartbeating, one survivor claims its records atomically (``scripts.ADOPT``)
and sees each task to its end. The key never enters a record; a record expires on its own
``_RECORD_GRACE`` seconds after the task's deadline, so nothing piles up.

A submit returns once its record is written (or the write failed: bounded by the
coordinator's timeout, and then the heartbeat re-publishes it when Redis is back). The
write starts in the submit's own task as soon as the answer is parsed, on a connection
kept for records (``FleetSession.pipeline(record=True)``), never behind the process's
other calls.
The gap left: a process killed between the server creating the task and that write
being sent (the answer in flight, then a few event-loop turns; ``benchmarks/fleet.py``
measures the window) loses the task's record. BFL has no idempotency key and no way to list an
account's tasks, so nobody can find such a task again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio

from .._core._clock import Clock
from .._errors import CoordinatorError
from .._request._models import Task
from . import scripts
from .coordinator import FleetSession
from .limiter import FleetLimiter

__all__ = ["TaskRecord", "TaskRegistry"]

logger = logging.getLogger("flux_async")

_RECORD_GRACE: Final = 3600  # seconds a record outlives its task's deadline

# ARGV: prefix, now, owner, then one JSON record per task: re-create each record Redis lacks.
_REPUBLISH: Final = r"""
local P, owner = ARGV[1], ARGV[3]
for i = 4, #ARGV do
  local r = cjson.decode(ARGV[i])
  local key = P .. 'task:' .. r.id
  if redis.call('EXISTS', key) == 0 then
    r.owner = owner
    for k, v in pairs(r) do redis.call('HSET', key, k, tostring(v)) end
    redis.call('EXPIREAT', key, tonumber(r.expires))
    redis.call('SADD', P .. 'owned:' .. owner, r.id)
  end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What Redis holds about one paid task (all that a survivor needs to finish it)."""

    id: str
    polling_url: str | None
    model: str
    provider: str
    lease: str | None
    dest: str | None
    output_format: str | None
    submitted_wall: float
    cost: float | None = None

    @classmethod
    def from_flat(cls, flat: list[str]) -> TaskRecord:
        """Build a record from Redis's flat ``HGETALL`` list."""
        data = dict(zip(flat[::2], flat[1::2], strict=True))
        return cls(
            id=data["id"],
            polling_url=data.get("polling_url") or None,
            model=data["model"],
            provider=data["provider"],
            lease=data.get("lease") or None,
            dest=data.get("dest") or None,
            output_format=data.get("output_format") or None,
            submitted_wall=float(data.get("submitted_wall") or 0.0),
            cost=float(data["cost"]) if data.get("cost") else None,
        )

    def task(self, clock: Clock) -> Task:
        """Return the task to poll, its submit time moved onto this process's clock."""
        age = max(0.0, clock.time() - self.submitted_wall)
        return Task(
            id=self.id,
            polling_url=self.polling_url,
            model=self.model,
            provider=self.provider,
            cost=self.cost,
            submitted_at=clock.monotonic() - age,
            output_format=self.output_format,
        )


class TaskRegistry:
    """This process's side of the task records: register, unregister, re-publish, adopt."""

    def __init__(
        self, session: FleetSession, limiter: FleetLimiter, *, clock: Clock, task_timeout: float
    ) -> None:
        self._session = session
        self._limiter = limiter
        self._clock = clock
        self._task_timeout = task_timeout
        self.local: dict[str, dict[str, str]] = {}
        self._written: dict[str, anyio.Event] = {}  # records not yet written
        self._writing: set[str] = set()
        self._deleting: set[str] = set()  # saved or ended: their records go

    def register(self, task: Task, lease: str | None, dest: Path | None) -> None:
        """Record ``task`` (fire-and-forget); ``dest`` is where its image should go."""
        now = self._clock.time()
        age = max(0.0, self._clock.monotonic() - task.submitted_at) if task.submitted_at else 0.0
        submitted = now - age
        record = {
            "id": task.id,
            "polling_url": task.polling_url or "",
            "model": task.model,
            "provider": task.provider,
            "lease": lease or "",
            "dest": str(dest.absolute()) if dest is not None else "",
            "output_format": task.output_format or "",
            "submitted_wall": repr(submitted),
            "cost": "" if task.cost is None else repr(task.cost),
            "expires": str(int(submitted + self._task_timeout + _RECORD_GRACE)),
        }
        self.local[task.id] = record
        self._written[task.id] = written = anyio.Event()
        if not self._limiter.post(self._write, task.id):
            del self._written[task.id]
            written.set()

    async def written(self, task_id: str) -> None:
        """Write ``task_id``'s record now, or wait for the write under way (bounded).

        A submit calls this before returning: the write starts here, in the submit's own
        task, rather than when the background one gets its turn (a kill before the
        write lands loses the paid task). Shielded: a caller that leaves meanwhile must
        not leave the task unrecorded.
        """
        if task_id in self._writing:
            event = self._written.get(task_id)
            if event is not None:
                await event.wait()
            return
        with anyio.CancelScope(shield=True):
            try:
                await self._write(task_id)
            except CoordinatorError as exc:
                self._limiter.lost(exc)

    async def _write(self, task_id: str) -> None:
        """Write the record once, whoever comes first: the submit or the background."""
        event = self._written.get(task_id)
        if event is None or task_id in self._writing:
            return
        self._writing.add(task_id)
        try:
            record = self.local.get(task_id)
            if record is not None:  # else unregistered before it was written
                await self._write_now(record)
        finally:
            self._writing.discard(task_id)
            if self._written.get(task_id) is event:  # not a later registration's
                del self._written[task_id]
            event.set()

    async def _write_now(self, record: dict[str, str]) -> None:
        key = self._session.prefix + "task:" + record["id"]
        owner = self._session.owner
        fields: list[str] = []
        for name, value in record.items():
            fields += [name, value]
        await self._session.pipeline(
            [
                ["HSET", key, *fields, "owner", owner],
                ["EXPIREAT", key, record["expires"]],
                ["SADD", self._session.prefix + "owned:" + owner, record["id"]],
            ],
            record=True,
        )

    def unregister(self, task_id: str) -> None:
        """Forget ``task_id``: its image is saved, or it ended without one."""
        if self.local.pop(task_id, None) is not None:
            # Not posted once the client is closing: a task dropped then may be unsaved,
            # and its record must survive for the fleet to adopt it. A posted delete the
            # close overtook before it ran is done by ``flush``.
            self._deleting.add(task_id)
            if not self._limiter.post(self._delete, task_id):
                self._deleting.discard(task_id)

    async def flush(self) -> None:
        """Delete the records whose delete has not run yet (the client closed first).

        Called before this process leaves the fleet: a record that outlived its saved
        image would be handed to a survivor, which would download it again.
        """
        for task_id in sorted(self._deleting):
            written = self._written.get(task_id)
            if written is not None and not written.is_set():
                # Its write never ran (the loops have stopped): nothing in Redis to drop.
                self._deleting.discard(task_id)
                continue
            await self._delete(task_id)

    async def _delete(self, task_id: str) -> None:
        if task_id not in self._deleting:
            return  # flushed already
        # A write still in flight on another connection could land after this delete
        # and leave a record nobody owns (handed to a survivor at our leave): wait for it.
        event = self._written.get(task_id)
        # Shielded: a close right after a save must not cancel the delete, or the record
        # outlives the image and the next process adopts and saves it again.
        with anyio.CancelScope(shield=True):
            if event is not None:
                await event.wait()
            prefix = self._session.prefix
            await self._session.pipeline(
                [
                    ["DEL", prefix + "task:" + task_id],
                    ["SREM", prefix + "owned:" + self._session.owner, task_id],
                ]
            )
            self._deleting.discard(task_id)

    async def republish(self) -> None:
        """Re-create the records Redis lost (it restarted); leave others' adoptions alone."""
        if self.local:
            records = [json.dumps(record) for record in self.local.values()]
            await self._session.script(_REPUBLISH, self._session.owner, *records)

    async def adopt(self, dead: str) -> list[TaskRecord]:
        """Claim ``dead``'s tasks if it is still dead and nobody claimed them first."""
        reply: list[Any] = await self._session.script(scripts.ADOPT, dead, self._session.owner)
        records = [TaskRecord.from_flat(flat) for flat in reply]
        if records:
            logger.warning(
                "adopted %d task(s) of a fleet process that stopped heartbeating",
                len(records),
                extra={"task_ids": [r.id for r in records]},
            )
        return records

    def __repr__(self) -> str:
        return f"TaskRegistry(local={len(self.local)})"
