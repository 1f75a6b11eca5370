"""A faithful fake of the BFL API for tests, benchmarks and ``flux-async --simulate``.

In process::

    sim = Simulator(clock=ManualClock())
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as c:
        ...

On loopback (needs the ``cli`` extra, for uvicorn)::

    async with serve(sim) as base_url:
        ...

:class:`HostileServer` is the opposite of the simulator: a server that misbehaves on
purpose (malformed fields, huge or dripping bodies, gzip bombs, HTML with 200, redirects
anywhere, escape sequences in ``detail``); ``serve`` runs it on loopback too.
"""

from __future__ import annotations

from .._core._clock import ManualClock, ScaledClock
from ._app import Simulator
from ._config import FAKE_API_KEY, KNOWN_MODELS, SimulatorConfig
from ._hostile import HostileConfig, HostileReply, HostileRequest, HostileServer
from ._keys import KeySighting
from ._records import RequestRecord, SimulatorRecords, SubmitRecord
from ._server import serve
from ._state import SimTask
from ._transport import SimulatorTransport
from ._webhook_sender import WebhookDelivery, WebhookSender

__all__ = [
    "FAKE_API_KEY",
    "KNOWN_MODELS",
    "HostileConfig",
    "HostileReply",
    "HostileRequest",
    "HostileServer",
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
