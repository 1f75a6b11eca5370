"""What the API says back, and what flux_async hands to its users.

Replies are parsed leniently: unknown fields are kept (``extra="allow"``) because the
server adds fields over time. Requests live in ``_requests.py`` and are strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from .._errors import FluxError
from ._data_urls import shown_data_url

__all__ = [
    "GeneratedImage",
    "Outcome",
    "PollReply",
    "SampleResult",
    "Status",
    "SubmitReply",
    "Task",
    "TaskResult",
    "redact_url",
]


class Status:
    """The status strings of PROTOCOL.md's table (``get_result``'s ``status``)."""

    PENDING = "Pending"
    READY = "Ready"
    REQUEST_MODERATED = "Request Moderated"
    CONTENT_MODERATED = "Content Moderated"
    ERROR = "Error"
    FAILED = "Failed"
    NOT_FOUND = "Task not found"

    TERMINAL_FAILURES = frozenset({REQUEST_MODERATED, CONTENT_MODERATED, ERROR, FAILED})
    KNOWN = frozenset({PENDING, READY, NOT_FOUND}) | TERMINAL_FAILURES


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SubmitReply(_Lenient):
    """The body of a successful ``POST /v1/{model}``."""

    id: str
    polling_url: str | None = None
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None
    status: str | None = None
    webhook_url: str | None = None


class SampleResult(_Lenient):
    """``result`` of a Ready poll reply."""

    sample: str | None = None
    prompt: str | None = None
    seed: int | None = None
    start_time: float | None = None
    end_time: float | None = None
    duration: float | None = None


class PollReply(_Lenient):
    """The body of ``GET polling_url``."""

    id: str | None = None
    status: str
    result: SampleResult | Any | None = None
    progress: float | None = None
    details: Any = None
    preview: Any = None

    def sample(self) -> SampleResult | None:
        """Return ``result`` as a :class:`SampleResult` when it has that shape."""
        if isinstance(self.result, SampleResult):
            return self.result
        if isinstance(self.result, dict):
            return SampleResult.model_validate(self.result)
        return None


class Task(BaseModel):
    """One submitted task: what ``flux.submit()`` returns and ``flux.wait()`` takes.

    ``polling_url`` is exactly what the server returned (it names the cluster holding the
    task); ``submitted_at`` is on the client's monotonic clock.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    polling_url: str | None
    model: str
    provider: str
    cost: float | None = None
    prompt: str | None = None
    submitted_at: float = 0.0
    output_format: str | None = None
    # Providers whose submit already returns the image (the OpenAI-style relays) put the
    # finished reply here; the scheduler resolves such a task without polling.
    immediate: PollReply | None = None
    reply: dict[str, Any] = Field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, model={self.model!r}, provider={self.provider!r})"


class TaskResult(BaseModel):
    """A task that reached ``Ready``: what ``flux.wait()`` returns and ``flux.save()`` takes.

    ``sample_url`` is a signed URL that expires minutes after the task ended: save the
    image soon (``flux.save``), and never log or store the URL.

    Examples:
        ```python
        result = await flux.wait(await flux.submit(prompt="a red fox"))
        path = await flux.save(result, "out")
        ```
    """

    model_config = ConfigDict(frozen=True)

    task: Task
    sample_url: str
    seed: int | None = None
    prompt: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    ready_at: float = 0.0
    reply: PollReply | None = Field(default=None, repr=False)

    @property
    def task_id(self) -> str:
        return self.task.id

    def __repr__(self) -> str:
        return (
            f"TaskResult(task_id={self.task.id!r}, sample_url={redact_url(self.sample_url)!r}, "
            f"seed={self.seed!r})"
        )


class GeneratedImage(BaseModel):
    """An image saved to disk: what ``flux.generate()`` returns.

    ``path`` is the saved file, ``cost`` the credits the server quoted, ``size`` its
    bytes, ``prompt_used`` the prompt the server used (after upsampling).

    Examples:
        ```python
        image = await flux.generate("a red fox", output_dir="out")
        print(image.path, image.task_id, image.seed, image.cost)
        ```
    """

    model_config = ConfigDict(frozen=True)

    path: Path
    task_id: str
    model: str
    prompt: str | None
    seed: int | None = None
    cost: float | None = None
    size: int = 0
    prompt_used: str | None = None  # the prompt the server used (after upsampling)


class Outcome(BaseModel):
    """One item of ``generate_many``: an image or the error that ended it, never both.

    ``index`` is the item's position in the input. A failed item does not raise; its
    ``error`` says why, and ``may_be_billed`` says whether it may still have cost credits.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    index: int
    prompt: str | None = None
    image: GeneratedImage | None = None
    error: FluxError | None = None
    task_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None

    @property
    def path(self) -> Path | None:
        return self.image.path if self.image else None

    @property
    def may_be_billed(self) -> bool:
        return bool(getattr(self.error, "may_be_billed", False)) or self.task_id is not None


def redact_url(url: str) -> str:
    """Return ``url`` without its query string: signed URLs carry their secret there.

    A ``data:`` URL (an inline image from a relay) shows its header and length only.
    """
    if url[:5].lower() == "data:":
        return shown_data_url(url)
    parts = urlsplit(url)
    query = "?<redacted>" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query}"


def url_expiry(url: str) -> str | None:
    """Return the ``se`` (signed expiry) query parameter of an Azure SAS URL, if any."""
    values = parse_qs(urlsplit(url).query).get("se")
    return values[0] if values else None
