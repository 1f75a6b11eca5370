"""An httpx transport that runs the simulator in process, failing as a socket would.

It wraps ``httpx.ASGITransport``, so each answer is buffered whole before the client sees
it (fine in process; use ``serve`` to exercise streaming). Two faults are translated to
what httpx reports over a real connection:

- a dropped connection raises ``httpx.RemoteProtocolError`` ("Server disconnected
  without sending a response.");
- a body shorter than its Content-Length yields the bytes that came, then raises
  ``httpx.RemoteProtocolError`` ("peer closed connection without sending complete
  message body (received N bytes, expected M)"), as httpx words it over a socket, so
  ``response.headers["content-length"]`` exceeds what was read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from ._asgi import LINK_EXTENSION, App, ConnectionDropped, Link, Receive, Scope, Send

__all__ = ["SimulatorTransport"]

_IN_PROCESS = Link(in_process=True)


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Send each request straight to a :class:`Simulator`, whatever its host.

    No socket is opened: the request goes to the simulator's ASGI app in process, so
    a test needs no port and no network. Get one with ``Simulator.transport()``.

    Args:
        simulator: The simulator (any ASGI app) that answers every request.

    Examples:
        ```python
        sim = Simulator()
        async with httpx.AsyncClient(
            transport=sim.transport(), base_url=sim.config.api_base
        ) as client:
            reply = await client.get("/v1/credits", headers={"x-key": FAKE_API_KEY})
        ```
    """

    def __init__(self, simulator: App) -> None:
        self._simulator = simulator
        self._inner = httpx.ASGITransport(app=self._app)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = dict(scope.get("extensions") or {})
        extensions[LINK_EXTENSION] = _IN_PROCESS
        await self._simulator({**scope, "extensions": extensions}, receive, send)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` from the simulator."""
        try:
            response = await self._inner.handle_async_request(request)
        except ConnectionDropped as exc:
            message = "Server disconnected without sending a response."
            raise httpx.RemoteProtocolError(message, request=request) from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)
        chunks = [chunk async for chunk in response.stream]
        declared = response.headers.get("content-length")
        received = sum(len(chunk) for chunk in chunks)
        short = request.method != "HEAD" and declared is not None and received < int(declared)
        stream = _Body(chunks, request, int(declared) if short and declared else None)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __repr__(self) -> str:
        return f"SimulatorTransport({self._simulator!r})"


class _Body(httpx.AsyncByteStream):
    """The chunks that arrived; with ``expected`` set, the connection then breaks."""

    def __init__(self, chunks: list[bytes], request: httpx.Request, expected: int | None) -> None:
        self._chunks = chunks
        self._request = request
        self._expected = expected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._expected is not None:
            received = sum(len(chunk) for chunk in self._chunks)
            message = (
                "peer closed connection without sending complete message body "
                f"(received {received} bytes, expected {self._expected})"
            )
            raise httpx.RemoteProtocolError(message, request=self._request)
