"""The last-resort guard: an exception nobody foresaw fails one task, never the client.

Per-task work runs in task groups the client owns (the scheduler's poll jobs, webhook
confirmations, orphan saves, ``generate_many`` workers). An exception escaping one of
them would cancel the whole group: every other task, and the client. Each such place
catches what is left after the expected :class:`FluxError` cases and hands it to
:func:`unexpected`, which logs it with its traceback at ERROR and returns the
:class:`UnexpectedError` that task ends with instead.
"""

from __future__ import annotations

import logging

from .._errors import UnexpectedError
from ._text import clean_text

__all__ = ["unexpected"]

logger = logging.getLogger("flux_async")


def unexpected(exc: BaseException, *, task_id: str | None, where: str) -> UnexpectedError:
    """Log ``exc`` with its traceback and return the error its task fails with."""
    name = type(exc).__name__
    logger.error(
        "task %s: unexpected %s in %s; this task fails, the client goes on",
        task_id,
        name,
        where,
        exc_info=exc,
        extra={"task_id": task_id},
    )
    error = UnexpectedError(f"unexpected {name} in {where}: {clean_text(exc)}", task_id=task_id)
    error.__cause__ = exc
    return error
