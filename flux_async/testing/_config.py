"""What the simulator pretends to be: hosts, models, latencies, limits and fault rates.

Every knob is a plain field of :class:`SimulatorConfig`; seconds are floats, credits are
floats, probabilities are in 0..1. The defaults follow ``specs/PROTOCOL.md`` §1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FAKE_API_KEY", "KNOWN_MODELS", "SimulatorConfig"]

FAKE_API_KEY = "sim-fake-key"

#: Every model with a ``POST /v1/{model}`` route in BFL's OpenAPI document (finetunes aside).
KNOWN_MODELS: tuple[str, ...] = (
    "flux-2-pro",
    "flux-2-pro-preview",
    "flux-2-max",
    "flux-2-flex",
    "flux-2-klein-4b",
    "flux-2-klein-9b",
    "flux-2-klein-9b-preview",
    "flux-kontext-pro",
    "flux-kontext-max",
    "flux-pro-1.1",
    "flux-pro-1.1-ultra",
    "flux-dev",
    "flux-pro-1.0-fill",
    "flux-pro-1.0-expand",
)

# (median seconds, lognormal sigma), after BFL's guide: klein sub-second, pro < 10 s,
# max < 15 s, flex slower.
_LATENCY: dict[str, tuple[float, float]] = {
    "flux-2-pro": (6.0, 0.4),
    "flux-2-pro-preview": (6.0, 0.4),
    "flux-2-max": (10.0, 0.4),
    "flux-2-flex": (20.0, 0.4),
    "flux-2-klein-4b": (0.8, 0.3),
    "flux-2-klein-9b": (1.2, 0.3),
    "flux-2-klein-9b-preview": (1.2, 0.3),
    "flux-kontext-pro": (5.0, 0.4),
    "flux-kontext-max": (8.0, 0.4),
    "flux-pro-1.1": (4.0, 0.4),
    "flux-pro-1.1-ultra": (8.0, 0.4),
    "flux-dev": (5.0, 0.4),
    "flux-pro-1.0-fill": (8.0, 0.4),
    "flux-pro-1.0-expand": (8.0, 0.4),
}


def _default_latency() -> dict[str, tuple[float, float]]:
    return dict(_LATENCY)


def _default_model_limits() -> dict[str, int]:
    return {"flux-kontext-max": 6}


@dataclass
class SimulatorConfig:
    """Settings of one :class:`~flux_async.testing.Simulator`.

    Hosts: clients submit to ``api_base``; the ``polling_url`` a submit returns names
    ``poll_base``, a different host name, as BFL's cluster hosts do; result URLs live on
    ``delivery_base``. Routing is by path, so one app serves all three.

    Timeline: a task's duration is drawn from a lognormal with the model's
    ``latency`` (median seconds, sigma), or ``default_latency`` for a model not listed.
    Its slot under ``active_limit`` is held from submit until that duration has passed.

    Delivery: each body is a valid image whose length is exactly
    ``max(image_bytes, its smallest encoding)``; WebP rounds that up to an even number.

    Fault rates are probabilities per request, drawn from an RNG seeded with ``seed``:
    ``submit_5xx`` / ``poll_5xx`` / ``delivery_5xx`` answer 500, 502 or 503 without
    running the handler; ``drop_connection`` closes the connection without an answer
    (after the handler ran: a dropped submit has created its task);
    ``truncate_delivery`` cuts an image body short. ``slow_delivery_seconds`` spreads
    every image body over that many seconds of the simulator's clock.
    """

    api_key: str = FAKE_API_KEY
    api_base: str = "https://api.sim.invalid"
    poll_base: str = "https://api.eu2.sim.invalid"
    delivery_base: str = "https://delivery.sim.invalid"
    models: tuple[str, ...] = KNOWN_MODELS
    latency: dict[str, tuple[float, float]] = field(default_factory=_default_latency)
    default_latency: tuple[float, float] = (3.0, 0.5)
    url_lifetime: float = 600.0
    image_bytes: int = 32_768
    active_limit: int = 24
    model_active_limits: dict[str, int] = field(default_factory=_default_model_limits)
    credits: float = 1000.0
    cost: float = 3.0
    model_costs: dict[str, float] = field(default_factory=dict)
    #: For this long after submit, polls answer "Task not found" (replication lag).
    not_found_grace: float = 0.0
    #: HTTP status of a "Task not found" poll reply (BFL has been seen to send 200 and 404).
    not_found_status_code: int = 200
    #: Whether a poll after the result URL expired hands out a fresh URL.
    refresh_url_on_poll: bool = False
    #: Whether polling the submit host (not the polling_url's) stays Pending forever, as
    #: BFL's global host does.
    global_poll_pending: bool = True
    #: A task is forgotten (polls: "Task not found") this long after it ended; None: never.
    task_retention: float | None = 86_400.0
    #: Most entries each list in ``Simulator.records`` keeps (oldest dropped first).
    record_limit: int = 10_000
    seed: int = 0
    submit_5xx: float = 0.0
    poll_5xx: float = 0.0
    delivery_5xx: float = 0.0
    drop_connection: float = 0.0
    truncate_delivery: float = 0.0
    slow_delivery_seconds: float = 0.0
    # --- relays (``_openai.py``; PROTOCOL.md §2-3) ---
    #: A path the API is served under, before ``/v1`` (DMXAPI's BFL relay: ``/flux``).
    api_prefix: str = ""
    #: The polling host is BFL's while ``api_key`` is a relay's (DMXAPI): a poll that
    #: carries any ``x-key`` is refused with 403 (and shows in ``Simulator.keys_seen``).
    keyless_poll: bool = False
    #: How ``POST /v1/images/generations`` returns the image: "url" or "b64_json".
    openai_response: str = "url"
    #: When set, ``POST /v1/images/generations`` answers 307 to this base URL instead.
    openai_redirect: str | None = None
    # --- webhooks (``_webhook_sender.py``; PROTOCOL.md §1 "Webhooks") ---
    #: Seconds after a task ends before its webhook is sent to the request's webhook_url.
    webhook_delay: float = 0.0
    #: Probabilities per delivery: never sent; sent twice; signed with a wrong secret.
    webhook_loss: float = 0.0
    webhook_duplicate: float = 0.0
    webhook_wrong_secret: float = 0.0
    #: "secret" (X-Webhook-Secret), "hmac" (X-BFL-Signature) or "both".
    webhook_auth: str = "secret"
    #: Body shape: "get_result" (``id``, ``status``...) or "task_id" (``task_id``, "SUCCESS").
    webhook_shape: str = "get_result"

    def __post_init__(self) -> None:
        if self.openai_response not in ("url", "b64_json"):
            raise ValueError(
                f'openai_response is "url" or "b64_json", got {self.openai_response!r}'
            )
        rates = {
            "submit_5xx": self.submit_5xx,
            "poll_5xx": self.poll_5xx,
            "delivery_5xx": self.delivery_5xx,
            "drop_connection": self.drop_connection,
            "truncate_delivery": self.truncate_delivery,
            "webhook_loss": self.webhook_loss,
            "webhook_duplicate": self.webhook_duplicate,
            "webhook_wrong_secret": self.webhook_wrong_secret,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} is a probability in 0..1, got {rate!r}")
        if self.active_limit < 1 or self.record_limit < 1:
            raise ValueError("active_limit and record_limit must be at least 1")
        if self.url_lifetime < 0 or self.image_bytes < 0 or self.slow_delivery_seconds < 0:
            raise ValueError("url_lifetime, image_bytes and slow_delivery_seconds must be >= 0")

    def api_path(self, path: str) -> str:
        """Return a request path without ``api_prefix`` (``/flux/v1/x`` -> ``/v1/x``)."""
        prefix = self.api_prefix.rstrip("/")
        return path[len(prefix) :] if prefix and path.startswith(f"{prefix}/v1/") else path

    def latency_for(self, model: str) -> tuple[float, float]:
        """Return ``(median seconds, sigma)`` of ``model``'s duration."""
        return self.latency.get(model, self.default_latency)

    def limit_for(self, model: str) -> int:
        """Return how many tasks of ``model`` one key may have active."""
        return self.model_active_limits.get(model, self.active_limit)

    def cost_for(self, model: str) -> float:
        """Return the credits one submit of ``model`` costs."""
        return self.model_costs.get(model, self.cost)

    def __repr__(self) -> str:
        # The key is fake by design, but a user may put a real one here: never show it.
        return (
            f"SimulatorConfig(api_base={self.api_base!r}, poll_base={self.poll_base!r}, "
            f"delivery_base={self.delivery_base!r}, seed={self.seed})"
        )
