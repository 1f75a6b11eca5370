"""What ``AsyncFlux.statistics()`` returns: one frozen snapshot of every component."""

from __future__ import annotations

from dataclasses import dataclass

from ._engine._download import DownloaderStatistics
from ._engine._limits import LimiterStatistics
from ._engine._scheduler import SchedulerStatistics
from ._web._events import flatten_statistics
from ._web._orphans import OrphanStatistics
from ._web._webhook_app import WebhookReceiverStatistics

__all__ = ["ClientStatistics"]


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """Snapshots of the client's limiter, scheduler and downloader (webhooks: when on)."""

    limiter: LimiterStatistics
    scheduler: SchedulerStatistics
    downloader: DownloaderStatistics
    webhooks: WebhookReceiverStatistics | None = None
    orphans: OrphanStatistics | None = None

    def as_dict(self) -> dict[str, float]:
        """Return every number as a flat ``{"limiter.in_flight": 3, ...}`` dict, for metrics."""
        return flatten_statistics(self)
