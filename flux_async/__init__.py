"""flux_async: an asyncio client for the Black Forest Labs FLUX API and its relays."""

from __future__ import annotations
