"""Verify, de-duplicate and parse BFL webhook deliveries.

This module is pure: it never does I/O and never resolves a task. The client feeds it a
delivery (headers and the raw body bytes) and acts on the :class:`WebhookEvent` it gets back.

What BFL documents, and what this module decides where BFL is silent:

- **Authentication.** BFL's docs say the ``webhook_secret`` of the request comes back
  verbatim in ``X-Webhook-Secret``; one BFL text claims ``X-BFL-Signature:
  sha256=<hex of HMAC-SHA256(secret, raw body)>`` instead. Either is accepted (bare hex
  too), both compared with :func:`hmac.compare_digest`. The HMAC covers the body only,
  as PROTOCOL.md says, so a timestamp header is *not* authenticated.
- **Body.** Undocumented: the ``get_result`` shape (``id``, ``status``, ``result``) or
  ``{"task_id", "status": "SUCCESS" | "FAILED" | ..., "result": {...}}``. Statuses are
  normalised to PROTOCOL.md's (see :data:`STATUS_ALIASES`); an unknown one is kept raw.
- **Duplicates.** A delivery whose body bytes were already accepted within the replay
  window is a duplicate: :meth:`WebhookVerifier.accept` returns None and the caller answers
  200 ("ignored"), so an honest sender stops retrying. Identical bytes carry identical
  news, so dropping them is always safe; a header id (``X-Webhook-Id``...) is kept only for
  logs, because nothing says whether it names a delivery, an attempt or a task. So no
  delivery is refused as "replayed": a duplicate is ignored, never an error.
- **Replays.** Within the window a replay is a duplicate. When a timestamp header is
  present, a delivery older than the window (or too far ahead) is refused as ``stale``.
  Since the timestamp is unsigned, a replay after the window with a forged timestamp gets
  through: the caller's own checks (task unknown or already finished → ignore; a Ready
  claim confirmed by one poll) are the last line, and they suffice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import secrets
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal

from .._core._clock import Clock
from .._errors import ConfigurationError, FluxError
from .._request._models import Status, redact_url

__all__ = [
    "STATUS_ALIASES",
    "RejectReason",
    "WebhookEvent",
    "WebhookRejected",
    "WebhookStatistics",
    "WebhookVerifier",
    "new_webhook_secret",
    "normalise_status",
    "parse_event",
    "sign_body",
    "verify_signature",
]

logger = logging.getLogger("flux_async")

SECRET_HEADER: Final = "x-webhook-secret"  # noqa: S105 -- a header name, not a secret
SIGNATURE_HEADERS: Final = ("x-bfl-signature", "x-webhook-signature")
TIMESTAMP_HEADERS: Final = ("x-webhook-timestamp", "x-bfl-timestamp", "webhook-timestamp")
ID_HEADERS: Final = ("x-webhook-id", "x-bfl-webhook-id", "webhook-id", "x-request-id")
_MAX_ID_CHARS: Final = 256
_MAX_STATUS_CHARS: Final = 128
# Epoch seconds pass 1e11 only in the year 5138; above it the sender meant milliseconds.
_MILLISECONDS_FROM: Final = 1e11

RejectReason = Literal["missing signature", "bad signature", "malformed body", "stale", "too large"]

# Auth failures answer 401; a stale delivery 400, like a malformed one: the sender did
# nothing a retry could fix. Duplicates are not rejections at all (accept returns None).
_HTTP_STATUS: Final[dict[str, int]] = {
    "missing signature": 401,
    "bad signature": 401,
    "malformed body": 400,
    "stale": 400,
    "too large": 413,
}

_SPELLINGS: Final = {
    Status.READY: ("ready", "success", "succeeded", "completed", "complete"),
    Status.PENDING: ("pending", "queued", "processing", "running", "in progress"),
    Status.REQUEST_MODERATED: ("request moderated",),
    Status.CONTENT_MODERATED: ("content moderated",),
    Status.ERROR: ("error", "errored"),
    Status.FAILED: ("failed", "failure"),
    Status.NOT_FOUND: ("task not found", "not found"),
}
STATUS_ALIASES: Final[Mapping[str, str]] = {
    spelling: status for status, spellings in _SPELLINGS.items() for spelling in spellings
}
"""Status spellings (lower case, ``_``/``-``/spaces folded to one space) → PROTOCOL.md's.

