"""What every provider offers, what both dialects build on, the API key, the named presets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol
from urllib.parse import urlsplit

import httpx

from .._core._clock import Clock
from .._errors import ConfigurationError
from .._request._models import PollReply, Task

if TYPE_CHECKING:
    from .._request._requests import BaseRequest

__all__ = [
    "PRESETS",
    "ApiKey",
    "HTTPProvider",
    "Provider",
    "ProviderPreset",
    "get_preset",
    "resolve_api_key",
]


class ApiKey:
    """An API key that never shows itself in ``repr``, ``str``, logs or errors."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value or value != value.strip():
            raise ConfigurationError("the API key is empty or has surrounding whitespace")
        self._value = value

    def reveal(self) -> str:
        """Return the key itself; only for building a request header."""
        return self._value

    @property
    def masked(self) -> str:
        tail = self._value[-4:] if len(self._value) >= 12 else ""
        return f"***{tail}"

    def __repr__(self) -> str:
        return f"ApiKey({self.masked!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("ApiKey is not picklable: keys are never written anywhere")


class Provider(Protocol):
    """One wire dialect bound to a host and a key."""

    name: str

    async def submit(self, request: BaseRequest) -> Task:
        """Send one generation request; return the created task."""
        ...

    async def poll(self, task: Task) -> PollReply:
        """Fetch the task's current status."""
        ...

    async def credits(self) -> float:
        """Return the account's credit balance."""
        ...


class HTTPProvider:
    """What both dialects are built on: a preset, a key, a clock and a checked base URL.

    ``http`` is a credential-free ``httpx.AsyncClient``: a subclass puts the key into
    each request's headers, never the client's defaults. ``base_url`` (default: the
    preset's) must be an http(s) URL; a JSON reply is read up to ``max_reply_bytes``.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        preset: ProviderPreset,
        key: ApiKey,
        clock: Clock,
        base_url: str | None,
        max_reply_bytes: int,
    ) -> None:
        self.name = preset.name
        self._max_reply_bytes = max_reply_bytes
        self._http = http
        self._preset = preset
        self._key = key
        self._clock = clock
        self.base_url = (base_url or preset.base_url).rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        self._api_origin = (parts.scheme, parts.netloc)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(name={self.name!r}, base_url={self.base_url!r}, key={self._key!r})"


@dataclass(frozen=True, slots=True)
class ProviderPreset:
    """A named provider: its host, dialect, key variable and timing defaults."""

    name: str
    base_url: str
    dialect: Literal["bfl", "openai"]
    env_var: str
    # May the key go to the polling_url host? BFL: only to BFL API hosts. The DMXAPI
    # relay: never, its key is not a BFL key and BFL's hosts must not see it.
    key_on_poll: bool
    task_timeout: float  # seconds from submit before a task is given up
    request_timeout: float  # read timeout of a submit, seconds
    latency_scale: float = 1.0  # multiplies the catalog's typical latency
    # The catalog models the provider serves; None: every one.
    models: frozenset[str] | None = None


# APIYI's list (seeds 003/004), less the models the catalog does not know (flux-pro).
_APIYI_MODELS = frozenset(
    {
        "flux-2-max",
        "flux-2-pro",
        "flux-2-flex",
        "flux-2-klein-9b",
        "flux-2-klein-4b",
        "flux-kontext-max",
        "flux-kontext-pro",
        "flux-pro-1.1-ultra",
        "flux-pro-1.1",
        "flux-dev",
    }
)

PRESETS: dict[str, ProviderPreset] = {
    p.name: p
    for p in (
        ProviderPreset("bfl", "https://api.bfl.ai", "bfl", "BFL_API_KEY", True, 900.0, 60.0),
        ProviderPreset("bfl-eu", "https://api.eu.bfl.ai", "bfl", "BFL_API_KEY", True, 900.0, 60.0),
        ProviderPreset("bfl-us", "https://api.us.bfl.ai", "bfl", "BFL_API_KEY", True, 900.0, 60.0),
        # DMXAPI's BFL relay: generation "usually takes 60-120 s" there, so the first poll
        # comes later (10x the catalog's latency), a task gets 20 minutes, a submit 2.
        ProviderPreset(
            "dmxapi",
            "https://www.dmxapi.cn/flux",
            "bfl",
            "DMXAPI_API_KEY",
            False,
            1200.0,
            120.0,
            latency_scale=10.0,
        ),
        # The OpenAI-style relays answer when the image exists: a submit's read timeout
        # is minutes (their docs say allow >= 120 s), and there is nothing to poll.
        ProviderPreset(
            "apiyi",
            "https://api.apiyi.com",
            "openai",
            "APIYI_API_KEY",
            False,
            600.0,
            300.0,
            models=_APIYI_MODELS,
        ),
        ProviderPreset(
            "dmxapi-openai",
            "https://www.dmxapi.cn",
            "openai",
            "DMXAPI_API_KEY",
            False,
            600.0,
            300.0,
            models=frozenset({"flux-kontext-pro", "flux-kontext-max"}),
        ),
    )
}


def get_preset(name: str) -> ProviderPreset:
    """Return the preset called ``name`` or raise ConfigurationError naming the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ConfigurationError(f"unknown provider {name!r}; known providers: {known}") from None


def resolve_api_key(explicit: str | ApiKey | None, preset: ProviderPreset) -> ApiKey:
    """Return the key from the argument, else from the preset's environment variable."""
    if isinstance(explicit, ApiKey):
        return explicit
    value = explicit if explicit is not None else os.environ.get(preset.env_var)
    if not value:
        raise ConfigurationError(
            f"no API key: pass api_key= or set {preset.env_var} for provider {preset.name!r}"
        )
    return ApiKey(value)
