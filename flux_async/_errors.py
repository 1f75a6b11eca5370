"""The exception tree of flux_async.

Everything the library raises derives from :class:`FluxError`::

    FluxError
    ├── ConfigurationError (ValueError)     bad client settings: no key, unknown provider/model
    ├── ValidationError (ValueError)        a request breaks a model rule; nothing was sent
    ├── ClientClosedError (RuntimeError)    the client was used before it opened or after it closed
    ├── APIError                            the API answered with an error status
    │   ├── BadRequestError                 400 / 422: the server refused the request's fields
    │   ├── AuthenticationError             401 / 403: the key is wrong or not allowed
    │   ├── InsufficientCreditsError        402: the account is out of credits
    │   ├── RateLimitError                  429: too many active tasks; nothing was created
    │   └── ServerError                     5xx
    ├── TransportError                      the request did not get an HTTP answer
    │   ├── ConnectError                    the connection never opened: surely nothing was sent
    │   └── RequestTimeoutError (TimeoutError)   connect/read/write/pool timeout
    ├── CoordinatorError                    the fleet's Redis failed or timed out (the client
    │                                       carries on with its local share of the cap)
    ├── AmbiguousSubmitError                a submit failed after it may have reached the server:
    │                                       the task may exist and may be billed; not replayed
    ├── MalformedReplyError (ValueError)    a 2xx reply that breaks the protocol: not JSON, too
    │                                       large, a field of the wrong type, an unusable URL
    ├── UnexpectedError (RuntimeError)      the last-resort guard: anything else that went wrong
    │                                       in one task's work; that task fails, the client goes on
    ├── TaskError                           a task ended without an image
    │   ├── ModerationError                 Request Moderated / Content Moderated (not billed)
    │   ├── GenerationError                 Error / Failed
    │   ├── TaskNotFoundError               Task not found, past the grace period
    │   ├── UnknownStatusError              an unknown status outlived its tolerance
    │   └── TaskTimeoutError (TimeoutError) the task's overall deadline passed
    └── DownloadError                       the finished image could not be saved
        ├── ResultExpiredError              the signed URL expired, even after one re-poll
        ├── IncompleteDownloadError         fewer/more bytes than Content-Length
        └── StorageError (OSError)          the local disk refused the image (full, read-only,
                                            I/O error, a path outside its folder); the task
                                            is still ready: saving it again needs no new submit

Every error carries the task id where one is known, and never the API key.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIError",
    "AmbiguousSubmitError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "CoordinatorError",
    "DownloadError",
    "FluxError",
    "GenerationError",
    "IncompleteDownloadError",
    "InsufficientCreditsError",
    "MalformedReplyError",
    "ModerationError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResultExpiredError",
    "ServerError",
    "StorageError",
    "TaskError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "TransportError",
    "UnexpectedError",
    "UnknownStatusError",
    "ValidationError",
]

_BODY_PREVIEW = 500


class FluxError(Exception):
    """Root of every error flux_async raises.

    ``message`` is the text without the task id; ``task_id`` names the task when there
    is one (``str()`` shows both). The cause, when there is one, is chained as
    ``__cause__``.

    Examples:
        ```python
        try:
            image = await flux.generate("a red fox")
        except ValidationError as exc:  # nothing was sent: fix the field
            print(exc.field, exc.rule)
        except FluxError as exc:  # anything else flux_async raises
            print(type(exc).__name__, exc.task_id, exc)
        ```
    """

    task_id: str | None

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id

    def __str__(self) -> str:
        if self.task_id:
            return f"{self.message} (task {self.task_id})"
        return self.message


class ConfigurationError(FluxError, ValueError):
    """Raised when the client is set up wrongly: no API key, an unknown provider or model."""


class ValidationError(FluxError, ValueError):
    """Raised before any HTTP when a request breaks a rule of its model.

    ``field`` names the offending field (``"width"``, ``"input_image_5"``), ``rule`` says
    what was expected; ``errors`` lists every ``(field, rule)`` found.
    """

    def __init__(
        self,
        field: str,
        rule: str,
        *,
        model: str | None = None,
        errors: list[tuple[str, str]] | None = None,
    ) -> None:
        self.field = field
        self.rule = rule
        self.model = model
        self.errors = errors if errors is not None else [(field, rule)]
        where = f" for model {model!r}" if model else ""
        text = "; ".join(f"{f}: {r}" for f, r in self.errors)
        super().__init__(f"invalid request{where}: {text}")


class ClientClosedError(FluxError, RuntimeError):
    """Raised when the client is used before ``async with`` opened it or after it closed."""


class APIError(FluxError):
    """Raised when the API answers with an error status.

    ``status_code`` is the HTTP status, ``body`` the parsed JSON body (or the text),
    ``request_id`` the server's request id header where it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        task_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id)
        self.status_code = status_code
        self.body = body
        self.request_id = request_id

    def __str__(self) -> str:
        return f"HTTP {self.status_code}: {super().__str__()}"


class BadRequestError(APIError):
    """Raised on 400 or 422; ``detail`` holds the server's validation detail."""

    @property
    def detail(self) -> Any:
        if isinstance(self.body, dict):
            return self.body.get("detail", self.body.get("error"))
        return self.body


