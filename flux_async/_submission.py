"""One submission under the active-task limit: take a slot, send, and retry only when safe.

Money is at stake here. A 429 and a refused connection created nothing and are retried;
an ambiguous failure (500/502/504, a timeout or a drop after sending) may have created a
billed task and is replayed only when the user opted in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._core._backoff import compute_backoff
from ._core._clock import Clock
from ._engine._limits import ActiveTaskLimiter, Slot
from ._errors import (
    AmbiguousSubmitError,
    ConnectError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)
from ._providers import Provider
from ._request._models import Task
from ._request._requests import BaseRequest

__all__ = ["Submitter"]

logger = logging.getLogger("flux_async")


class Submitter:
    """Submit requests through ``limiter`` with the client's retry rules.

    ``check_accepting`` is called before every attempt and raises when the client is
    closing, so nothing is paid for after ``aclose()`` began.
    """

    def __init__(
        self,
        limiter: ActiveTaskLimiter,
        *,
        clock: Clock,
        check_accepting: Callable[[], None],
        retry_ambiguous: bool,
        rate_limit_timeout: float,
        max_retries: int,
    ) -> None:
        self._limiter = limiter
        self._clock = clock
        self._check_accepting = check_accepting
        self._retry_ambiguous = retry_ambiguous
        self._rate_limit_timeout = rate_limit_timeout
        self._max_retries = max_retries

    async def submit(self, provider: Provider, req: BaseRequest) -> tuple[Task, Slot]:
        """Take a slot and submit ``req``; return the task and the (accepted) slot it holds.

        A 429 created nothing: the slot goes back (the limiter's window drops to what the
        server accepted) and the submit waits for one of our own tasks to end, or for
        the fallback timer, whichever comes first, then goes again at the head of the
        queue, within ``rate_limit_timeout``. The slot is released if this raises.
        """
        started = self._clock.monotonic()
        slot = await self._limiter.acquire(req.model)
        attempt = refusals = 0
        try:
            while True:
                self._check_accepting()
                try:
                    task = await provider.submit(req)
                except RateLimitError as exc:
                    fallback = self._limiter.rate_limited(
                        slot, attempt=refusals, retry_after=exc.retry_after
                    )
                    refusals += 1
                    if self._clock.monotonic() - started + fallback > self._rate_limit_timeout:
                        raise
                    logger.debug("submit refused with 429; waiting for a slot (%s)", exc)
                    if slot.released:
                        slot = await self._limiter.acquire(req.model, fallback=fallback)
                    else:  # a fixed window: keep the slot and wait the delay out
                        await self._clock.sleep(fallback)
                    continue
                except (ConnectError, ServerError, RequestTimeoutError) as exc:
                    # Nothing reached the server (no connection, 503 at the door): retry.
                    if attempt >= self._max_retries:
                        raise
                    delay = compute_backoff(attempt, base=1.0, cap=30.0)
                    logger.info("submit not delivered (%s); retrying in %.1f s", exc, delay)
                except AmbiguousSubmitError as exc:
                    if not self._retry_ambiguous or attempt >= self._max_retries:
                        raise
                    delay = compute_backoff(attempt, base=1.0, cap=30.0)
                    logger.warning("submit may have been billed (%s); retrying as asked", exc)
                else:
                    slot.accepted()
                    return task, slot
                attempt += 1
                await self._clock.sleep(delay)
        except BaseException:
            slot.release()
            raise

    def __repr__(self) -> str:
        return (
            f"Submitter(retry_ambiguous={self._retry_ambiguous}, "
            f"rate_limit_timeout={self._rate_limit_timeout}, max_retries={self._max_retries})"
        )
