"""Signed result URLs in the shape of Azure blob SAS links, and Azure's XML refusals.

``{delivery_base}/results/{id}/sample.{ext}?se=...&sp=r&sv=...&sr=b&rsct=image/...&sig=...``
where ``se`` is the expiry (ISO 8601, whole seconds, UTC) and ``sig`` an HMAC-SHA256, in
base64, of the task id, extension and expiry under a key drawn from the seeded RNG.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
from datetime import UTC, datetime
from email.utils import formatdate
from urllib.parse import quote

from ._images import CONTENT_TYPES

__all__ = ["Signer", "azure_error", "format_se", "http_date", "parse_se"]

_SAS_VERSION = "2024-11-04"


def format_se(epoch: float) -> str:
    """Return ``epoch`` (floored to the second) as ``se`` writes it: 2026-11-22T10:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch)))


def parse_se(value: str) -> float | None:
    """Return the epoch second of an ``se`` value, or None when it is not one."""
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp()


class Signer:
    """Makes and checks result URLs; the key is derived from the simulator's seed."""

    def __init__(self, seed: int) -> None:
        self._key = random.Random(f"{seed}-signing").randbytes(32)

    def _sign(self, task_id: str, ext: str, se: str) -> str:
        message = f"{task_id}\n{ext}\n{se}\nr\n{_SAS_VERSION}".encode()
        return base64.b64encode(hmac.new(self._key, message, hashlib.sha256).digest()).decode()

    def url(self, base: str, task_id: str, ext: str, expiry: float) -> str:
        """Return the signed URL of ``task_id``'s image, valid until epoch ``expiry``."""
        se = format_se(expiry)
        query = [
            ("se", se),
            ("sp", "r"),
            ("sv", _SAS_VERSION),
            ("sr", "b"),
            ("rsct", CONTENT_TYPES[ext]),
            ("sig", self._sign(task_id, ext, se)),
        ]
        # Azure percent-encodes the expiry's colons and the signature's + / =, not rsct's /.
        encoded = "&".join(f"{k}={quote(v, safe='/' if k == 'rsct' else '')}" for k, v in query)
        return f"{base}/results/{task_id}/sample.{ext}?{encoded}"

    def verify(self, task_id: str, ext: str, query: dict[str, str]) -> float | None:
        """Return the URL's expiry (epoch seconds) if its signature holds, else None."""
        se, sig = query.get("se", ""), query.get("sig", "")
        expiry = parse_se(se)
        if expiry is None or query.get("sp") != "r":
            return None
        if not hmac.compare_digest(sig.encode(), self._sign(task_id, ext, se).encode()):
            return None
        return expiry

    def __repr__(self) -> str:
        return "Signer(key=<hidden>)"


def azure_error(code: str, detail: str, now: float) -> bytes:
    """Return an Azure Storage error body (``<Error><Code>...``) stamped at epoch ``now``."""
    messages = {
        "AuthenticationFailed": (
            "Server failed to authenticate the request. Make sure the value of "
            "Authorization header is formed correctly including the signature."
        ),
        "BlobNotFound": "The specified blob does not exist.",
    }
    request_id = hashlib.sha256(f"{code}{now}".encode()).hexdigest()[:32]
    message = (
        f"{messages.get(code, code)}\nRequestId:{request_id}\n"
        f"Time:{time.strftime('%Y-%m-%dT%H:%M:%S.0000000Z', time.gmtime(now))}"
    )
    extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}</Error>"
    )
    return body.encode()


def http_date(epoch: float) -> str:
    """Return ``epoch`` in the HTTP date form Azure uses in its error details."""
    return formatdate(epoch, usegmt=True)
