"""The ``flux-async`` command line: thin, over the public API.

Exit status: 0 success, 1 a generation failed, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ._client import AsyncFlux
from ._errors import ConfigurationError, FluxError, ValidationError
from ._providers import PRESETS

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Request fields the command line offers, with their types; None values are not sent.
REQUEST_OPTIONS: dict[str, type] = {
    "width": int,
    "height": int,
    "seed": int,
    "aspect_ratio": str,
    "output_format": str,
    "steps": int,
    "guidance": float,
    "safety_tolerance": int,
}


def _add_connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="bfl", choices=sorted(PRESETS), help="provider preset")
    p.add_argument("--base-url", help="override the provider's host (a proxy, a simulator)")
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
        type=float,
        default=20.0,
        help="with --simulate: how many times faster than real time the simulator runs",
    )


def _add_request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="flux-2-pro", help="model name (default flux-2-pro)")
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
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate one image")
    gen.add_argument("prompt")
    gen.add_argument("--out", default=".", help="output folder (default: current folder)")
    gen.add_argument("--name", help="file name without extension (default: the task id)")
    gen.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_request_options(gen)
    _add_connection_options(gen)

    sim = sub.add_parser("simulate", help="serve the simulator on loopback")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--speed", type=float, default=1.0, help="time scale (1 = real time)")
    return parser


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the request fields given on the command line (unset ones left out)."""
    names = [*REQUEST_OPTIONS, "prompt_upsampling"]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


@asynccontextmanager
async def open_client(args: argparse.Namespace, **options: Any) -> AsyncIterator[AsyncFlux]:
    """Open the client the arguments ask for: the real provider, or the simulator."""
    if args.simulate:
        from ._clock import ScaledClock
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
        print(f"saved {image.path} (task {image.task_id}{seed})")
    return EXIT_OK


async def _simulate(args: argparse.Namespace) -> int:
    from ._clock import ScaledClock
    from .testing import FAKE_API_KEY, Simulator, serve

    simulator = Simulator(clock=ScaledClock(args.speed))
    async with serve(simulator, host=args.host, port=args.port) as base_url:
        print(f"simulator listening on {base_url}", flush=True)
        print(f"use: --base-url {base_url} --api-key {FAKE_API_KEY}", flush=True)
        await anyio.sleep_forever()
    return EXIT_OK  # pragma: no cover - only reached by cancellation


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    runner = {"generate": _generate, "simulate": _simulate}[args.command]
    try:
        return anyio.run(runner, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValidationError, ConfigurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FluxError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(
            f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}", file=sys.stderr
        )
        return EXIT_FAILED
