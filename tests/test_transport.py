"""The clients' transport: httpx's own over a pool whose idle checks keep their socket."""

from __future__ import annotations

import anyio
import anyio.abc
import httpx
import pytest

from flux_async._providers._http import _tls_context
from flux_async._providers._transport import PooledTransport, fast_transport

pytestmark = pytest.mark.anyio

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


class ClosingServer:
    """Answers one request per connection with keep-alive, then closes the connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = anyio.Event()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.closed.set()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    server = ClosingServer()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        transport = PooledTransport(verify=_tls_context(), limits=LIMITS)
        async with httpx.AsyncClient(transport=transport) as http:
            first = await http.get(f"http://127.0.0.1:{port}/a")
            await server.closed.wait()
            # The pool still holds the idle connection: only its readable socket (the
            # close) tells it apart from a live one.
            second = await http.get(f"http://127.0.0.1:{port}/b")
        tg.cancel_scope.cancel()
    assert (first.text, second.text) == ("ok", "ok")
    assert server.connections == 2


async def test_idle_connections_are_reused_while_the_server_keeps_them() -> None:
    connections = 0

    async def handle(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            buffered = b""
            for _ in range(3):
                while b"\r\n\r\n" not in buffered:
                    buffered += await stream.receive()
                _, _, buffered = buffered.partition(b"\r\n\r\n")
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        transport = PooledTransport(verify=_tls_context(), limits=LIMITS)
        async with httpx.AsyncClient(transport=transport) as http:
            texts = [(await http.get(f"http://127.0.0.1:{port}/{i}")).text for i in range(3)]
        tg.cancel_scope.cancel()
    assert texts == ["ok"] * 3
    assert connections == 1


def test_a_proxy_in_the_environment_keeps_httpx_s_own_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(fast_transport(_tls_context(), LIMITS), PooledTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert fast_transport(_tls_context(), LIMITS) is None
