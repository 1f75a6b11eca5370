"""Providers: one module per wire dialect behind the small :class:`Provider` protocol."""

from __future__ import annotations

import httpx

from .._clock import Clock
from .._errors import ConfigurationError
from ._base import PRESETS, ApiKey, Provider, ProviderPreset, get_preset, resolve_api_key
from .bfl import BFLProvider
from .openai_compat import OpenAIProvider

__all__ = [
    "PRESETS",
    "ApiKey",
    "BFLProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderPreset",
    "get_preset",
    "make_provider",
    "resolve_api_key",
]


def make_provider(
    preset: ProviderPreset,
    http: httpx.AsyncClient,
    *,
    key: ApiKey,
    clock: Clock,
    base_url: str | None = None,
) -> Provider:
    """Build the provider for ``preset`` over the given credential-free client."""
    if preset.dialect == "bfl":
        return BFLProvider(http, preset=preset, key=key, clock=clock, base_url=base_url)
    if preset.dialect == "openai":
        return OpenAIProvider(http, preset=preset, key=key, clock=clock, base_url=base_url)
    raise ConfigurationError(
        f"provider {preset.name!r} speaks the {preset.dialect!r} dialect, which this version "
        "does not support yet"
    )
