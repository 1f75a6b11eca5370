"""The httpx transport of the clients: httpx's own, with a cheaper check of idle connections.

httpcore's pool checks every connection it holds each time a request joins or leaves it
(twice per request), and for each idle one asks its stream whether the socket is
readable (a server that closed it). anyio answers that by building a fresh dict of every
socket attribute, with a ``getpeername`` system call, for each question: with 16 idle
connections kept alive, about a tenth of a poll's CPU (``benchmarks/pool_cpu.py``). The
streams here keep their socket object from the moment they connect and answer with one
``poll(0)``, exactly as httpcore does with the socket it looks up.

Everything else is httpx's ``AsyncHTTPTransport`` (request and response mapping,
exception mapping, closing); only its connection pool is built with this network
backend. Proxies from the environment keep httpx's own transport (see
:func:`fast_transport`).
"""

from __future__ import annotations

import select
import socket
import ssl
import urllib.request
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

__all__ = ["PooledTransport", "fast_transport"]


def _readable(sock: socket.socket | None) -> bool:
    """Return whether ``sock`` has something to read (on an idle connection: its close)."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True  # gone: as good as a close
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    """A network stream that remembers its socket for the pool's idle checks."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's signature
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore's signature
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, handing out :class:`_Stream` wrappers."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - the clients never use a socket file
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - httpcore's retries only
        await self._inner.sleep(seconds)


class PooledTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose idle checks are cheap."""

    def __init__(self, *, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(verify=verify, limits=limits)
        # The one attribute httpx's transport sends through and closes; were it renamed,
        # httpx's own pool would simply stay in use.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(),
        )


def fast_transport(verify: ssl.SSLContext, limits: httpx.Limits) -> PooledTransport | None:
    """Return a :class:`PooledTransport`, or None when the environment names a proxy.

    httpx routes through ``HTTP(S)_PROXY``/``ALL_PROXY`` only for a client built without
    a transport; a proxied client keeps httpx's own, so nothing about routing changes.
    """
    if urllib.request.getproxies():
        return None
    return PooledTransport(verify=verify, limits=limits)
