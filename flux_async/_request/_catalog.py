"""What each model accepts and how it behaves.

One :class:`ModelSpec` per endpoint of ``bfl-openapi.json`` (finetune endpoints aside):
its request class, reference-image limit, active-task limit, typical latency and size
rule. Latencies are BFL's guide figures ("klein sub-second, pro < 10 s, max < 15 s,
flex slower"); the scheduler and the simulator use them to plan, never to decide.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .._errors import ConfigurationError
from ._requests import (
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

__all__ = ["DEFAULT_ACTIVE_LIMIT", "MODELS", "ModelSpec", "get_model"]

DEFAULT_ACTIVE_LIMIT = 24
"""Active (submitted, not yet terminal) tasks an account may hold per model."""

KONTEXT_MAX_ACTIVE_LIMIT = 6


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The rules and habits of one model endpoint (``POST /v1/{name}``).

    ``latency_median`` is a typical generation time in seconds; generation times are
    modelled as lognormal with shape ``latency_sigma``. ``size_mode`` says how the output
    size is chosen: ``pixels16`` (width/height, multiples of 16), ``pixels32`` (256-1440,
    multiples of 32), ``aspect_ratio`` (``"W:H"``) or ``from_image`` (the input's size).
    """

    name: str
    family: str
    request_type: type[BaseRequest]
    max_reference_images: int
    active_limit: int
    latency_median: float
    latency_sigma: float
    default_output_format: str
    size_mode: str

    @property
    def accepted_fields(self) -> tuple[str, ...]:
        """Return the body fields the model accepts, sorted by name."""
        return self.request_type.accepted_fields()


def _spec(
    name: str,
    family: str,
    request_type: type[BaseRequest],
    latency: float,
    *,
    size_mode: str,
    active_limit: int = DEFAULT_ACTIVE_LIMIT,
    output_format: str = "jpeg",
    sigma: float = 0.5,
) -> ModelSpec:
    return ModelSpec(
        name=name,
        family=family,
        request_type=request_type,
        max_reference_images=len(request_type.reference_fields),
        active_limit=active_limit,
        latency_median=latency,
        latency_sigma=sigma,
        default_output_format=output_format,
        size_mode=size_mode,
    )


_SPECS = (
    _spec("flux-2-pro", "flux2", Flux2Request, 6.0, size_mode="pixels16"),
    _spec("flux-2-pro-preview", "flux2", Flux2Request, 6.0, size_mode="pixels16"),
    _spec("flux-2-max", "flux2", Flux2Request, 10.0, size_mode="pixels16"),
    _spec("flux-2-flex", "flux2-flex", Flux2FlexRequest, 20.0, size_mode="pixels16", sigma=0.6),
    _spec("flux-2-klein-4b", "flux2-klein", Flux2KleinRequest, 1.0, size_mode="pixels16"),
    _spec("flux-2-klein-9b", "flux2-klein", Flux2KleinRequest, 1.2, size_mode="pixels16"),
    _spec("flux-2-klein-9b-preview", "flux2-klein", Flux2KleinRequest, 1.2, size_mode="pixels16"),
    _spec(
        "flux-kontext-pro",
        "kontext",
        KontextRequest,
        6.0,
        size_mode="aspect_ratio",
        output_format="png",
    ),
    _spec(
        "flux-kontext-max",
        "kontext",
        KontextRequest,
        8.0,
        size_mode="aspect_ratio",
        output_format="png",
        active_limit=KONTEXT_MAX_ACTIVE_LIMIT,
    ),
    _spec("flux-pro-1.1", "pro11", FluxPro11Request, 5.0, size_mode="pixels32"),
    _spec("flux-pro-1.1-ultra", "ultra", FluxUltraRequest, 10.0, size_mode="aspect_ratio"),
    _spec("flux-dev", "dev", FluxDevRequest, 4.0, size_mode="pixels32"),
    _spec("flux-pro-1.0-fill", "fill", FluxFillRequest, 10.0, size_mode="from_image"),
    _spec("flux-pro-1.0-expand", "expand", FluxExpandRequest, 10.0, size_mode="from_image"),
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
"""Every model flux_async knows, by endpoint name."""


def get_model(name: str) -> ModelSpec:
    """Return the spec of model ``name``; raise ConfigurationError naming the known ones.

    Args:
        name: A model's endpoint name, e.g. ``"flux-2-pro"``.

    Returns:
        Its accepted fields, reference-image limit, active-task limit and latency.

    Raises:
        ConfigurationError: ``name`` is not in the catalog; the message suggests the
            closest known name ("did you mean 'flux-2-pro'?").

    Examples:
        ```python
        get_model("flux-kontext-max").active_limit  # 6
        ```
    """
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(MODELS)
        raise ConfigurationError(f"unknown model {name!r}{hint}; known models: {known}") from None
