"""What a batch may spend: price estimates per model, and the book of credits spent.

A submit reserves its estimate in the :class:`CostBook` before it goes out and is
refused when the reservation would take the spend past ``--max-cost``; the server's
``cost`` then replaces the estimate (``_batch_run`` drives this).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .._request._requests import BaseRequest

__all__ = ["COST_ESTIMATES", "CostBook", "estimate_cost"]

#: Credits (1 credit = US$0.01) assumed for a submit before the server has priced one of
#: that model in this run: (first megapixel, each further started megapixel, each
#: reference image). Rounded up from BFL's price list; the server's ``cost`` replaces
#: them as soon as it is seen.
COST_ESTIMATES: Mapping[str, tuple[float, float, float]] = {
    "flux-2-pro": (3.0, 1.5, 1.5),
    "flux-2-pro-preview": (3.0, 1.5, 1.5),
    "flux-2-max": (7.0, 3.0, 3.0),
    "flux-2-flex": (6.0, 6.0, 6.0),
    "flux-2-klein-4b": (1.5, 1.0, 1.0),
    "flux-2-klein-9b": (2.0, 1.5, 1.5),
    "flux-2-klein-9b-preview": (2.0, 1.5, 1.5),
    "flux-kontext-pro": (4.0, 0.0, 0.0),
    "flux-kontext-max": (8.0, 0.0, 0.0),
    "flux-pro-1.1": (4.0, 0.0, 0.0),
    "flux-pro-1.1-ultra": (6.0, 0.0, 0.0),
    "flux-dev": (2.5, 0.0, 0.0),
    "flux-pro-1.0-fill": (5.0, 0.0, 0.0),
    "flux-pro-1.0-expand": (5.0, 0.0, 0.0),
}
_UNKNOWN_MODEL_ESTIMATE = 10.0


def estimate_cost(request: BaseRequest) -> float:
    """Return the credits ``request`` is assumed to cost from :data:`COST_ESTIMATES`."""
    rates = COST_ESTIMATES.get(request.model)
    if rates is None:
        return _UNKNOWN_MODEL_ESTIMATE
    first, further, per_image = rates
    width = getattr(request, "width", None) or 1024
    height = getattr(request, "height", None) or 1024
    megapixels = max(1, math.ceil(width * height / (1024 * 1024)))
    images = sum(1 for name in request.reference_fields if getattr(request, name, None))
    return first + further * (megapixels - 1) + per_image * images


class CostBook:
    """Credits spent and reserved against an optional budget (``limit``, in credits).

    A submit reserves its estimate (the highest cost seen for its model so far, else
    :func:`estimate_cost`) and is refused when ``spent + reserved + estimate`` would
    exceed the limit; the server's ``cost`` then replaces the estimate.
    """

    def __init__(self, limit: float | None, spent: float) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = 0.0
        self._seen: dict[str, float] = {}

    def estimate(self, request: BaseRequest) -> float:
        """Return what ``request`` is expected to cost, in credits."""
        seen = self._seen.get(request.model)
        return seen if seen is not None else estimate_cost(request)

    def reserve(self, amount: float) -> bool:
        """Reserve ``amount`` credits; False (nothing reserved) when the limit forbids it."""
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-9:
            return False
        self.reserved += amount
        return True

    def settle(self, model: str, reserved: float, cost: float | None, *, billed: bool) -> None:
        """Replace a reservation with what was billed (``cost``, else the reservation)."""
        self.reserved = max(self.reserved - reserved, 0.0)
        if billed:
            self.spent += cost if cost is not None else reserved
        if cost is not None:
            self._seen[model] = max(cost, self._seen.get(model, 0.0))
