"""Where a fleet meets: the Redis connection, the fleet's identity, and bounded calls.

Processes with the same coordinator, provider and API key form one fleet. The key never
goes to Redis: the fleet is named by ``HMAC-SHA256(key=FLEET_DOMAIN, msg=provider NUL
api key)`` (hex, first 32 characters), so two fleets on one Redis never share a slot and
reading Redis reveals no key.

Every call to Redis is bounded by ``timeout`` seconds (redis-py's socket timeouts and an
outer deadline); a failure or a timeout raises
:class:`~flux_async._errors.CoordinatorError`, which the limiter answers by running on
its local share of the cap (see ``limiter``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio

from .._core._clock import Clock
from .._errors import ConfigurationError, CoordinatorError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["COORDINATOR_ENV", "FLEET_DOMAIN", "Coordinator", "FleetSession", "fleet_id"]

COORDINATOR_ENV: Final = "FLUX_ASYNC_COORDINATOR"
FLEET_DOMAIN: Final = b"flux-async fleet id v1"
_SCHEMES: Final = ("redis://", "rediss://", "unix://")
# How many call timeouts a call may wait for its turn among the process's connections.
_QUEUE_TIMEOUTS: Final = 10


def fleet_id(provider: str, api_key: str) -> str:
    """Return the fleet's name for ``provider`` and ``api_key`` (a keyed hash, not the key)."""
    message = provider.encode() + b"\0" + api_key.encode("utf-8", "surrogatepass")
    return hmac.new(FLEET_DOMAIN, message, hashlib.sha256).hexdigest()[:32]


class Coordinator:
    """A Redis URL (``redis://``, ``rediss://``) or a ``redis.asyncio.Redis``, and timings.

    ``heartbeat``: seconds between a process's heartbeats; ``ttl``: seconds without one
    after which a process is dead and its tasks are adopted; ``timeout``: the bound on
    every Redis call; ``pump_interval``: seconds between looks at the shared queue while
    this process has submits waiting for a slot; ``connections``: the most calls this
    process has in flight to Redis at once (the others wait their turn, up to ten
    ``timeout``; the timeout counts from the turn).
    """

    def __init__(
        self,
        redis: str | Redis,
        *,
        heartbeat: float = 2.0,
        ttl: float = 10.0,
        timeout: float = 2.0,
        pump_interval: float = 0.05,
        connections: int = 16,
    ) -> None:
        if isinstance(redis, str) and not redis.startswith(_SCHEMES):
            raise ConfigurationError("coordinator must be a redis:// or rediss:// URL")
        if not 0 < heartbeat < ttl or timeout <= 0 or pump_interval <= 0 or connections < 2:
            raise ConfigurationError(
                "need 0 < heartbeat < ttl, timeout > 0, pump_interval > 0, connections >= 2"
            )
        self.redis = redis
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.timeout = timeout
        self.pump_interval = pump_interval
        self.connections = connections

    @property
    def stale_ms(self) -> int:
        """Milliseconds without a heartbeat after which a process is granted no slot.

        Well before ``ttl`` declares it dead (a killed process would otherwise take
        every slot freed meanwhile), yet 2.5 heartbeats: a slow beat is not a death.
        """
        return int(max(2.5 * self.heartbeat, self.ttl / 2) * 1000)

    @classmethod
    def resolve(cls, value: str | Redis | Coordinator | None) -> Coordinator | None:
        """Return the coordinator for ``value``, else from ``FLUX_ASYNC_COORDINATOR``."""
        if value is None:
            value = os.environ.get(COORDINATOR_ENV) or None
        if value is None or isinstance(value, Coordinator):
            return value
        return cls(value)

    def __repr__(self) -> str:
        where = _redacted(self.redis) if isinstance(self.redis, str) else "<Redis client>"
        return f"Coordinator({where!r}, heartbeat={self.heartbeat}, ttl={self.ttl})"


def _redacted(url: str) -> str:
    """Return ``url`` without a password (``redis://:secret@host`` -> ``redis://***@host``)."""
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}://{rest}"


