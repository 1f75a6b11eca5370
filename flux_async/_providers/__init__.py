"""Providers: one module per wire dialect behind the small :class:`Provider` protocol."""

from __future__ import annotations

import httpx

from .._core._bounded import DEFAULT_MAX_IMAGE_BYTES
from .._core._clock import Clock
from .._errors import ConfigurationError
from ._base import PRESETS, ApiKey, Provider, ProviderPreset, get_preset, resolve_api_key
from ._http import DEFAULT_MAX_REPLY_BYTES
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
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    request_timeout: float | None = None,
) -> Provider:
    """Build the provider for ``preset`` over the given credential-free client.

    ``max_reply_bytes`` caps a JSON reply's decoded size; ``request_timeout`` bounds a whole
    poll or credits request (seconds); ``max_image_bytes`` sizes a relay's inline image.
    """
    if preset.dialect == "bfl":
        return BFLProvider(
            http,
            preset=preset,
            key=key,
            clock=clock,
            base_url=base_url,
            max_reply_bytes=max_reply_bytes,
            request_timeout=request_timeout,
        )
    if preset.dialect == "openai":
        return OpenAIProvider(
            http,
            preset=preset,
            key=key,
            clock=clock,
            base_url=base_url,
            max_reply_bytes=max_reply_bytes,
            max_image_bytes=max_image_bytes,
        )
    raise ConfigurationError(
        f"provider {preset.name!r} speaks the {preset.dialect!r} dialect, which this version "
        "does not support yet"
    )
