"""Hybrid mode: tasks that expect a webhook are still polled, slowly, in case it never comes.

The scheduler asks one :class:`~flux_async._polling._policy.PollPolicy` for every task. A task
submitted with the client's webhook is registered under its usual key plus
:data:`WEBHOOK_SUFFIX`; :class:`HybridPolicy` polls those at the fallback cadence and
hands every other task, and every completion it learns from, to the policy it wraps.
"""

from __future__ import annotations

import random
from typing import Final

from ._policy import PollPolicy, PollState

__all__ = ["WEBHOOK_SUFFIX", "HybridPolicy"]

WEBHOOK_SUFFIX: Final = "#webhook"


class HybridPolicy:
    """Poll webhook tasks first at ``max(inner's first poll, fallback)``, then every
    ``fallback`` to ``2 * fallback`` seconds (uniform jitter, so they drift apart);
    delegate everything else to ``inner``.
    """

    def __init__(self, inner: PollPolicy, fallback: float, *, rng: random.Random | None = None):
        if fallback <= 0.0:
            raise ValueError("the webhook fallback interval must be > 0 seconds")
        self.inner = inner
        self.fallback = fallback
        self._rng = rng if rng is not None else random.Random()

    @staticmethod
    def is_webhook(key: str) -> bool:
        return key.endswith(WEBHOOK_SUFFIX)

    def first_delay(self, state: PollState, now: float) -> float:
        """Return seconds until the first poll: the fallback's, if the task awaits a webhook."""
        if not self.is_webhook(state.key):
            return self.inner.first_delay(state, now)
        plain = PollState(
            key=state.key.removesuffix(WEBHOOK_SUFFIX), submitted_at=state.submitted_at
        )
        elapsed = now - state.submitted_at
        return max(self.inner.first_delay(plain, now), self.fallback - elapsed, 0.0)

    def next_delay(self, state: PollState, now: float, *, progress: float | None) -> float:
        """Return seconds until the next poll after a Pending reply."""
        if not self.is_webhook(state.key):
            return self.inner.next_delay(state, now, progress=progress)
        state.record(now, progress)
        return self.fallback * (1.0 + self._rng.random())

    def observe_completion(
        self,
        key: str,
        duration: float,
        *,
        censored_at: float | None = None,
        state: PollState | None = None,
    ) -> None:
        """Teach the inner policy, under the task's usual key."""
        self.inner.observe_completion(
            key.removesuffix(WEBHOOK_SUFFIX), duration, censored_at=censored_at, state=state
        )

    def __repr__(self) -> str:
        return f"HybridPolicy({self.inner!r}, fallback={self.fallback})"
