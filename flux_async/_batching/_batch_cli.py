"""``flux-async batch``: the command-line face of :func:`~flux_async._batching._batch.run_batch`.

Ctrl-C once stops submitting, keeps generating tasks recorded for a later run, lets
downloads finish, writes the reports and exits 130; Ctrl-C again stops at once (the
reports are still written). SIGTERM does the same and exits 143 (128 + SIGTERM, as a
process killed by it would), so a service manager or container runtime that stops the
process gets the reports too. A prompt file without a single prompt is bad input
(exit 2, nothing written). Messages and the live display go to stderr; ``--json``
prints the summary on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import anyio

from .._cli_checks import not_accepted
from .._client import AsyncFlux
from .._errors import ConfigurationError, FluxError, ValidationError
from ._batch import BatchChangedError, BatchInputError, BatchSummary, run_batch
from ._batch_progress import BatchProgress, ProgressDisplay, format_duration
from ._ledger import LedgerError, LedgerFullError
from ._prompts import InputProblem, iter_prompt_file
from ._report import strip_control

__all__ = ["run_batch_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
_NOT_ACCEPTED = re.compile(r"not accepted by (?P<model>\S+) \(accepted: ")

OpenClient = Callable[..., AbstractAsyncContextManager[AsyncFlux]]


def _say(message: str) -> None:
    # Messages quote prompts and server text: no escape sequence reaches the terminal.
    print(strip_control(message), file=sys.stderr, flush=True)


def run_batch_command(
    args: argparse.Namespace, *, open_client: OpenClient, fields: dict[str, Any]
) -> int:
    """Run ``flux-async batch`` with parsed ``args``; return the exit status."""
    prompts = Path(args.prompts)
    if not prompts.is_file():
        _say(f"error: {prompts}: no such prompt file")
        return EXIT_USAGE
    if _holds_nothing(prompts):
        why = " (only blank lines or # comments)" if prompts.suffix.lower() == ".txt" else ""
        _say(f"error: {prompts} holds no prompts{why}; nothing to do")
        return EXIT_USAGE
    signals: list[signal.Signals] = []
    try:
        summary = anyio.run(_run, args, open_client, fields, signals)
    except KeyboardInterrupt:
        _say("interrupted; re-run the same command to resume")
        return EXIT_INTERRUPTED
    except BatchInputError as exc:
        for line in _problem_lines(exc.problems, fields):
            _say(line)
        if exc.count > len(exc.problems):
            _say(f"... and {exc.count - len(exc.problems)} more problem(s)")
        hint = " (--skip-invalid records them as failed and runs the rest)"
        _say(f"error: {exc}; nothing was submitted{hint if exc.invalid_items else ''}")
        return EXIT_USAGE
    except BatchChangedError as exc:
        _say(f"error: the batch in {args.out} changed since its last run:")
        for change in exc.changes:
            _say(f"  {change}")
        _say("nothing was submitted; use another --out, or --accept-changes to let the new win")
        return EXIT_USAGE
    except LedgerFullError as exc:
        _say(f"stopped: {exc}")
        return EXIT_FAILED
    except (LedgerError, ValidationError, ConfigurationError, ValueError) as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    except FluxError as exc:
        _say(f"failed: {exc}")
        return EXIT_FAILED
    except OSError as exc:
        _say(f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}")
        return EXIT_FAILED
    terminated = bool(signals) and signals[0] == signal.SIGTERM
    if summary is None:
        _say(f"interrupted; the reports are in {args.out}; re-run the same command to resume")
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    code = summary.exit_code
    if terminated and code == EXIT_INTERRUPTED:
        code = EXIT_TERMINATED
    if args.json:
        print(json.dumps({**summary.as_dict(), "exit_code": code}), flush=True)
    else:
        _print_summary(summary)
    return code


def _holds_nothing(prompts: Path) -> bool:
    """True when the prompt file yields neither an item nor a problem (blocking, stops early)."""
    try:
        return next(iter(iter_prompt_file(prompts)), None) is None
    except (OSError, ValueError):  # unreadable or unsupported: run_batch says which
        return False


def _problem_lines(problems: list[InputProblem], fields: dict[str, Any]) -> list[str]:
    """Return the problems to show, an option the command line gave said once, not per line.

    ``--prompt-upsampling`` with a model that does not take it breaks every item the same
    way: one line names the option, the model, the lines, and that model's CLI options.
    """
    lines: list[str] = []
    shared: dict[tuple[str, str], list[InputProblem]] = {}
    for problem in problems:
        match = _NOT_ACCEPTED.match(problem.rule)
        if problem.field in fields and match is not None:
            shared.setdefault((problem.field, match["model"]), []).append(problem)
        else:
            lines.append(str(problem))
    for (name, model), group in shared.items():
        where = ", ".join(str(p.line) for p in itertools.islice(group, 10))
        more = " ..." if len(group) > 10 else ""
        lines.append(f"{group[0].path}: lines {where}{more}: {not_accepted(name, model)}")
    return lines


async def _run(
    args: argparse.Namespace,
    open_client: OpenClient,
    fields: dict[str, Any],
    signals: list[signal.Signals],
) -> BatchSummary | None:
    stop = anyio.Event()
    progress = BatchProgress()
    summary: BatchSummary | None = None
    failure: Exception | None = None
    show = not args.no_progress and sys.stderr.isatty()
    async with open_client(args, retry_ambiguous=args.retry_ambiguous) as flux:
        with anyio.CancelScope() as abort:
            async with anyio.create_task_group() as tg:
                if sys.platform != "win32":
                    tg.start_soon(_interrupts, stop, abort, signals)
                display = _display(progress) if show else nullcontext()
                try:
                    with display:
                        summary = await run_batch(
                            flux,
                            args.prompts,
                            args.out,
                            model=args.model,
                            defaults=fields,
                            concurrency=args.concurrency,
                            max_cost=args.max_cost,
                            skip_invalid=args.skip_invalid,
                            retry_failed=args.retry_failed,
                            retry_ambiguous=args.retry_ambiguous,
                            accept_changes=args.accept_changes,
                            allow_any_image_path=args.allow_any_image_path,
                            stop=stop,
                            progress=progress,
                            notify=_say,
                        )
                except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
                    # Raised inside the task group it would leave wrapped in an ExceptionGroup.
                    failure = exc
                finally:
                    tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return None if abort.cancel_called else summary


def _display(progress: BatchProgress) -> AbstractContextManager[object]:
    try:
        return ProgressDisplay(progress)
    except ImportError:  # rich is in the "cli" extra; without it, no live display
        return nullcontext()


async def _interrupts(
    stop: anyio.Event, abort: anyio.CancelScope, seen: list[signal.Signals]
) -> None:
    """First SIGINT or SIGTERM: a graceful stop. Second: cancel everything now."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            seen.append(signum)
            if not stop.is_set():
                again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
                _say(f"{again} again to stop at once")
                stop.set()
            else:
                abort.cancel()
                return


