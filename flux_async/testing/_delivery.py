"""The result host: serves a task's image at its signed URL, as Azure blob storage does.

A wrong signature or an expired ``se`` answers 403 with Azure's XML; a task the
simulator forgot answers 404 ``BlobNotFound``. A single ``Range: bytes=...`` is honoured
(206, or 416 when it cannot be satisfied), since resuming downloaders rely on it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from ._asgi import Request, Response
from ._config import SimulatorConfig
from ._images import render
from ._signing import Signer, azure_error, http_date
from ._state import SimTask

__all__ = ["PATH", "deliver"]

PATH = re.compile(r"/results/([^/]+)/sample\.(jpeg|png|webp)")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_XML = "application/xml"


def deliver(
    request: Request,
    tasks: Mapping[str, SimTask],
    signer: Signer,
    now: float,
    config: SimulatorConfig,
) -> Response:
    """Answer a request for a result URL at wall-clock epoch second ``now``."""
    match = PATH.fullmatch(request.path)
    if match is None:
        return Response.json(404, {"detail": "Not Found"})
    task_id, ext = match.groups()
    expiry = signer.verify(task_id, ext, request.query)
    if expiry is None:
        detail = "Signature did not match. String to sign used was r"
        return Response.raw(403, azure_error("AuthenticationFailed", detail, now), _XML)
    if now > expiry:
        detail = (
            f"Signed expiry time [{http_date(expiry)}] must be after "
            f"signed start time [{http_date(now)}]"
        )
        return Response.raw(403, azure_error("AuthenticationFailed", detail, now), _XML)
    task = tasks.get(task_id)
    if task is None:
        return Response.raw(404, azure_error("BlobNotFound", "", now), _XML)
    image = render(ext, task.width, task.height, task.seed, config.image_bytes)
    headers = [
        ("content-type", image.content_type),
        ("accept-ranges", "bytes"),
        ("etag", f'"0x{hashlib.blake2b(task.id.encode(), digest_size=8).hexdigest().upper()}"'),
        ("x-ms-blob-type", "BlockBlob"),
    ]
    start, stop, status = 0, image.size, 200
    spec = request.headers.get("range")
    if spec is not None:
        bounds = _range(spec, image.size)
        if bounds is None:
            refusal = [("content-range", f"bytes */{image.size}")]
            return Response.raw(416, azure_error("InvalidRange", "", now), _XML, refusal)
        start, stop, status = *bounds, 206
        headers.append(("content-range", f"bytes {start}-{stop - 1}/{image.size}"))
    chunks = () if request.method == "HEAD" else image.chunks(start, stop)
    return Response(status, tuple(headers), chunks, stop - start)


def _range(spec: str, size: int) -> tuple[int, int] | None:
    """Return ``[start, stop)`` for one ``bytes=`` range, or None when unsatisfiable."""
    match = _RANGE.fullmatch(spec.strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, stop = max(0, size - int(last)), size
    else:
        start = int(first)
        stop = size if last == "" else min(size, int(last) + 1)
    return (start, stop) if start < stop else None
