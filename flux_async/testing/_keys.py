"""Where credentials went: every request that carried an API key, by host and path.

Tests prove with these records that a key reached only the hosts it belongs to: the relay
key never a BFL polling host, no key a delivery host, a Bearer token never the target of
a redirect. A sighting keeps the header's name and whether it held the configured key,
never the value.
"""

from __future__ import annotations

from typing import NamedTuple

from ._asgi import Request

__all__ = ["KeySighting", "key_sightings"]

_HEADERS = ("x-key", "authorization", "x-api-key", "api-key")
_BEARER = "bearer "


class KeySighting(NamedTuple):
    """A request that carried a credential header.

    ``host`` is the ``Host`` header (with any port); ``header`` the header's lower-case
    name; ``configured`` whether its value was the simulator's configured key.
    """

    method: str
    host: str
    path: str
    header: str
    configured: bool


def key_sightings(request: Request, configured_key: str) -> list[KeySighting]:
    """Return one sighting per credential header ``request`` carries (usually none)."""
    found: list[KeySighting] = []
    for header in _HEADERS:
        value = request.headers.get(header)
        if value is None:
            continue
        if header == "authorization" and value[: len(_BEARER)].lower() == _BEARER:
            value = value[len(_BEARER) :]
        found.append(
            KeySighting(request.method, request.host, request.path, header, value == configured_key)
        )
    return found
