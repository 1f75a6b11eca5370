"""What a batch leaves behind besides its images: ``results.jsonl`` and ``index.html``.

Both are written from the ledger, the source of truth, in input order, streamed page by
page (constant memory at any batch size) into a temp file in ``DIR`` that is renamed
into place only when complete: a reader never sees half a report. Neither ever shows a
signed URL's query string.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
from collections.abc import AsyncIterator, Collection
from pathlib import Path, PurePath
from types import TracebackType
from typing import IO, Any, Protocol
from urllib.parse import quote

import anyio

from .._core._text import clean_text
from .._request._models import redact_url
from ._ledger_schema import ItemState, LedgerItem

__all__ = [
    "CONTACT_SHEET_NAME",
    "RESULTS_NAME",
    "LedgerView",
    "relative_path",
    "result_record",
    "result_status",
    "strip_control",
    "write_contact_sheet",
    "write_results_jsonl",
]

RESULTS_NAME = "results.jsonl"
CONTACT_SHEET_NAME = "index.html"
_URL = re.compile(r"https?://[^\s'\"<>]+")


def strip_control(text: str, limit: int | None = None) -> str:
    """Return ``text`` safe for a terminal, a report or a log line (see ``_text.clean_text``).

    Without ``limit`` nothing is cut: a prompt is the user's own and stays whole.
    """
    return clean_text(text, len(text) if limit is None else limit)


_BUFFER_CHARS = 1 << 16


class LedgerView(Protocol):
    """What the report writers read of a ledger.

    (A :class:`~flux_async._batching._ledger.Ledger`.)
    """

    def iter_items(
        self, states: Collection[ItemState] | None = None, *, batch: int = 500
    ) -> AsyncIterator[LedgerItem]: ...

    async def counts(self) -> dict[ItemState, int]: ...

    async def spent(self) -> float: ...


def result_status(item: LedgerItem) -> str:
    """Return ``"ok"`` for a saved item, ``"failed"`` for a failed one, else ``"pending"``."""
    if item.state is ItemState.SAVED:
        return "ok"
    if item.state is ItemState.FAILED:
        return "failed"
    return "pending"


def relative_path(path: str | None, directory: Path) -> str | None:
    """Return ``path`` relative to ``directory`` in POSIX form (``None`` stays ``None``).

    A relative path is taken as relative to ``directory`` already; an absolute one is
    made relative (``../`` if it lies outside), or kept absolute on another drive.
    """
    if path is None:
        return None
    candidate = Path(path)
    if not candidate.is_absolute():
        return PurePath(candidate).as_posix()
    try:
        return Path(os.path.relpath(candidate, os.path.abspath(directory))).as_posix()
    except ValueError:  # another drive on Windows: there is no relative path
        return candidate.as_posix()


def _scrub_urls(text: str | None) -> str | None:
    # Error texts may quote a URL; a signed query in one is a credential until it expires.
    return None if text is None else _URL.sub(lambda m: redact_url(m.group(0)), text)


def _clean(text: str | None) -> str | None:
    return None if text is None else strip_control(text)


def result_record(item: LedgerItem, directory: Path) -> dict[str, Any]:
    """Return the ``results.jsonl`` object of one item (no URL is included)."""
    return {
        "index": item.index,
        "prompt": item.prompt,
        "status": result_status(item),
        "state": item.state.value,
        "path": relative_path(item.path, directory),
        "task_id": item.task_id,
        "seed": item.seed,
        "cost": item.cost,
        "error": _clean(_scrub_urls(item.error)),
        "may_be_billed": item.may_be_billed,
        "name": item.name,
        "model": item.model,
        "sha256": item.sha256,
        "prompt_used": _clean(item.prompt_used),
    }


async def write_results_jsonl(ledger: LedgerView, directory: Path) -> Path:
    """Write ``DIR/results.jsonl``: one JSON object per item, in input order; return its path.

    ``status`` is ``"ok"``, ``"failed"``, or ``"pending"`` for an item not finished (the
    exact ledger state is in ``state``); ``path`` is relative to ``DIR``.
    """
    target = directory / RESULTS_NAME
    async with _AtomicText(target) as out:
        async for item in ledger.iter_items():
            record = result_record(item, directory)
            await out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return target


async def write_contact_sheet(ledger: LedgerView, directory: Path, *, title: str) -> Path:
    """Write ``DIR/index.html``, a self-contained contact sheet of every item; return its path.

    The page needs no server, script or network: inline CSS, thumbnails by relative
    URL (lazy-loaded), every prompt and reason HTML-escaped.
    """
    counts = await ledger.counts()
    spent = await ledger.spent()
    ok = counts[ItemState.SAVED]
    failed = counts[ItemState.FAILED]
    pending = sum(counts.values()) - ok - failed
    target = directory / CONTACT_SHEET_NAME
    async with _AtomicText(target) as out:
        await out.write(
            _PAGE_HEAD.format(
                title=html.escape(title),
                ok=ok,
                failed=failed,
                pending=pending,
                total=ok + failed + pending,
                spent=html.escape(_number(spent)),
            )
        )
        async for item in ledger.iter_items():
            await out.write(_card(item, directory))
        await out.write(_PAGE_TAIL)
    return target


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _card(item: LedgerItem, directory: Path) -> str:
    status = result_status(item)
    esc = html.escape
    prompt = esc(strip_control(item.prompt or ""))
    rel = relative_path(item.path, directory)
    if status == "ok" and rel is not None:
        href = esc(quote(rel, safe="/"))
        picture = (
            f'<a href="{href}"><img loading="lazy" decoding="async" src="{href}" '
            f'alt="{esc(strip_control(item.prompt or "", 200))}"></a>'
        )
    else:
        picture = f'<div class="blank">{esc(item.state.value)}</div>'
    lines = [
        f'<figure class="item {status}" id="item-{item.index}">',
        picture,
        "<figcaption>",
        f'<div class="meta"><span class="idx">#{item.index}</span> '
        f'<span class="status">{esc(status)}</span></div>',
        f'<p class="prompt">{prompt}</p>' if prompt else "",
        '<dl class="facts">',
        f"<dt>seed</dt><dd>{esc(str(item.seed)) if item.seed is not None else '-'}</dd>",
        f"<dt>cost</dt><dd>{esc(_number(item.cost))}</dd>",
        f"<dt>model</dt><dd>{esc(item.model)}</dd>",
        f"<dt>file</dt><dd>{esc(rel)}</dd>" if rel else "",
        "</dl>",
    ]
    if status == "failed":
        billed = " (may have been billed)" if item.may_be_billed else ""
        error = _clean(_scrub_urls(item.error)) or "failed"
        lines.append(f'<p class="error">{esc(error)}{billed}</p>')
    lines.append("</figcaption></figure>\n")
    return "\n".join(line for line in lines if line)


class _AtomicText:
    """A text file written through a temp file in the same folder, renamed in on success.

    Writes are buffered and handed to a worker thread in large pieces, so the event loop
    never blocks on the disk. On any error (cancellation included) the temp file is
    removed and an older file under the final name is left as it was.
    """

    def __init__(self, target: Path) -> None:
        self._target = target
        self._temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        self._fh: IO[str] | None = None
        self._buffer: list[str] = []
        self._buffered = 0

    async def __aenter__(self) -> _AtomicText:
        def create() -> IO[str]:
            self._target.parent.mkdir(parents=True, exist_ok=True)
            # 0o666 under the umask, like any file the user makes: a temp file's 0o600
            # would otherwise stick to the report once it is renamed into place.
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            return open(fd, "w", encoding="utf-8", newline="\n")

        self._fh = await anyio.to_thread.run_sync(create)
        return self

    async def write(self, text: str) -> None:
        """Queue ``text``; write the queue out once it holds enough characters."""
        self._buffer.append(text)
        self._buffered += len(text)
        if self._buffered >= _BUFFER_CHARS:
            await self._drain()

    async def _drain(self) -> None:
        fh, text = self._fh, "".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        if fh is not None and text:
            await anyio.to_thread.run_sync(fh.write, text)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fh = self._fh
        if fh is None:
            return
        with anyio.CancelScope(shield=True):
            if exc_type is None:
                await self._drain()
                await anyio.to_thread.run_sync(self._finish, fh)
            else:
                await anyio.to_thread.run_sync(self._discard, fh)

    def _finish(self, fh: IO[str]) -> None:
        try:
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            self._discard(fh)
            raise
        fh.close()
        os.replace(self._temp, self._target)

    def _discard(self, fh: IO[str]) -> None:
        fh.close()
        self._temp.unlink(missing_ok=True)


_PAGE_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root {{ color-scheme: light dark; --line: #8884; --ok: #2a7; --bad: #d33; --wait: #b80; }}
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 1rem; max-width: 1600px; }}
header h1 {{ margin: 0 0 .25rem; font-size: 1.4rem; }}
.summary span {{ margin-right: 1rem; }}
.summary .ok {{ color: var(--ok); }} .summary .failed {{ color: var(--bad); }}
.summary .pending {{ color: var(--wait); }}
.grid {{ display: grid; gap: 1rem; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr));
  margin-top: 1rem; }}
.item {{ margin: 0; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; }}
.item img, .item .blank {{ display: block; width: 100%; aspect-ratio: 1; object-fit: cover; }}
.item .blank {{ display: grid; place-items: center; background: var(--line);
  text-transform: uppercase; letter-spacing: .1em; }}
.item.failed {{ border-color: var(--bad); }} .item.pending {{ border-color: var(--wait); }}
figcaption {{ padding: .5rem; }}
.meta {{ display: flex; justify-content: space-between; font-weight: 600; }}
.prompt {{ margin: .25rem 0; max-height: 7em; overflow: auto; overflow-wrap: anywhere; }}
.facts {{ display: grid; grid-template-columns: auto 1fr; gap: 0 .5rem; margin: 0; opacity: .8; }}
.facts dd {{ margin: 0; overflow-wrap: anywhere; }}
.error {{ color: var(--bad); margin: .25rem 0 0; overflow-wrap: anywhere; }}
</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p class="summary"><span class="ok">{ok} ok</span><span class="failed">{failed} failed</span>\
<span class="pending">{pending} pending</span><span>{total} items</span>\
<span>{spent} credits spent</span></p>
</header>
<main class="grid">
"""

_PAGE_TAIL = """</main>
</body>
</html>
"""