class AuthenticationError(APIError):
    """Raised on 401 or 403 from an API host: the key is missing, wrong or not allowed."""


class InsufficientCreditsError(APIError):
    """Raised on 402: the account is out of credits. A batch stops submitting."""


class RateLimitError(APIError):
    """Raised on 429 when waiting and resubmitting did not help in time.

    A 429 on submit means the server created nothing. ``retry_after`` is in seconds.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(APIError):
    """Raised on a 5xx answer that was not a submit (polls and credits are safe to retry)."""


class TransportError(FluxError):
    """Raised when a request got no HTTP answer at all."""


class ConnectError(TransportError):
    """Raised when the connection never opened: the server surely saw nothing."""


class RequestTimeoutError(TransportError, TimeoutError):
    """Raised when a connect, read, write or pool timeout expired."""


class CoordinatorError(FluxError):
    """Raised when the fleet's coordinator (Redis) fails or does not answer in time.

    The client never lets it reach a caller: it carries on with its local share of the
    cap and rejoins the fleet when Redis answers again (docs/fleet.md).
    """


class AmbiguousSubmitError(FluxError):
    """Raised when a submit failed in a way that may have created (and billed) a task.

    A 500, 502 or 504, a read timeout, or a connection dropped after the body was sent
    leave it unknown whether the server made a task. flux_async never replays such a
    submit on its own (``retry_ambiguous=True`` opts in). ``may_be_billed`` is always True.
    """

    may_be_billed = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: Any = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(f"{message}; the task may have been created and billed", task_id=task_id)
        self.status_code = status_code
        self.body = body


class MalformedReplyError(FluxError, ValueError):
    """Raised when a 2xx reply breaks the protocol; ``raw`` shows the offending value.

    Not JSON, larger than ``max_reply_bytes``, a field of the wrong type (``"seed": 1.5``),
    an unusable URL. ``phase`` is ``"submit"``, ``"poll"``, ``"credits"`` or ``"webhook"``;
    ``field`` names the field (None: the whole body); ``raw`` is a short, printable form of
    what the server sent (truncated, control characters removed). A malformed submit
    reply may come from a task that exists: ``may_be_billed`` says so.
    """

    def __init__(
        self,
        message: str,
        *,
        phase: str,
        field: str | None = None,
        raw: str = "",
        task_id: str | None = None,
        may_be_billed: bool = False,
    ) -> None:
        where = f" field {field!r}" if field else ""
        shown = f": {raw}" if raw else ""
        super().__init__(f"malformed {phase} reply{where}: {message}{shown}", task_id=task_id)
        self.phase = phase
        self.field = field
        self.raw = raw
        self.may_be_billed = may_be_billed


class UnexpectedError(FluxError, RuntimeError):
    """Raised for one task when its work failed in a way nothing else foresaw.

    The last-resort guard of the scheduler and of the client's background work turns any
    exception that is not a :class:`FluxError` into this one (``__cause__`` holds the
    original, which is logged with its traceback at ERROR): that task fails, every other
    task and the client go on.
    """


class TaskError(FluxError):
    """Raised when a task reached a terminal status without an image.

    ``status`` is the status string the server gave; ``reply`` the last poll reply.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        status: str | None = None,
        reply: Any = None,
    ) -> None:
        super().__init__(message, task_id=task_id)
        self.status = status
        self.reply = reply


class ModerationError(TaskError):
    """Raised on ``Request Moderated`` (input refused) or ``Content Moderated`` (output refused).

    Neither is billed. ``details`` carries the server's reasons where it gave any.
    """

    @property
    def details(self) -> Any:
        return getattr(self.reply, "details", None)


class GenerationError(TaskError):
    """Raised on ``Error`` or ``Failed``: the generation itself failed."""


class TaskNotFoundError(TaskError):
    """Raised when the server still does not know the task after the grace period."""


class UnknownStatusError(TaskError):
    """Raised when an unrecognised status lasted longer than it is tolerated."""


class TaskTimeoutError(TaskError, TimeoutError):
    """Raised when a task did not reach a terminal status before its overall deadline."""


class DownloadError(FluxError):
    """Raised when a finished image could not be saved. ``url`` has no signed query."""

    def __init__(self, message: str, *, task_id: str | None = None, url: str | None = None) -> None:
        super().__init__(message, task_id=task_id)
        self.url = url


class ResultExpiredError(DownloadError):
    """Raised when the result URL expired (HTTP 403/404) and a re-poll gave no fresh one."""


class IncompleteDownloadError(DownloadError):
    """Raised when the body's length did not match Content-Length. No file is left behind."""


class StorageError(DownloadError, OSError):
    """Raised when the image could not be written locally (ENOSPC, EDQUOT, EIO, EROFS, ...).

    The task is finished and paid, and its image still waits on the server: a batch
    keeps such an item ``ready`` so a plain re-run re-polls for a fresh URL and saves it
    without a new submit. ``errno`` is the OS error number where there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        url: str | None = None,
        errno: int | None = None,
    ) -> None:
        DownloadError.__init__(self, message, task_id=task_id, url=url)
        self.errno = errno

    def __str__(self) -> str:
        return DownloadError.__str__(self)
