"""The few ASGI 3 pieces the simulator needs: a parsed request and a response sender
that can pace, truncate or drop its answer.

How a connection can be ended early depends on what runs the app, which says so through
``scope["extensions"][LINK_EXTENSION]`` (a :class:`Link`):

- in process (``SimulatorTransport``): a drop raises :class:`ConnectionDropped`, which the
  transport turns into ``httpx.RemoteProtocolError``; a truncated body ends normally and
  the transport notices it is shorter than its Content-Length;
- on loopback (``serve``): the server hands over ``close()``, which shuts the socket;
- under any other server: a drop raises (most servers then answer 500) and a truncated
  body is left unfinished (servers close the connection then).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from .._core._clock import Clock

__all__ = [
    "LINK_EXTENSION",
    "App",
    "ConnectionDropped",
    "Link",
    "Message",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "read_body",
    "send_response",
    "serve_lifespan",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LINK_EXTENSION = "flux_async.simulator.link"


class ConnectionDropped(Exception):
    """Raised inside the app to have the connection closed without an answer."""


@dataclass(frozen=True, slots=True)
class Link:
    """What the server running the app offers for ending a connection early."""

    in_process: bool = False
    close: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as the simulator routes it; header names are lower case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    host: str
    link: Link

    @classmethod
    def from_scope(cls, scope: Scope) -> Request:
        """Read method, path, query, headers and host out of an ASGI ``http`` scope."""
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        host = headers.get("host")
        if host is None:
            server = scope.get("server") or ("", None)
            host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
        link = (scope.get("extensions") or {}).get(LINK_EXTENSION)
        return cls(
            method=scope["method"],
            path=scope["path"],
            query=query,
            headers=headers,
            host=host.lower(),
            link=link if isinstance(link, Link) else Link(),
        )


@dataclass(frozen=True, slots=True)
class Response:
    """An answer: status, headers, and a body given as chunks of known total length."""

    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: Iterable[bytes]
    length: int

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """Return a JSON answer."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls.raw(status, body, "application/json", headers)

    @classmethod
    def raw(
        cls, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """Return an answer whose body is ``body``."""
        return cls(status, (("content-type", content_type), *headers), (body,), len(body))


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """Return the request body, or None when the client left or sent more than ``limit``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_response(
    send: Send,
    receive: Receive,
    response: Response,
    link: Link,
    *,
    clock: Clock,
    drop: bool = False,
    truncate: bool = False,
    pace: float = 0.0,
) -> None:
    """Send ``response``; ``drop``, ``truncate`` and ``pace`` (clock seconds slept after
    each chunk) make it misbehave as the module docstring describes.
    """
    if drop:
        if link.close is None:
            raise ConnectionDropped
        await _close(receive, link.close)
        return
    headers = [(name.encode(), value.encode()) for name, value in response.headers]
    headers.append((b"content-length", str(response.length).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    budget = response.length // 2 if truncate else response.length
    for chunk in response.chunks:
        part = chunk[:budget]
        budget -= len(part)
        if part:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        if pace:
            await clock.sleep(pace)
        if budget <= 0:
            break
    if truncate and not link.in_process:
        if link.close is not None:
            await _close(receive, link.close)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _close(receive: Receive, close: Callable[[], None]) -> None:
    close()
    # The server reports the closed socket as http.disconnect; returning earlier would
    # make it log an unfinished response (or send a 500) on a socket already closing.
    while (await receive())["type"] != "http.disconnect":
        pass


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge a server's lifespan startup and shutdown; the app keeps no resources."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