class FleetSession:
    """One process's membership in a fleet: its owner id, connection and scripts."""

    def __init__(
        self, coordinator: Coordinator, *, provider: str, api_key: str, clock: Clock
    ) -> None:
        self.coordinator = coordinator
        self.clock = clock
        self.prefix = f"flux_async:{{{fleet_id(provider, api_key)}}}:"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._redis: Any = None
        self._own_connection = False
        self._scripts: dict[str, Any] = {}
        self._tickets = 0
        # At most ``connections`` calls at once; the rest queue here, in this process,
        # so that waiting for a turn is never mistaken for Redis being slow.
        self._gate = anyio.Semaphore(coordinator.connections)
        # As many again for task records: a record's write must not queue behind the
        # process's other calls (a kill before it is sent loses a paid task).
        self._record_gate = anyio.Semaphore(coordinator.connections)

    async def open(self) -> None:
        """Connect (lazily: nothing is sent yet, so an absent Redis does not stop us)."""
        target = self.coordinator.redis
        if isinstance(target, str):
            try:
                from redis.asyncio import BlockingConnectionPool, Redis
            except ImportError as exc:  # pragma: no cover - depends on the installation
                message = "a coordinator needs redis-py: pip install 'flux-async[redis]'"
                raise ConfigurationError(message) from exc
            timeout = self.coordinator.timeout
            # A bounded pool: hundreds of submits queueing at once must not open
            # hundreds of connections, nor fail (the plain pool raises
            # MaxConnectionsError past 100, which read as Redis lost). Calls are gated
            # to ``connections`` (see _bounded), task records' writes to as many again;
            # one more for the webhook subscription.
            pool = BlockingConnectionPool.from_url(
                target,
                max_connections=2 * self.coordinator.connections + 1,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                decode_responses=True,
                retry_on_timeout=False,
            )
            self._redis = Redis(connection_pool=pool)
            self._own_connection = True
        else:
            self._redis = target

    async def aclose(self) -> None:
        if self._own_connection and self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)  # the pool is ours too
        self._redis = None

    def new_ticket(self) -> str:
        """Return a fleet-unique ticket (it becomes the lease id when granted)."""
        self._tickets += 1
        return f"{self.owner}#{self._tickets}"

    async def script(self, source: str, *args: str | int | float) -> Any:
        """Run a Lua script from ``scripts`` with ``ARGV = prefix, now (ms), *args``, bounded."""
        runner = self._scripts.get(source)
        if runner is None:
            runner = self._scripts[source] = self._client().register_script(source)
        now = int(self.clock.time() * 1000)
        return await self._bounded(lambda: runner(keys=[], args=[self.prefix, now, *args]))

    async def command(self, *args: str | int | float) -> Any:
        """Run one plain Redis command, bounded."""
        client = self._client()
        return await self._bounded(lambda: client.execute_command(*args))

    async def pipeline(
        self, commands: Sequence[Sequence[str | int | float]], *, record: bool = False
    ) -> list[Any]:
        """Run ``commands`` in one MULTI/EXEC transaction, bounded.

        ``record``: a task record's write, which takes its turn among the connections
        kept for records (``connections`` more), not behind the process's other calls.
        """
        client = self._client()

        async def run() -> list[Any]:
            pipe = client.pipeline(transaction=True)
            for args in commands:
                pipe.execute_command(*args)
            result: list[Any] = await pipe.execute()
            return result

        done: list[Any] = await self._bounded(run, record=record)
        return done

    async def subscribe(self, channel: str) -> Any:
        """Return a redis-py PubSub subscribed to ``channel`` (bounded); the caller closes it."""
        pubsub = self._client().pubsub()
        await self._bounded(lambda: pubsub.subscribe(channel))
        return pubsub

    def _client(self) -> Any:
        if self._redis is None:
            raise CoordinatorError("the fleet coordinator is not connected")
        return self._redis

    async def _bounded(self, call: Callable[[], Awaitable[Any]], *, record: bool = False) -> Any:
        """Run ``call()`` within the timeout; once more on a broken pooled connection.

        The timeout counts from the call's turn: a crowd of calls queues for one of the
        ``connections`` first (bounded too, by ``_QUEUE_TIMEOUTS`` timeouts: a queue
        that does not move is Redis trouble as well). After Redis restarts, the pool's
        idle connections are dead and the first command on each fails at once; every
        script here may run twice without harm.
        """
        from redis.exceptions import ConnectionError as BrokenConnection
        from redis.exceptions import RedisError

        timeout = self.coordinator.timeout
        gate = self._record_gate if record else self._gate
        try:
            with anyio.fail_after(timeout * _QUEUE_TIMEOUTS):
                await gate.acquire()
        except TimeoutError as exc:
            raise CoordinatorError(
                "the fleet coordinator failed: its calls stopped moving"
            ) from exc
        try:
            with anyio.fail_after(timeout):
                try:
                    return await call()
                except BrokenConnection:
                    return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            raise CoordinatorError(f"the fleet coordinator failed: {type(exc).__name__}") from exc
        finally:
            gate.release()

    def __repr__(self) -> str:
        return f"FleetSession(owner={self.owner!r}, coordinator={self.coordinator!r})"
