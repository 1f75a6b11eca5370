"""MkDocs hook: write ``reference/cli.md`` from the argparse parser at build time.

The page is generated, never committed, so it cannot drift from ``flux-async --help``:
each command's usage, description and every option with its help text and default.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from flux_async._cli import build_parser

__all__ = ["on_files", "on_page_content", "render_cli_reference", "tidy_roles"]

# Docstrings use Sphinx roles (:class:`~flux_async.Outcome`), which Markdown renders as
# ":class:" before the code: keep the code, drop the role and the "~package." prefix.
_ROLE = re.compile(
    r":(?:class|func|meth|attr|data|exc|mod|obj):<code>~?(?:[\w.]+\.)?([\w]+)</code>"
)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | meaning | default |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
            name = ", ".join(f"`{o}{metavar}`" for o in action.option_strings)
        else:
            name = f"`{action.metavar or action.dest}` (positional)"
        meaning = (action.help or "").replace("|", "\\|").replace("%(prog)s", "flux-async")
        if action.choices is not None and not isinstance(action.choices, dict):
            meaning += f" (one of: {', '.join(f'`{c}`' for c in action.choices)})"
        if action.required and action.option_strings:
            meaning += " **(required)**"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) else f"`{default}`"
        rows.append(f"| {name} | {meaning} | {shown} |")
    return rows


def render_cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Return the CLI reference page (Markdown) for ``parser`` (default: flux-async's)."""
    parser = parser if parser is not None else build_parser()
    lines = [
        "# CLI reference",
        "",
        "Generated from the argument parser at build time (`tools/docs_hooks.py`); the",
        "guide is [the command line](../cli.md).",
        "",
        "```",
        parser.format_usage().strip(),
        "```",
        "",
        *_option_rows(parser),
    ]
    for name, sub in _commands(parser).items():
        lines += ["", f"## `flux-async {name}`", "", "```", sub.format_usage().strip(), "```", ""]
        if sub.description:
            lines += [sub.description, ""]
        lines += _option_rows(sub)
    return "\n".join(lines) + "\n"


def on_files(files: Any, config: Any) -> Any:
    """Add the generated ``reference/cli.md`` to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/cli.md", content=render_cli_reference()))
    return files


def tidy_roles(html: str) -> str:
    """Return ``html`` with ``:class:<code>~pkg.Name</code>`` written as ``<code>Name</code>``."""
    return _ROLE.sub(r"<code>\1</code>", html)


def on_page_content(html: str, **kwargs: Any) -> str:
    """Tidy the Sphinx roles of the rendered docstrings."""
    return tidy_roles(html)
