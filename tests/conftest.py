"""Shared fixtures: the anyio backend is pinned to asyncio, the only loop the library targets."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# A real loopback redis-server for the fleet tests (tests/_redis.py).
from tests._redis import redis_server  # noqa: E402, F401
