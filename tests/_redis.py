"""A real ``redis-server`` on a free loopback port, for the fleet tests (no mock Redis).

The server runs without persistence (``--save ''``, ``--appendonly no``) in a temporary
folder and is stopped at the end of the test. It can be killed and started again on the
same port, to test a fleet that loses its coordinator mid-run.

When ``redis-server`` is not on PATH the tests that need it FAIL, so CI cannot pass
without them; set ``FLUX_ASYNC_SKIP_REDIS=1`` to skip them instead (with the reason shown).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server"]

_START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1 on a port chosen once."""

    def __init__(self, binary: str, folder: Path) -> None:
        self._binary = binary
        self._folder = folder
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) and wait until it answers PING."""
        args = [
            self._binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._folder),
            "--protected-mode",
            "yes",
        ]
        self._process = subprocess.Popen(  # noqa: S603 - a fixed binary and arguments
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start ({self._process.returncode})")
            if self._answers():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("redis-server did not answer PING in time")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL) and wait for it to be gone."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=_START_TIMEOUT)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Yield a running loopback redis-server; fail (or skip, if asked) when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("FLUX_ASYNC_SKIP_REDIS") == "1":
            pytest.skip(f"{reason}; skipped because FLUX_ASYNC_SKIP_REDIS=1")
        pytest.fail(f"{reason}; set FLUX_ASYNC_SKIP_REDIS=1 to skip the fleet tests instead")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
