"""Serve a simulator over real HTTP on loopback: uvicorn, in the caller's event loop.

uvicorn belongs to the ``cli`` extra, so it is imported only when :func:`serve` runs.
The server's HTTP protocol hands the app a ``close()`` for its socket (see ``_asgi``),
so an injected drop closes the connection before any byte of an answer, and a
truncated body stops short of its Content-Length: httpx then raises
``RemoteProtocolError`` exactly as it would against a real server that broke off.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._asgi import LINK_EXTENSION, Link

if TYPE_CHECKING:
    import uvicorn

    from ._asgi import Receive, Scope, Send

__all__ = ["serve"]


class _Bases(Protocol):
    api_base: str
    poll_base: str
    delivery_base: str


class Servable(Protocol):
    """An ASGI app with the simulator's three base URLs (the simulator, a hostile server)."""

    @property
    def config(self) -> _Bases: ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


@contextlib.asynccontextmanager
async def serve(sim: Servable, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``sim`` on ``host``:``port`` (0: any free port) and yield its base URL.

    While serving, ``sim.config.api_base`` is that URL (``http://127.0.0.1:PORT``) and
    ``poll_base`` / ``delivery_base`` are ``http://localhost:PORT``: another host name
    for the same server, as BFL's polling hosts differ from its submit host. On exit the
    server stops (at most about a second for connections still busy), the three bases
    are restored, and no task or socket is left behind.

    Args:
        sim: The simulator to serve.
        host: A loopback address to listen on.
        port: The TCP port; 0 lets the system choose a free one.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:54321``.

    Raises:
        OSError: The address cannot be bound (the port is in use, or not allowed).
        ImportError: uvicorn is missing (it comes with the ``cli`` extra).

    Examples:
        ```python
        sim = Simulator()
        async with serve(sim) as base_url:
            async with AsyncFlux(api_key=FAKE_API_KEY, base_url=base_url) as flux:
                image = await flux.generate("a red fox", output_dir="out")
        ```
    """
    server = _server(sim)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        base, alias = _base_urls(host, sock.getsockname()[1])
        saved = (sim.config.api_base, sim.config.poll_base, sim.config.delivery_base)
        sim.config.api_base, sim.config.poll_base, sim.config.delivery_base = base, alias, alias
        stopped = anyio.Event()

        async def run() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                stopped.set()

        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(run)
                try:
                    while not server.started:
                        if stopped.is_set():
                            raise RuntimeError(f"the simulator server did not start on {base}")
                        await anyio.sleep(0.005)
                    try:
                        yield base
                    except BaseException as exc:  # noqa: BLE001 - re-raised below, unwrapped
                        # Raised inside the task group it would reach the caller wrapped
                        # in an ExceptionGroup; the caller's own error should stay itself.
                        failure = exc
                finally:
                    server.should_exit = True
                    # Let uvicorn shut down in order (listener, connections) even when
                    # the body failed or was cancelled, so no socket is left unclosed.
                    with anyio.CancelScope(shield=True):
                        await stopped.wait()
        finally:
            sim.config.api_base, sim.config.poll_base, sim.config.delivery_base = saved
        if failure is not None:
            raise failure
    finally:
        sock.close()


def _server(sim: Servable) -> uvicorn.Server:
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the installation
        message = "serving the simulator needs uvicorn: pip install 'flux-async[cli]'"
        raise ImportError(message) from exc

    class QuietServer(uvicorn.Server):
        """A uvicorn server that leaves the process's signal handlers to the host app."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    config = uvicorn.Config(
        sim,
        http=_linked_protocol(),
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=1,
    )
    return QuietServer(config)


def _base_urls(host: str, port: int) -> tuple[str, str]:
    """Return the submit URL and its alias: the same server under another host name."""
    url_host = _WILDCARDS.get(host, host)
    url_host = f"[{url_host}]" if ":" in url_host else url_host
    base = f"http://{url_host}:{port}"
    alias = f"http://localhost:{port}" if url_host in {"127.0.0.1", "[::1]"} else base
    return base, alias


def _linked_protocol() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class LinkedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol, telling the app how to close this connection."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Without it every small answer waits ~40 ms for the client's delayed ACK.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.app = _with_link(self.app, Link(close=transport.close))

    return LinkedH11Protocol


def _with_link(app: Any, link: Link) -> Any:
    async def linked(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            extensions = dict(scope.get("extensions") or {})
            extensions[LINK_EXTENSION] = link
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return linked
