"""Webhooks reach their task: a delivery for another process's task is handed to its owner.

One webhook URL serves the whole fleet, so a delivery lands on any worker. The receiving
worker verifies it as always (the secret must be the fleet's: give every worker the same
``webhook_secret``); when the task is not one it waits for, :meth:`WebhookRouter.forward`
looks up the task's owner in its record and publishes the task id on the owner's channel
(``<prefix>hook:<owner>``). The owner's :meth:`WebhookRouter.listen` loop hands the id to
its receiver, which confirms the ending by one poll of its own, as for a delivery it got
itself: nothing in the delivery is trusted beyond "look at this task now".

Pub/sub is at-most-once: a message lost while the owner is reconnecting costs nothing
but time, as the owner's fallback polling finds the ending anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .._errors import CoordinatorError
from .coordinator import FleetSession

__all__ = ["WebhookRouter"]

logger = logging.getLogger("flux_async")


class WebhookRouter:
    """Forward deliveries to their owners; receive the ones forwarded to this process."""

    def __init__(self, session: FleetSession, *, retry: float) -> None:
        self._session = session
        self._retry = retry
        self.forwarded = 0
        self.received = 0

    def _channel(self, owner: str) -> str:
        return f"{self._session.prefix}hook:{owner}"

    async def forward(self, task_id: str) -> bool:
        """Hand a verified delivery for ``task_id`` to its owner; False if there is none."""
        try:
            owner = await self._session.command(
                "HGET", f"{self._session.prefix}task:{task_id}", "owner"
            )
            if not owner or owner == self._session.owner:
                return False
            listeners = await self._session.command("PUBLISH", self._channel(owner), task_id)
        except CoordinatorError as exc:
            logger.info("webhook for task %s not forwarded: %s", task_id, exc)
            return False
        self.forwarded += 1
        return bool(listeners)

    async def listen(
        self,
        deliver: Callable[[str], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Pass each task id forwarded to this process to ``deliver``, until cancelled."""
        from redis.exceptions import RedisError

        started = False
        while True:
            pubsub: Any = None
            try:
                pubsub = await self._session.subscribe(self._channel(self._session.owner))
                if not started:
                    started = True
                    task_status.started()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and isinstance(message.get("data"), str):
                        self.received += 1
                        deliver(message["data"])
            except (CoordinatorError, RedisError, OSError) as exc:
                logger.debug("webhook channel lost (%s); subscribing again", exc)
            finally:
                if pubsub is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                        await pubsub.aclose()
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(self._retry)

    def __repr__(self) -> str:
        return f"WebhookRouter(forwarded={self.forwarded}, received={self.received})"
