"""Keeping signed URLs out of logs that the library does not write itself.

httpx logs every request at INFO (``HTTP Request: GET https://delivery...?se=...&sig=...``):
with logging configured at INFO, a signed result URL, which is a bearer credential for
the image until it expires, would reach the application's logs. On import, flux_async
adds a :class:`QueryRedactor` filter to the ``httpx`` logger and to httpcore's loggers:
every record they emit has each URL's query string replaced by ``<redacted>``. The
filter only rewrites records; it never drops one, adds a handler or changes a level.
"""

from __future__ import annotations

import logging
import re

__all__ = ["REDACTED_LOGGERS", "QueryRedactor", "install", "redact_queries"]

REDACTED_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
_URL_QUERY = re.compile(r"""((?:https?|wss?)://[^\s?#"'<>]*)\?[^\s#"'<>]*""", re.IGNORECASE)


def redact_queries(text: str) -> str:
    """Return ``text`` with the query string of every http(s) URL in it redacted."""
    return _URL_QUERY.sub(r"\1?<redacted>", text)


class QueryRedactor(logging.Filter):
    """A logging filter that redacts URL query strings in each record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to logging's handling
            return True
        cleaned = redact_queries(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


_FILTER = QueryRedactor()


def install() -> None:
    """Add the redacting filter to httpx's and httpcore's loggers (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
