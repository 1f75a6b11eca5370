"""The fleet's active-task limiter: slots are leases in Redis, granted in FIFO order.

:class:`FleetLimiter` is an :class:`~flux_async._engine._limits.ActiveTaskLimiter` whose slots
come from the fleet's shared queue (see ``scripts``): :meth:`acquire` puts a ticket in
the queue and waits until a pump (this process's or any other's) grants it. The local
counters keep counting every slot this process holds, whatever its origin, so that when
Redis is away the base class's own FIFO limiter takes over on the **local share**:

    share = max(1, floor(cap / live processes last seen))

Never exceeding the cap, the reasoning: each of the N processes the fleet last counted
takes new slots only while its own in-flight count (which includes every slot it held
before Redis went away) is below ``floor(cap / N)``, so together they hold at most
``N * floor(cap / N) <= cap`` new-or-old slots once the old ones drain. It holds while
the count N is right; a process that never saw Redis assumes N is unknown and uses 1
slot. A cap smaller than N still gives each process 1 slot (``max(1, ...)``): then the
server's 429s, which create nothing, are the limit.

When Redis answers again, the heartbeat re-registers every slot and task this process
holds (:meth:`rejoined`), and new submits go through the queue again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio
import anyio.abc

from .._core._backoff import compute_backoff
from .._core._clock import Clock
from .._engine._limits import ActiveTaskLimiter, LimiterStatistics, Slot
from .._errors import CoordinatorError
from . import scripts
from .coordinator import FleetSession

__all__ = ["FleetLimiter", "FleetSlot"]

logger = logging.getLogger("flux_async")


class FleetSlot(Slot):
    """A slot with its lease id; ``remote`` once Redis knows the lease."""

    __slots__ = ("lease", "refused", "remote")

    def __init__(self, limiter: FleetLimiter, model: str, lease: str, *, remote: bool) -> None:
        super().__init__(limiter, model)
        self.lease = lease
        self.remote = remote
        self.refused = False


class _Ticket:
    __slots__ = ("event", "local", "model", "slot")

    def __init__(self, model: str) -> None:
        self.model = model
        self.event = anyio.Event()
        self.slot: FleetSlot | None = None
        self.local = False  # woken because Redis went away: take a local slot instead


class FleetLimiter(ActiveTaskLimiter):
    """Bound the fleet's tasks in flight through Redis; fall back to a local share."""

    def __init__(
        self,
        limit: int,
        session: FleetSession,
        *,
        per_model: Mapping[str, int] | None = None,
        clock: Clock | None = None,
        quiet_period: float = 30.0,
        on_change: Callable[[bool, int, int], None] | None = None,
    ) -> None:
        super().__init__(limit, per_model=per_model, clock=clock)
        self.session = session
        self._quiet_ms = int(quiet_period * 1000)
        self._tickets: dict[str, _Ticket] = {}
        self.held: dict[str, FleetSlot] = {}
        self.connected = False
        self._lost_announced = False
        self.fleet_size = 0  # live processes last seen; 0: never seen
        self.lock = anyio.Lock()  # one pump, beat or adoption at a time
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._on_change = on_change
        self.fleet_window = limit
        self.fleet_in_use = 0
        # Tickets in the fleet's queue (every process's), as the last reply said.
        self.fleet_queued = 0
        # Until Redis answers, the share of a fleet of unknown size: one slot.
        self.set_window(1)

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        """Attach to the client's task group (background releases, the pump)."""
        self._tg = tg

    @property
    def share(self) -> int:
        """Return the slots this process may hold while Redis is away."""
        return max(1, self.limit // self.fleet_size) if self.fleet_size else 1

    @property
    def waiting(self) -> int:
        """Return the submissions waiting for a slot that this process's polls free.

        In a fleet a slot this process frees goes to the head of the shared queue,
        whichever process queued there: the polling regime must see the fleet's waiters
        (the queue's length as the last pump, release or heartbeat saw it), not only
        this process's. While Redis is away, the local limiter's own.
        """
        local = super().waiting
        if not self.connected:
            return local
        return local + max(len(self._tickets), self.fleet_queued)

    # -- connection state ---------------------------------------------------------------

    def lost(self, exc: CoordinatorError) -> None:
        """Redis failed: run on the local share, and say so once."""
        announce = self.connected or not self._lost_announced
        self.connected = False
        self._lost_announced = True
        self.set_window(self.share)
        for ticket in self._tickets.values():
            ticket.local = True
            ticket.event.set()
        self._tickets.clear()
        if announce:
            logger.warning(
                "fleet coordinator lost (%s); running on %d of %d slots until it is back",
                exc,
                self.share,
                self.limit,
            )
            if self._on_change is not None:
                self._on_change(True, self.fleet_size, self.share)

    def rejoined(self, fleet_size: int) -> None:
        """Redis answers and knows our slots again: submits go through the queue.

        Right after an outage the others may not have rejoined yet: the fleet's size is
        then not allowed to shrink (a smaller count would make a larger local share).
        """
        if self.connected:
            self.fleet_size = max(1, fleet_size)
            return
        self.fleet_size = max(1, fleet_size, self.fleet_size)
        self.connected = True
        if not self._lost_announced:
            return  # the first contact: nothing to announce
        self._lost_announced = False
        logger.warning("fleet coordinator is back; %d process(es) in the fleet", fleet_size)
        if self._on_change is not None:
            self._on_change(False, self.fleet_size, self.share)

    def lease_list(self) -> list[str]:
        """Return ``lease \\t model`` for every slot held, for the heartbeat."""
        return [f"{lease}\t{slot.model}" for lease, slot in self.held.items()]

    # -- taking slots -------------------------------------------------------------------

    def _slot(self, model: str, *, probe: bool = False) -> Slot:
        # A slot from the local limiter (Redis away, or a resumed task): a lease Redis
        # learns about now if it can, else at the next heartbeat.
        slot = FleetSlot(self, model, self.session.new_ticket(), remote=False)
        self.held[slot.lease] = slot
        self.post(self._occupy, slot)
        return slot

    async def _occupy(self, slot: FleetSlot) -> None:
        if not self.connected or slot.released:
            return
        await self.session.script(scripts.OCCUPY, self.session.owner, f"{slot.lease}\t{slot.model}")
        slot.remote = True

    async def acquire(self, model: str, *, fallback: float | None = None) -> Slot:
        """Wait for a fleet slot for ``model``, in the fleet's arrival order.

        ``fallback`` marks a submit refused with 429: its ticket goes to the head of the
        queue but waits for a task of the fleet to end, or ``fallback`` seconds.
        """
        if not self.connected:
            return await super().acquire(model, fallback=fallback)
        name = self.session.new_ticket()
        ticket = _Ticket(model)
        self._tickets[name] = ticket
        try:
            await self.session.script(
                scripts.ENQUEUE,
                self.session.owner,
                name,
                model,
                self.model_limit(model),
                1 if fallback is not None else 0,
            )
            self._wake.set()
            async with anyio.create_task_group() as timer:
                if fallback is not None:
                    timer.start_soon(self._unblock_after, name, fallback)
                await ticket.event.wait()
                timer.cancel_scope.cancel()
        except CoordinatorError as exc:
            self._tickets.pop(name, None)
            self.lost(exc)
            return await super().acquire(model, fallback=fallback)
        except BaseException:
            self._tickets.pop(name, None)
            if ticket.slot is not None:
                ticket.slot.release()
            else:
                self.post(self._cancel, name)
            raise
        if ticket.local or ticket.slot is None:
            return await super().acquire(model, fallback=fallback)
        return ticket.slot

    async def _unblock_after(self, name: str, delay: float) -> None:
        await self._clock.sleep(delay)
        try:
            await self.session.script(scripts.CANCEL, name, 1)
        except CoordinatorError as exc:
            self.lost(exc)

    async def _cancel(self, name: str) -> None:
        await self.session.script(scripts.CANCEL, name, 0)

    async def pump(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Collect this process's grants while it has tickets waiting (runs until cancelled)."""
        task_status.started()
        interval = self.session.coordinator.pump_interval
        while True:
            if not self._tickets:
                self._wake = anyio.Event()
                await self._wake.wait()
            try:
                async with self.lock:
                    await self._pump_once()
            except CoordinatorError as exc:
                self.lost(exc)
            await self._clock.sleep(interval)

    async def _pump_once(self) -> None:
        reply = await self.session.script(
            scripts.PUMP, self.session.owner, self.limit, self.session.coordinator.stale_ms
        )
        known, used, window, queued, *granted = reply
        self.fleet_in_use, self.fleet_window = int(used), int(window)
        self.fleet_queued = int(queued)
        for name in granted:
            ticket = self._tickets.pop(name, None)
            if ticket is None:
                # Its waiter left (cancelled, or fell back to the local share): give it back.
                await self.session.script(scripts.RELEASE, name, 0, self.limit, self._quiet_ms)
                continue
            slot = FleetSlot(self, ticket.model, name, remote=True)
            self._count_in(ticket.model)
            self.held[name] = slot
            ticket.slot = slot
            ticket.event.set()
        if not int(known):
            # Redis forgot us (restarted, or we were taken for dead): the heartbeat
            # rejoins; meanwhile our tickets were dropped, so wake them to queue again.
            self.lost(CoordinatorError("the fleet coordinator no longer knows this process"))

    def _count_in(self, model: str) -> None:
        self._in_flight += 1
        self._by_model[model] += 1
        self._acquired_total += 1

    def adopted(self, lease: str, model: str) -> FleetSlot:
        """Return the slot of a task adopted from a dead process (its lease is ours now)."""
        slot = FleetSlot(self, model, lease, remote=True)
        slot._accepted = True
        self._count_in(model)
        self.held[lease] = slot
        return slot

    # -- giving slots back --------------------------------------------------------------

    def rate_limited(self, slot: Slot, *, attempt: int, retry_after: float | None) -> float:
        """Take a 429: the shared window is cut and the slot goes back (see ``REFUSED``)."""
        if not isinstance(slot, FleetSlot) or not slot.remote or not self.connected:
            return super().rate_limited(slot, attempt=attempt, retry_after=retry_after)
        self._rate_limited_total += 1
        slot.refused = True
        slot.release()
        if retry_after is not None:
            return max(0.0, retry_after)
        return compute_backoff(attempt, base=0.5, cap=10.0)

    def _accepted(self, slot: Slot) -> None:
        super()._accepted(slot)
        if isinstance(slot, FleetSlot) and slot.remote:
            self.post(self._remote_accepted, slot)

    async def _remote_accepted(self, slot: FleetSlot) -> None:
        await self.session.script(scripts.ACCEPTED, slot.lease, self.limit, self._quiet_ms)

    def _release(self, slot: Slot) -> None:
        ended = slot._accepted
        super()._release(slot)
        if isinstance(slot, FleetSlot):
            self.held.pop(slot.lease, None)
            self.post(self._remote_release, slot, ended)

    async def _remote_release(self, slot: FleetSlot, ended: bool) -> None:
        if slot.refused:
            await self.session.script(scripts.REFUSED, slot.lease, self.limit)
        else:
            _held, queued = await self.session.script(
                scripts.RELEASE, slot.lease, int(ended), self.limit, self._quiet_ms
            )
            self.fleet_queued = int(queued)
        self._wake.set()

    def post(self, op: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Run ``op(*args)`` in the background; False when the client is stopping.

        A Redis failure in ``op`` puts the limiter on its local share; the heartbeat heals
        what the op would have written.
        """
        if self._tg is None or self._tg.cancel_scope.cancel_called:
            return False
        self._tg.start_soon(self._run_op, op, args)
        return True

    async def _run_op(self, op: Callable[..., Awaitable[object]], args: tuple[object, ...]) -> None:
        try:
            await op(*args)
        except CoordinatorError as exc:
            self.lost(exc)

    def statistics(self) -> LimiterStatistics:
        """Return the local counters, with the fleet's window while connected."""
        local = super().statistics()
        if not self.connected:
            return local
        return LimiterStatistics(
            limit=local.limit,
            window=self.fleet_window,
            in_flight=local.in_flight,
            waiting=local.waiting + len(self._tickets),
            in_flight_by_model=local.in_flight_by_model,
            acquired_total=local.acquired_total,
            rate_limited_total=local.rate_limited_total,
            probes=local.probes,
            window_raises=local.window_raises,
        )

    def __repr__(self) -> str:
        return (
            f"FleetLimiter(limit={self.limit}, connected={self.connected}, "
            f"fleet_size={self.fleet_size}, in_flight={self.in_flight})"
        )
