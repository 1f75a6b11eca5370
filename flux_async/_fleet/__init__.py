"""A fleet of processes sharing one account through Redis (docs/fleet.md).

Imported only when a client is given a coordinator; redis-py (the ``redis`` extra) is
imported only when the fleet connects.
"""

from __future__ import annotations

from .coordinator import COORDINATOR_ENV, FLEET_DOMAIN, Coordinator, fleet_id
from .fleet import Fleet, TaskRecord, adoption_target

__all__ = [
    "COORDINATOR_ENV",
    "FLEET_DOMAIN",
    "Coordinator",
    "Fleet",
    "TaskRecord",
    "adoption_target",
    "fleet_id",
]
