"""A server that misbehaves on purpose: every way issue 9 found a server can hurt a client.

:class:`HostileServer` is a small ASGI app speaking both wire dialects (BFL's
``POST /v1/{model}`` + ``GET /v1/get_result``, and the relays' ``POST
/v1/images/generations``), plus ``/v1/credits`` and a delivery route. By default it
behaves: a submit creates a task, a poll says Ready with a signed delivery URL on the
same server, the delivery serves a small real PNG. A test then scripts the next answers
of a route with :meth:`HostileServer.script` and a :class:`HostileReply`:

- :meth:`HostileReply.json` / :meth:`HostileReply.raw`: any status, body and headers
  (malformed fields, control characters in ``detail``, HTML with 200);
- :meth:`HostileReply.huge`: a body of any size, generated as it streams;
- :meth:`HostileReply.dripping`: a body sent a few bytes at a time, slowly;
- :meth:`HostileReply.gzip_bomb`: a small gzip body that inflates to any size;
- :meth:`HostileReply.redirect`: a redirect anywhere (another scheme, host or address).

Serve it on loopback with :func:`~flux_async.testing.serve` (it has the same
``config.api_base``/``poll_base``/``delivery_base`` as the simulator) or in process with
``httpx.ASGITransport``. :attr:`HostileServer.requests` records every request, and
which credential headers it carried (never their values).
"""

from __future__ import annotations

import json
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import anyio.lowlevel

from ._asgi import Receive, Scope, Send, read_body
from ._images import render

__all__ = ["HostileConfig", "HostileReply", "HostileRequest", "HostileServer", "Route"]

Route = Literal["submit", "poll", "relay", "credits", "delivery"]
ROUTES: tuple[Route, ...] = ("submit", "poll", "relay", "credits", "delivery")
_CREDENTIALS = ("x-key", "authorization", "x-api-key", "api-key")
_STEP = 64 * 1024


def _png() -> bytes:
    return b"".join(render("png", 8, 8, seed=9, target=0).chunks())


PNG = _png()
"""The small, valid PNG the delivery route serves when it behaves."""


