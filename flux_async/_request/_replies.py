"""What a poll reply that ends a task badly means: the error each failure status raises.

Pure functions from a :class:`PollReply` to the :class:`TaskError` the scheduler resolves
the task with; every error names the task id and keeps the reply.
"""

from __future__ import annotations

from .._core._text import clean_text
from .._errors import (
    GenerationError,
    ModerationError,
    TaskError,
    TaskNotFoundError,
    UnknownStatusError,
)
from ._models import PollReply, Status

__all__ = ["failure_for", "not_found", "ready_without_sample", "unknown_status"]


def failure_for(task_id: str, reply: PollReply) -> TaskError | None:
    """Return the error a terminal failure status ends the task with (None: not one)."""
    status = reply.status
    if status in (Status.REQUEST_MODERATED, Status.CONTENT_MODERATED):
        what = "prompt or input image" if status == Status.REQUEST_MODERATED else "generated image"
        return ModerationError(
            f"{status}: the provider refused the {what}; not billed",
            task_id=task_id,
            status=status,
            reply=reply,
        )
    if status in (Status.ERROR, Status.FAILED):
        return GenerationError(
            f"generation failed with status {status!r}",
            task_id=task_id,
            status=status,
            reply=reply,
        )
    return None


def not_found(task_id: str, reply: PollReply, age: float) -> TaskNotFoundError:
    """Return the error for "Task not found" ``age`` seconds after submit, past the grace."""
    return TaskNotFoundError(
        f"the server does not know this task ({age:.1f} s after submit)",
        task_id=task_id,
        status=reply.status,
        reply=reply,
    )


def unknown_status(task_id: str, reply: PollReply, lasted: float) -> UnknownStatusError:
    """Return the error for a status nobody knows that lasted ``lasted`` seconds."""
    return UnknownStatusError(
        f"unknown status {clean_text(reply.status, 60)!r} lasted {lasted:.0f} s",
        task_id=task_id,
        status=reply.status,
        reply=reply,
    )


def ready_without_sample(task_id: str, reply: PollReply) -> GenerationError:
    """Return the error for a Ready reply that carries no ``result.sample`` URL."""
    return GenerationError(
        "status Ready without a result.sample URL",
        task_id=task_id,
        status=reply.status,
        reply=reply,
    )
