"""flux_async: an asyncio client for the Black Forest Labs FLUX API and its relays.

from flux_async import AsyncFlux

async with AsyncFlux() as flux:
    img = await flux.generate("a red fox", model="flux-2-pro", output_dir="out")
"""

from __future__ import annotations

from ._batching._batch import BatchChangedError, BatchInputError, BatchSummary, run_batch
from ._client import AsyncFlux, ClientStatistics
from ._core._clock import Clock, ManualClock, ScaledClock, SystemClock
from ._errors import (
    AmbiguousSubmitError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    CoordinatorError,
    DownloadError,
    FluxError,
    GenerationError,
    IncompleteDownloadError,
    InsufficientCreditsError,
    MalformedReplyError,
    ModerationError,
    RateLimitError,
    RequestTimeoutError,
    ResultExpiredError,
    ServerError,
    StorageError,
    TaskError,
    TaskNotFoundError,
    TaskTimeoutError,
    TransportError,
    UnexpectedError,
    UnknownStatusError,
    ValidationError,
)
from ._fleet import Coordinator
from ._request._build import build_request, validate_request
from ._request._catalog import MODELS, ModelSpec, get_model
from ._request._models import GeneratedImage, Outcome, PollReply, Task, TaskResult
from ._request._requests import (
    BaseRequest,
    Flux2FlexRequest,
    Flux2KleinRequest,
    Flux2Request,
    FluxDevRequest,
    FluxExpandRequest,
    FluxFillRequest,
    FluxPro11Request,
    FluxUltraRequest,
    KontextRequest,
)
from ._web._events import (
    CoordinatorChanged,
    Event,
    EventHook,
    ImageSaved,
    TaskFailed,
    TaskOrphaned,
    TaskPolled,
    TaskReady,
    TaskSubmitted,
    WebhookReceived,
)
from ._web._orphans import OnCancel, OrphanStatistics
from ._web._webhook_app import WebhookReceiverStatistics
from ._web._webhooks import WebhookRejected, new_webhook_secret, sign_body

__version__ = "0.1.0.dev0"

__all__ = [
    "MODELS",
    "APIError",
    "AmbiguousSubmitError",
    "AsyncFlux",
    "AuthenticationError",
    "BadRequestError",
    "BaseRequest",
    "BatchChangedError",
    "BatchInputError",
    "BatchSummary",
    "ClientClosedError",
    "ClientStatistics",
    "Clock",
    "ConfigurationError",
    "ConnectError",
    "Coordinator",
    "CoordinatorChanged",
    "CoordinatorError",
    "DownloadError",
    "Event",
    "EventHook",
    "Flux2FlexRequest",
    "Flux2KleinRequest",
    "Flux2Request",
    "FluxDevRequest",
    "FluxError",
    "FluxExpandRequest",
    "FluxFillRequest",
    "FluxPro11Request",
    "FluxUltraRequest",
    "GeneratedImage",
    "GenerationError",
    "ImageSaved",
    "IncompleteDownloadError",
    "InsufficientCreditsError",
    "KontextRequest",
    "MalformedReplyError",
    "ManualClock",
    "ModelSpec",
    "ModerationError",
    "OnCancel",
    "OrphanStatistics",
    "Outcome",
    "PollReply",
    "RateLimitError",
    "RequestTimeoutError",
    "ResultExpiredError",
    "ScaledClock",
    "ServerError",
    "StorageError",
    "SystemClock",
    "Task",
    "TaskError",
    "TaskFailed",
    "TaskNotFoundError",
    "TaskOrphaned",
    "TaskPolled",
    "TaskReady",
    "TaskResult",
    "TaskSubmitted",
    "TaskTimeoutError",
    "TransportError",
    "UnexpectedError",
    "UnknownStatusError",
    "ValidationError",
    "WebhookReceived",
    "WebhookReceiverStatistics",
    "WebhookRejected",
    "__version__",
    "build_request",
    "get_model",
    "new_webhook_secret",
    "run_batch",
    "sign_body",
    "validate_request",
]
