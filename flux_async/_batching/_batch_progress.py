"""A batch's progress: plain counters the runner updates, and a rich live view of them.

The runner only touches :class:`BatchProgress` (a few integers, no I/O). The view,
:class:`ProgressDisplay`, reads them from rich's refresh thread; rich belongs to the
``cli`` extra and is imported only when a display is opened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

__all__ = ["BatchProgress", "ProgressDisplay", "format_duration"]


@dataclass
class BatchProgress:
    """Live counters of a batch run. Seconds come from ``time.monotonic``.

    ``saved``, ``failed`` and ``spent`` (credits) count the whole folder, earlier runs
    included; ``submitted`` counts this run's submits; ``submitting``, ``generating``
    and ``saving`` are the items in each stage now; ``not_saved`` counts this run's
    finished images the disk refused (left ``ready`` for a re-run).
    """

    total: int = 0
    saved: int = 0
    failed: int = 0
    submitted: int = 0
    submitting: int = 0
    generating: int = 0
    saving: int = 0
    not_saved: int = 0
    spent: float = 0.0
    saved_at_start: int = 0
    failed_at_start: int = 0
    stopped: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def remaining(self) -> int:
        """Return how many items are neither saved nor failed."""
        return max(self.total - self.saved - self.failed, 0)

    def rate(self, now: float | None = None) -> float:
        """Return items finished (saved or failed) this run per second."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        done = self.saved + self.failed - self.saved_at_start - self.failed_at_start
        return done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        """Return seconds until every item is finished at the current rate (None: unknown)."""
        rate = self.rate(now)
        return self.remaining / rate if rate > 0 else None


def format_duration(seconds: float | None) -> str:
    """Return ``seconds`` as ``1h02m``, ``3m05s`` or ``12s`` (``-`` when None)."""
    if seconds is None:
        return "-"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressDisplay:
    """A rich live view of a :class:`BatchProgress` on ``file`` (stderr by default).

    Use as a context manager around the run; it refreshes ``refresh_per_second`` times a
    second from rich's own thread and leaves the last frame on screen.
    """

    def __init__(
        self, progress: BatchProgress, *, file: IO[str] | None = None, refresh_per_second: float = 4
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        self._progress = progress
        console = Console(file=file, stderr=file is None)
        self._live = Live(_View(progress), console=console, refresh_per_second=refresh_per_second)

    def __enter__(self) -> ProgressDisplay:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)


class _View:
    """What rich renders each refresh: a bar and one line of counters."""

    def __init__(self, progress: BatchProgress) -> None:
        self._progress = progress

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        p = self._progress
        done = p.saved + p.failed
        bar = ProgressBar(total=max(p.total, 1), completed=done, width=40)
        head = Text.assemble(
            (f"{done}/{p.total} ", "bold"),
            (f"saved {p.saved}", "green"),
            "  ",
            (f"failed {p.failed}", "red" if p.failed else ""),
        )
        line = Text(
            f"submitting {p.submitting}  generating {p.generating}  saving {p.saving}  "
            f"submitted {p.submitted}  credits {p.spent:.2f}  "
            f"{p.rate():.1f}/s  ETA {format_duration(p.eta())}"
        )
        parts: list[Any] = [Group(bar, head), line]
        if p.stopped:
            parts.append(Text(f"stopping: {p.stopped}", "yellow"))
        return Group(*parts)
