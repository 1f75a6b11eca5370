"""A faithful fake of the BFL API for tests, benchmarks and ``flux-async --simulate``.

In process::

    sim = Simulator(clock=ManualClock())
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        ...

On loopback (needs the ``cli`` extra, for uvicorn)::

    async with serve(sim) as base_url:
        ...
"""

from __future__ import annotations

from .._clock import ManualClock, ScaledClock
from ._app import Simulator
from ._config import FAKE_API_KEY, KNOWN_MODELS, SimulatorConfig
from ._keys import KeySighting
from ._records import RequestRecord, SimulatorRecords, SubmitRecord
from ._server import serve
from ._state import SimTask
from ._transport import SimulatorTransport
from ._webhook_sender import WebhookDelivery, WebhookSender

__all__ = [
    "FAKE_API_KEY",
    "KNOWN_MODELS",
    "KeySighting",
    "ManualClock",
    "RequestRecord",
    "ScaledClock",
    "SimTask",
    "Simulator",
    "SimulatorConfig",
    "SimulatorRecords",
    "SimulatorTransport",
    "SubmitRecord",
    "WebhookDelivery",
    "WebhookSender",
    "serve",
]