``ERROR`` maps to ``Error`` and ``FAILED`` to ``Failed``: both end a task with
:class:`GenerationError`, and keeping them apart keeps the sender's word in logs.
Vague words (``done``, ``finished``, ``moderated``) stay unknown; the caller polls.
"""

_SEPARATORS = re.compile(r"[\s_\-]+")


class WebhookRejected(FluxError):
    """Raised when a delivery is refused: forged, unsigned, malformed, stale or too large.

    ``reason`` is one of :data:`RejectReason`; ``http_status`` is what to answer the sender
    (401 for missing or bad credentials, 400 for a malformed or stale delivery, 413 for
    an oversized body). The message never holds the secret or any header value.
    """

    def __init__(self, reason: RejectReason, detail: str | None = None) -> None:
        self.reason: RejectReason = reason
        self.http_status = _HTTP_STATUS[reason]
        super().__init__(f"webhook rejected: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True, slots=True, repr=False)
class WebhookEvent:
    """One verified delivery: what the sender claims happened to a task.

    ``status`` is normalised to PROTOCOL.md's statuses (or the raw string when unknown);
    ``delivery_id`` is the SHA-256 hex of the raw body, the key for duplicate detection;
    ``sender_delivery_id`` is a header-provided id, for logs only; ``received_at`` is
    wall-clock epoch seconds.
    """

    task_id: str
    status: str
    raw_status: str
    result: dict[str, Any] | None
    delivery_id: str
    received_at: float
    sender_delivery_id: str | None = None

    @property
    def needs_confirmation(self) -> bool:
        """Return True unless the event says Pending: confirm the claim with one poll first.

        For Ready the image URL must come from the API host, not from the delivery; for a
        failure, a mis-mapped status must not end a task that may be billed.
        """
        return self.status != Status.PENDING

    def __repr__(self) -> str:
        sample = self.result.get("sample") if self.result else None
        shown = f", sample={redact_url(sample)!r}" if isinstance(sample, str) else ""
        return (
            f"WebhookEvent(task_id={self.task_id!r}, status={self.status!r}, "
            f"raw_status={self.raw_status!r}, delivery_id={self.delivery_id[:12]!r}{shown})"
        )


@dataclass(frozen=True, slots=True)
class WebhookStatistics:
    """Counters of a :class:`WebhookVerifier`, for export as metrics."""

    accepted: int
    duplicates: int
    rejected: dict[str, int]
    remembered: int

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def normalise_status(raw: str) -> str:
    """Return PROTOCOL.md's spelling of ``raw``, or ``raw`` itself when it is unknown."""
    return STATUS_ALIASES.get(_SEPARATORS.sub(" ", raw.strip().lower()), raw)


def sign_body(body: bytes, secret: str) -> str:
    """Return ``"sha256=<hex>"``, the HMAC-SHA256 of ``body`` keyed by ``secret``."""
    return "sha256=" + hmac.new(_raw(secret), body, hashlib.sha256).hexdigest()


def new_webhook_secret() -> str:
    """Return a fresh random secret (256 bits, URL-safe) to send as ``webhook_secret``."""
    return secrets.token_urlsafe(32)