def _print_summary(summary: BatchSummary) -> None:
    parts = [f"{summary.ok} of {summary.total} saved", f"{summary.failed} failed"]
    if summary.pending:
        parts.append(f"{summary.pending} pending")
    parts.append(f"{summary.spent_this_run:g} credits this run ({summary.spent:g} in all)")
    parts.append(format_duration(summary.elapsed))
    _say(", ".join(parts))
    if summary.possibly_billed:
        _say(
            f"{summary.possibly_billed} failed item(s) may have been billed without a task id "
            "to show for it (see results.jsonl: may_be_billed); --retry-ambiguous runs them "
            "again"
        )
    if summary.stopped == "budget":
        _say("the budget is spent: raise --max-cost and re-run to go on")
    elif summary.stopped == "credits":
        _say("the account is out of credits: top it up and re-run the same command")
    elif summary.stopped == "auth":
        _say("the API key was refused: fix it and re-run the same command")
    elif summary.stopped == "disk":
        _say(
            f"the disk refused {summary.not_saved} finished image(s); they are kept as ready: "
            f"free space in {summary.out} and re-run the same command (no new submit)"
        )
    elif summary.failed:
        _say("--retry-failed runs the failed items again")
    _say(f"results: {summary.results}  contact sheet: {summary.contact_sheet}")
