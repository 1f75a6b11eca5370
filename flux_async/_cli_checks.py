"""What the command line checks before it spends anything, in the words of its options.

The argument types raise :class:`argparse.ArgumentTypeError` with a sentence a user can
act on (``--max-cost: expected a number of credits >= 0 (got 'abc')``), never the name of
a Python function. :func:`usage_problem` runs after parsing and before any request: the
API key, the output folder, and request options the chosen model does not take. Every
message names a command-line option, not a Python argument.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ._errors import ConfigurationError
from ._providers import PRESETS
from ._request._catalog import MODELS, get_model

__all__ = [
    "CLI_FIELDS",
    "credits",
    "model_name",
    "not_accepted",
    "number",
    "port",
    "positive_int",
    "positive_number",
    "usage_problem",
    "whole_number",
]

# Request fields the command line offers, in --help order.
CLI_FIELDS = (
    "width",
    "height",
    "seed",
    "aspect_ratio",
    "output_format",
    "steps",
    "guidance",
    "safety_tolerance",
    "prompt_upsampling",
)


def _named(name: str) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    # argparse prints a type's __name__ when it raises ValueError; ours raise
    # ArgumentTypeError, but a readable name also shows in --help's metavar errors.
    def wrap(fn: Callable[[str], Any]) -> Callable[[str], Any]:
        fn.__name__ = name
        return fn

    return wrap


def _float(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})")
    return value


def _int(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})") from None


@_named("whole number")
def whole_number(text: str) -> int:
    """Parse a whole number (``--width``, ``--seed`` ...)."""
    return _int(text, "a whole number")


@_named("number")
def number(text: str) -> float:
    """Parse a finite number (``--guidance``)."""
    return _float(text, "a number")


@_named("positive whole number")
def positive_int(text: str) -> int:
    """Parse a whole number >= 1 (``--concurrency``)."""
    value = _int(text, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 (got {text!r})")
    return value


@_named("credits")
def credits(text: str) -> float:
    """Parse a number of credits >= 0 (``--max-cost``)."""
    expected = "a number of credits >= 0"
    value = _float(text, expected)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})")
    return value


@_named("positive number")
def positive_number(text: str) -> float:
    """Parse a number > 0 (``--sim-speed``, ``--speed``)."""
    expected = "a number > 0 (1 = real time)"
    value = _float(text, expected)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})")
    return value


@_named("port")
def port(text: str) -> int:
    """Parse a TCP port, 0-65535 (0 lets the system choose one)."""
    expected = "a port number from 0 to 65535"
    value = _int(text, expected)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected {expected} (got {text!r})")
    return value


@_named("model")
def model_name(text: str) -> str:
    """Check a model name against the catalog, with a "did you mean" for a near miss."""
    try:
        get_model(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def option(field: str) -> str:
    """Return the command-line spelling of request field ``field`` (``--output-format``)."""
    return "--" + field.replace("_", "-")


def cli_options_of(model: str) -> list[str]:
    """Return the request options of the command line that ``model`` takes."""
    accepted = set(MODELS[model].accepted_fields)
    return [option(f) for f in CLI_FIELDS if f in accepted]


def not_accepted(field: str, model: str) -> str:
    """Say that ``model`` does not take option ``field``, listing the options it takes."""
    return (
        f"{option(field)} is not accepted by {model}; "
        f"its options: {', '.join(cli_options_of(model)) or '(none)'}"
    )


def _folder_problem(out: str) -> str | None:
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            return f"--out {out}: is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"--out {out}: the folder is not writable"
        return None
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"--out {out}: cannot create the folder: {parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"--out {out}: cannot create the folder: {parent} is not writable"
    return None


def _key_problem(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    if args.simulate or args.api_key:
        return None
    preset = PRESETS[args.provider]
    if env.get(preset.env_var):
        return None
    return (
        f"no API key for provider {preset.name!r}: pass --api-key KEY or set "
        f"{preset.env_var}; --simulate runs against the built-in simulator (no key, "
        "no network)"
    )


def usage_problem(
    args: argparse.Namespace, given: Iterable[str], env: Mapping[str, str] | None = None
) -> str | None:
    """Return what makes this command unusable before anything is sent, or None.

    ``given`` names the request fields set on the command line. Checked: the output
    folder can be written (``--out``), a key is there (unless ``--simulate``), and for
    ``generate`` the model takes every given option (``batch`` items may name another
    model, so there the rule is checked per item, and reported once).
    """
    problem = _folder_problem(args.out) or _key_problem(args, os.environ if env is None else env)
    if problem is not None:
        return problem
    if args.command == "generate":
        accepted = set(MODELS[args.model].accepted_fields)
        for field in given:
            if field not in accepted:
                return not_accepted(field, args.model)
    return None