def verify_signature(headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Check that a delivery carries ``secret`` echoed or an HMAC of ``body``; else raise.

    Header names are case-insensitive. ``X-Webhook-Secret`` must equal ``secret``;
    ``X-BFL-Signature`` (or ``X-Webhook-Signature``) must be ``sha256=<hex>`` or bare
    hex of HMAC-SHA256(secret, body). One valid credential suffices. Raises
    :class:`WebhookRejected` (``missing signature`` / ``bad signature``).
    """
    if not secret:
        raise ConfigurationError("the webhook secret must not be empty")
    lowered = _lower(headers)
    echoed = lowered.get(SECRET_HEADER)
    signature = next((lowered[h] for h in SIGNATURE_HEADERS if h in lowered), None)
    if echoed is None and signature is None:
        raise WebhookRejected("missing signature")
    key = _raw(secret)
    matches: list[bool] = []
    if echoed is not None:
        matches.append(hmac.compare_digest(_raw(echoed), key))
    if signature is not None:
        provided = signature.strip()
        if provided[:7].lower() == "sha256=":
            provided = provided[7:].strip()
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        matches.append(hmac.compare_digest(_raw(provided.lower()), expected.encode()))
    if not any(matches):
        raise WebhookRejected("bad signature")


def parse_event(
    body: bytes, *, now: float, headers: Mapping[str, str] | None = None
) -> WebhookEvent:
    """Parse a delivery's raw body into a :class:`WebhookEvent` received at ``now``.

    ``now`` is wall-clock epoch seconds. ``headers`` (optional) supply the sender's
    delivery id. The task id is ``task_id`` or else ``id``; ``result`` is kept when it is
    an object, else None. Raises :class:`WebhookRejected` (``malformed body``).
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise WebhookRejected("malformed body", "not JSON") from exc
    if not isinstance(data, dict):
        raise WebhookRejected("malformed body", "not a JSON object")
    task_id = data.get("task_id")
    if task_id is None:
        task_id = data.get("id")
    if not isinstance(task_id, str) or not task_id.strip() or len(task_id) > _MAX_ID_CHARS:
        raise WebhookRejected("malformed body", "no task id")
    raw_status = data.get("status")
    if not isinstance(raw_status, str) or not raw_status.strip():
        raise WebhookRejected("malformed body", "no status")
    if len(raw_status) > _MAX_STATUS_CHARS:
        raise WebhookRejected("malformed body", "status too long")
    result = data.get("result")
    sender_id = None
    if headers is not None:
        lowered = _lower(headers)
        sender_id = next((lowered[h] for h in ID_HEADERS if lowered.get(h)), None)
    return WebhookEvent(
        task_id=task_id.strip(),
        status=normalise_status(raw_status),
        raw_status=raw_status,
        result=result if isinstance(result, dict) else None,
        delivery_id=hashlib.sha256(body).hexdigest(),
        received_at=now,
        sender_delivery_id=sender_id[:_MAX_ID_CHARS] if sender_id else None,
    )


class WebhookVerifier:
    """Verify, de-duplicate and parse deliveries; remember recent ones in bounded memory.

    A delivery is remembered (by body digest) for ``replay_window`` seconds, at most
    ``max_remembered`` of them, oldest forgotten first. A timestamp header, when present
    (epoch seconds or milliseconds, ISO 8601 or an HTTP date), must lie within
    ``replay_window`` seconds before now and ``future_tolerance`` seconds after; an
    unreadable one is refused as stale. Bodies over ``max_body_bytes`` are refused unread.
    """

    def __init__(
        self,
        secret: str,
        *,
        clock: Clock,
        replay_window: float = 600.0,
        max_remembered: int = 100_000,
        future_tolerance: float = 300.0,
        max_body_bytes: int = 1_048_576,
    ) -> None:
        if not secret:
            raise ConfigurationError("the webhook secret must not be empty")
        if not replay_window > 0 or not future_tolerance >= 0:
            raise ConfigurationError("replay_window must be > 0 and future_tolerance >= 0")
        if max_remembered < 1 or max_body_bytes < 1:
            raise ConfigurationError("max_remembered and max_body_bytes must be >= 1")
        self._secret = secret
        self._clock = clock
        self.replay_window = replay_window
        self.max_remembered = max_remembered
        self.future_tolerance = future_tolerance
        self.max_body_bytes = max_body_bytes
        # delivery id -> monotonic time it may be forgotten; insertion order is age order.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._accepted = 0
        self._duplicates = 0
        self._rejected: Counter[str] = Counter()

    def accept(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """Return the delivery's event, or None for a duplicate; raise if it is refused.

        Raises :class:`WebhookRejected`. Credentials are checked before anything else is
        looked at, so an unauthenticated sender can neither fill memory nor probe it.
        """
        try:
            if len(body) > self.max_body_bytes:
                raise WebhookRejected("too large")
            verify_signature(headers, body, self._secret)
            ahead = self._check_timestamp(headers)
            event = parse_event(body, now=self._clock.time(), headers=headers)
        except WebhookRejected as exc:
            self._rejected[exc.reason] += 1
            logger.info("webhook rejected: %s", exc.reason, extra={"reason": exc.reason})
            raise
        now = self._clock.monotonic()
        self._forget_expired(now)
        key = event.delivery_id
        forget_at = self._seen.get(key)
        if forget_at is not None and forget_at > now:
            self._duplicates += 1
            logger.debug("webhook duplicate ignored", extra={"task_id": event.task_id})
            return None
        if forget_at is not None:
            # Expired but kept behind a longer-lived entry: re-insert at the young end.
            del self._seen[key]
        # A delivery stamped ahead of our clock stays fresh for longer; remember it as long.
        self._seen[key] = now + self.replay_window + ahead
        while len(self._seen) > self.max_remembered:
            self._seen.popitem(last=False)
        self._accepted += 1
        logger.debug("webhook accepted: task %s %s", event.task_id, event.status)
        return event

    def statistics(self) -> WebhookStatistics:
        """Return counters: accepted, duplicates, rejected by reason, ids remembered."""
        return WebhookStatistics(
            accepted=self._accepted,
            duplicates=self._duplicates,
            rejected=dict(self._rejected),
            remembered=len(self._seen),
        )

    def _check_timestamp(self, headers: Mapping[str, str]) -> float:
        """Return how many seconds ahead of our clock the delivery is stamped (>= 0)."""
        lowered = _lower(headers)
        value = next((lowered[h] for h in TIMESTAMP_HEADERS if h in lowered), None)
        if value is None:
            return 0.0
        stamp = _parse_timestamp(value)
        if stamp is None:
            raise WebhookRejected("stale", "unreadable timestamp")
        age = self._clock.time() - stamp
        if age > self.replay_window:
            raise WebhookRejected("stale", f"sent {age:.0f} s ago")
        if -age > self.future_tolerance:
            raise WebhookRejected("stale", f"stamped {-age:.0f} s in the future")
        return max(0.0, -age)

    def _forget_expired(self, now: float) -> None:
        while self._seen:
            key, forget_at = next(iter(self._seen.items()))
            if forget_at > now:
                return
            del self._seen[key]

    def __repr__(self) -> str:
        return (
            f"WebhookVerifier(secret='***', replay_window={self.replay_window}, "
            f"remembered={len(self._seen)}, accepted={self._accepted})"
        )


def _raw(text: str) -> bytes:
    # compare_digest refuses non-ASCII str; a header may hold anything, so compare bytes.
    return text.encode("utf-8", "surrogatepass")


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _parse_timestamp(value: str) -> float | None:
    """Return epoch seconds from a number (s or ms), ISO 8601 or HTTP date; else None."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            return None
        return number / 1000 if abs(number) >= _MILLISECONDS_FROM else number
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