@dataclass(frozen=True, slots=True)
class HostileReply:
    """One scripted answer: status, headers and a body that may be huge, slow or a bomb.

    ``body`` is sent as it is; ``size`` (with ``fill``) sends that many bytes generated
    on the fly instead, after ``body`` as a prefix; ``gzip_of`` sends the gzip of
    ``body`` followed by that many zero bytes (compressed once, as it streams);
    ``every`` seconds pass between chunks of ``chunk`` bytes.
    """

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    size: int | None = None
    fill: bytes = b" "
    gzip_of: int | None = None
    every: float = 0.0
    chunk: int = _STEP

    @classmethod
    def json(cls, value: Any, status: int = 200, **headers: str) -> HostileReply:
        """Answer ``value`` as JSON (any value, however wrong its fields)."""
        body = json.dumps(value, allow_nan=True).encode()
        return cls(status, body, (("content-type", "application/json"), *_pairs(headers)))

    @classmethod
    def raw(
        cls, body: bytes, status: int = 200, content_type: str = "text/html", **headers: str
    ) -> HostileReply:
        """Answer ``body`` as it is, with ``content_type`` (an HTML page with 200, say)."""
        return cls(status, body, (("content-type", content_type), *_pairs(headers)))

    @classmethod
    def access_denied_page(cls) -> HostileReply:
        """Answer what a misconfigured CDN sends: an HTML error page, with status 200."""
        page = b"<html><body><h1>AccessDenied</h1><p>Request has expired</p></body></html>"
        return cls.raw(page, 200, "text/html; charset=utf-8")

    @classmethod
    def huge(cls, size: int, prefix: bytes = b'{"status": "Pending", "pad": "') -> HostileReply:
        """Answer ``size`` bytes of JSON-looking text, generated as they stream."""
        return cls(
            200, prefix, (("content-type", "application/json"),), size=size, fill=b"x" * 1024
        )

    @classmethod
    def dripping(
        cls, body: bytes, every: float, chunk: int = 1, content_type: str = "application/json"
    ) -> HostileReply:
        """Answer ``body`` ``chunk`` bytes at a time, ``every`` seconds apart."""
        headers = (("content-type", content_type), ("content-length", str(len(body))))
        return cls(200, body, headers, every=every, chunk=chunk)

    @classmethod
    def gzip_bomb(
        cls, inflated: int, prefix: bytes = PNG[:16], content_type: str = "image/png"
    ) -> HostileReply:
        """Answer a gzip body that inflates to ``prefix`` plus ``inflated`` zero bytes."""
        headers = (("content-type", content_type), ("content-encoding", "gzip"))
        return cls(200, prefix, headers, gzip_of=inflated)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> HostileReply:
        """Answer a redirect to ``location`` (any scheme, any host)."""
        return cls(status, b"", (("location", location),))

    @classmethod
    def detail(cls, text: str, status: int = 400) -> HostileReply:
        """Answer an error whose ``detail`` is ``text`` (control characters and all)."""
        return cls.json({"detail": text}, status)

    def chunks(self) -> Iterator[bytes]:
        """Yield the body in the chunks it is sent in."""
        if self.gzip_of is not None:
            yield from _gzip_stream(self.body, self.gzip_of)
            return
        if self.size is None:
            step = max(self.chunk, 1)
            for start in range(0, len(self.body), step):
                yield self.body[start : start + step]
            return
        yield self.body
        left = self.size - len(self.body)
        block = (self.fill * (self.chunk // max(len(self.fill), 1) + 1))[: self.chunk]
        while left > 0:
            piece = block[:left]
            left -= len(piece)
            yield piece


def _gzip_stream(prefix: bytes, zeros: int) -> Iterator[bytes]:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    yield packer.compress(prefix)
    block = bytes(1024 * 1024)
    left = zeros
    while left > 0:
        piece = block[: min(left, len(block))]
        left -= len(piece)
        out = packer.compress(piece)
        if out:
            yield out
    yield packer.flush()


def _pairs(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((name.replace("_", "-"), value) for name, value in headers.items())


@dataclass(frozen=True, slots=True)
class HostileRequest:
    """One request the server saw; ``credentials`` names the key headers it carried."""

    route: str
    method: str
    path: str
    host: str
    credentials: tuple[str, ...]


@dataclass(slots=True)
class HostileConfig:
    """Where the server is reachable; :func:`~flux_async.testing.serve` fills these in."""

    api_base: str = "http://hostile.invalid"
    poll_base: str = "http://hostile.invalid"
    delivery_base: str = "http://hostile.invalid"
    url_lifetime: float = 600.0  # seconds a delivery URL's ``se`` lies in the future


@dataclass(eq=False)
class HostileServer:
    """A loopback server that answers like a broken or hostile relay, on your script.

    It behaves until told otherwise (submit creates ``h1``, ``h2``...; a poll says Ready;
    the delivery serves a small PNG). :meth:`script` queues the next answers of one route
    (``"submit"``, ``"poll"``, ``"relay"``, ``"credits"``, ``"delivery"``);
    :attr:`requests` records every request and which credential headers it carried,
    never their values.

    Examples:
        A delivery that answers 200 with an HTML error page is not an image: the client
        re-polls once for a fresh URL, then fails that task alone.

        ```python
        from flux_async import AsyncFlux, ResultExpiredError
        from flux_async.testing import HostileReply, HostileServer, serve

        server = HostileServer()
        server.script("delivery", HostileReply.access_denied_page(), times=2)
        async with serve(server):
            async with AsyncFlux(
                api_key="sim-not-a-real-key", base_url=server.config.api_base
            ) as flux:
                try:
                    await flux.generate("a fox", output_dir="out")
                except ResultExpiredError as exc:
                    print("refused:", exc)
        assert len(server.seen("poll")) == 2  # the first Ready, then one re-poll
        ```
    """

    config: HostileConfig = field(default_factory=HostileConfig)
    requests: list[HostileRequest] = field(default_factory=list)
    _queues: dict[str, deque[list[Any]]] = field(
        default_factory=lambda: {route: deque() for route in ROUTES}
    )
    _count: int = 0

    def script(self, route: Route, reply: HostileReply, times: int = 1) -> None:
        """Answer the next ``times`` requests to ``route`` with ``reply``."""
        if route not in self._queues:
            raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._queues[route].append([reply, times])

    def pending(self, route: Route) -> int:
        """Return how many scripted answers are still queued for ``route``."""
        return sum(entry[1] for entry in self._queues[route])

    def seen(self, route: str) -> list[HostileRequest]:
        """Return the requests made to ``route``, oldest first."""
        return [request for request in self.requests if request.route == route]

    def delivery_url(self, task_id: str) -> str:
        """Return a signed-looking delivery URL for ``task_id`` on this server."""
        expiry = datetime.fromtimestamp(time.time() + self.config.url_lifetime, UTC)
        se = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.config.delivery_base}/delivery/{task_id}.png?se={se}&sp=r&sig=HOSTILESIG"

    def _take(self, route: str) -> HostileReply | None:
        queue = self._queues[route]
        if not queue:
            return None
        entry = queue[0]
        entry[1] -= 1
        if entry[1] == 0:
            queue.popleft()
        reply: HostileReply = entry[0]
        return reply

    def _default(self, route: str, path: str, query: dict[str, str]) -> HostileReply:
        if route == "submit":
            self._count += 1
            task_id = f"h{self._count}"
            polling_url = f"{self.config.poll_base}/v1/get_result?id={task_id}"
            return HostileReply.json({"id": task_id, "polling_url": polling_url, "cost": 1.0})
        if route == "poll":
            task_id = query.get("id", "unknown")
            result = {"sample": self.delivery_url(task_id), "seed": 1}
            return HostileReply.json({"id": task_id, "status": "Ready", "result": result})
        if route == "relay":
            self._count += 1
            url = self.delivery_url(f"r{self._count}")
            return HostileReply.json(
                {"created": int(time.time()), "data": [{"url": url, "revised_prompt": "ok"}]},
                x_request_id=f"r{self._count}",
            )
        if route == "credits":
            return HostileReply.json({"credits": 100.0})
        if route == "delivery":
            return HostileReply.raw(PNG, 200, "image/png")
        return HostileReply.detail("Not Found", 404)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        query = dict(
            pair.split("=", 1) if "=" in pair else (pair, "")
            for pair in scope.get("query_string", b"").decode("latin-1").split("&")
            if pair
        )
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        await read_body(receive, 256 * 1024 * 1024)
        route = _route(method, path)
        self.requests.append(
            HostileRequest(
                route=route,
                method=method,
                path=path,
                host=headers.get("host", ""),
                credentials=tuple(name for name in _CREDENTIALS if name in headers),
            )
        )
        reply = self._take(route) or self._default(route, path, query)
        await _send(reply, send)


def _route(method: str, path: str) -> str:
    if path.startswith("/delivery/"):
        return "delivery"
    if path == "/v1/get_result":
        return "poll"
    if path == "/v1/credits":
        return "credits"
    if method == "POST" and path == "/v1/images/generations":
        return "relay"
    if method == "POST" and path.startswith("/v1/"):
        return "submit"
    return "unknown"


async def _send(reply: HostileReply, send: Send) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers]
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        async for piece in _paced(reply):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        return  # the client hung up, as a well-defended one does: nothing more to send


async def _paced(reply: HostileReply) -> AsyncIterator[bytes]:
    for piece in reply.chunks():
        if reply.every:
            await anyio.sleep(reply.every)
        else:
            await anyio.lowlevel.checkpoint()
        yield piece
