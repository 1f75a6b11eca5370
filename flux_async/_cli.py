"""The ``flux-async`` command line: thin, over the public API.

Exit status: 0 success, 1 a generation failed (for ``batch``: some item failed or was left
pending), 2 bad usage or input (found before anything is paid for), 130 interrupted by
Ctrl-C (SIGINT), 143 stopped by SIGTERM. SIGTERM, how services and containers stop a
process, is handled like Ctrl-C: ``batch`` stops submitting and writes its reports.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio

from . import __version__
from ._batching._report import strip_control
from ._cli_checks import (
    CLI_FIELDS,
    credits,
    model_name,
    number,
    port,
    positive_int,
    positive_number,
    usage_problem,
    whole_number,
)
from ._client import AsyncFlux
from ._errors import ConfigurationError, FluxError, ValidationError
from ._providers import PRESETS

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

# Request fields the command line offers, with their types; None values are not sent.
REQUEST_OPTIONS: dict[str, Any] = {
    "width": whole_number,
    "height": whole_number,
    "seed": whole_number,
    "aspect_ratio": str,
    "output_format": str,
    "steps": whole_number,
    "guidance": number,
    "safety_tolerance": whole_number,
}


def _add_connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="bfl", choices=sorted(PRESETS), help="provider preset")
    p.add_argument(
        "--base-url",
        help="replace the provider's whole base URL, path prefix included "
        "(e.g. https://proxy.example/flux for dmxapi; a proxy, a simulator)",
    )
    p.add_argument(
        "--api-key",
        help="API key (default: the provider's environment variable, e.g. BFL_API_KEY)",
    )
    p.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator: no key, no network",
    )
    p.add_argument(
        "--sim-speed",
        type=positive_number,
        default=20.0,
        help="with --simulate: how many times faster than real time the simulator runs "
        "(default 20)",
    )


def _add_fleet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--coordinator",
        metavar="URL",
        help="redis:// URL shared by every process on this key: one cap for all of them "
        "(default: FLUX_ASYNC_COORDINATOR; see docs/fleet.md)",
    )


def _add_request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="flux-2-pro", type=model_name, help="model name (default flux-2-pro)"
    )
    for name, kind in REQUEST_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    p.add_argument(
        "--prompt-upsampling",
        dest="prompt_upsampling",
        action=argparse.BooleanOptionalAction,
        default=None,
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``flux-async``."""
    parser = argparse.ArgumentParser(
        prog="flux-async", description="Generate images with FLUX, concurrently."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate one image")
    gen.add_argument("prompt")
    gen.add_argument("--out", default=".", help="output folder (default: current folder)")
    gen.add_argument(
        "--name",
        help="plain file name without extension (default: the task id made safe); "
        "an existing file is never replaced (NAME-1.jpeg, ...)",
    )
    gen.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_request_options(gen)
    _add_connection_options(gen)
    _add_fleet_option(gen)

    bat = sub.add_parser(
        "batch",
        help="generate an image for every prompt of a file; re-run the same command to resume",
        description="Generate an image for every item of PROMPTS (.txt, .jsonl or .csv) into "
        "--out. Request options are defaults: an item's own fields win. Re-running the same "
        "command on the same --out resumes: saved items are skipped, recorded tasks are "
        "polled again, never paid for twice.",
    )
    bat.add_argument("prompts", help="prompt file: .txt (a prompt a line), .jsonl or .csv")
    bat.add_argument("--out", required=True, help="output folder (holds the images and ledger)")
    bat.add_argument(
        "--concurrency", type=positive_int, help="items in progress at once (default 2x24)"
    )
    bat.add_argument(
        "--max-cost",
        type=credits,
        metavar="CREDITS",
        help="stop submitting before the folder's spend could exceed this (1 credit = $0.01)",
    )
    bat.add_argument("--no-progress", action="store_true", help="no live progress display")
    bat.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    bat.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record invalid items as failed and run the rest (default: stop before any submit)",
    )
    bat.add_argument("--retry-failed", action="store_true", help="run failed items again")
    bat.add_argument(
        "--retry-ambiguous",
        action="store_true",
        help="run possibly billed items again (may pay twice); also retries ambiguous submits",
    )
    bat.add_argument(
        "--accept-changes",
        action="store_true",
        help="let a changed input or changed options win over what the folder recorded",
    )
    bat.add_argument(
        "--allow-any-image-path",
        action="store_true",
        help="let items' images name files outside the prompt file's folder "
        "(absolute paths, ../, symlinks leading out)",
    )
    _add_request_options(bat)
    _add_connection_options(bat)
    _add_fleet_option(bat)

    sim = sub.add_parser("simulate", help="serve the simulator on loopback")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=port, default=8765, help="TCP port (default 8765)")
    sim.add_argument(
        "--speed", type=positive_number, default=1.0, help="time scale (default 1 = real time)"
    )
    sim.add_argument(
        "--response-format",
        choices=("url", "b64_json"),
        default="url",
        help="how POST /v1/images/generations returns the image when the request does not "
        "say (its response_format wins; default url)",
    )
    return parser


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the request fields given on the command line (unset ones left out)."""
    return {n: getattr(args, n) for n in CLI_FIELDS if getattr(args, n, None) is not None}


@asynccontextmanager
async def open_client(args: argparse.Namespace, **options: Any) -> AsyncIterator[AsyncFlux]:
    """Open the client the arguments ask for: the real provider, or the simulator."""
    if getattr(args, "coordinator", None):
        options["coordinator"] = args.coordinator
    if args.simulate:
        from ._core._clock import ScaledClock
        from .testing import FAKE_API_KEY, Simulator

        clock = ScaledClock(args.sim_speed)
        simulator = Simulator(clock=clock)
        async with AsyncFlux(
            api_key=FAKE_API_KEY,
            base_url=simulator.config.api_base,
            transport=simulator.transport(),
            clock=clock,
            **options,
        ) as flux:
            yield flux
        return
    async with AsyncFlux(
        api_key=args.api_key, provider=args.provider, base_url=args.base_url, **options
    ) as flux:
        yield flux


async def _generate(args: argparse.Namespace) -> int:
    async with open_client(args) as flux:
        image = await flux.generate(
            args.prompt,
            model=args.model,
            output_dir=args.out,
            filename=args.name,
            **request_fields(args),
        )
    if args.json:
        print(json.dumps(image.model_dump(mode="json")))
    else:
        seed = f", seed {image.seed}" if image.seed is not None else ""
        print(strip_control(f"saved {image.path} (task {image.task_id}{seed})"))
    return EXIT_OK


async def _simulate(args: argparse.Namespace) -> int:
    from ._core._clock import ScaledClock
    from .testing import FAKE_API_KEY, Simulator, SimulatorConfig, serve

    config = SimulatorConfig(openai_response=args.response_format)
    simulator = Simulator(config, clock=ScaledClock(args.speed))
    async with AsyncExitStack() as stack:
        try:
            listening = serve(simulator, host=args.host, port=args.port)
            base_url = await stack.enter_async_context(listening)
        except OSError as exc:  # only binding: nothing else runs inside the try
            reason = exc.strerror or str(exc)
            print(f"error: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
            return EXIT_USAGE
        print(f"simulator listening on {base_url}", flush=True)
        print(f"use: --base-url {base_url} --api-key {FAKE_API_KEY}", flush=True)
        await anyio.sleep_forever()
    return EXIT_OK  # pragma: no cover - only reached by cancellation


async def _until_sigterm(runner: Any, args: argparse.Namespace) -> int:
    """Run ``runner(args)``; SIGTERM cancels it, as Ctrl-C would, and gives 143."""
    result = EXIT_TERMINATED
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        async def run() -> None:
            nonlocal result, failure
            try:
                result = await runner(args)
            except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
                # Raised inside the task group it would leave wrapped in an ExceptionGroup.
                failure = exc
            finally:
                tg.cancel_scope.cancel()

        if sys.platform != "win32":
            tg.start_soon(watch)
        tg.start_soon(run)
    if failure is not None:
        raise failure
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("generate", "batch"):
        problem = usage_problem(args, request_fields(args))
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "batch":
        from ._batching._batch_cli import run_batch_command

        return run_batch_command(args, open_client=open_client, fields=request_fields(args))
    runner = {"generate": _generate, "simulate": _simulate}[args.command]
    try:
        code = anyio.run(_until_sigterm, runner, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValidationError, ConfigurationError) as exc:
        print(f"error: {strip_control(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except FluxError as exc:
        # A server's detail is quoted in the message: strip any escape sequence first.
        print(f"failed: {strip_control(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(
            f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr
        )
        return EXIT_FAILED
    if code == EXIT_TERMINATED:
        print("terminated (SIGTERM)", file=sys.stderr)
    return int(code)
