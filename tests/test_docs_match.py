"""The docs say what the code does: links resolve, tables match the code's own tables."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from flux_async._cli import build_parser
from flux_async._providers import PRESETS

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        if (page.parent / target).resolve() == ROOT / "docs" / "reference" / "cli.md":
            continue  # generated at build time by tools/docs_hooks.py
        assert (page.parent / target).is_file(), f"{page.name} links {target}"


def test_the_providers_page_lists_every_preset_as_the_code_has_it() -> None:
    text = (ROOT / "docs" / "providers" / "index.md").read_text(encoding="utf-8")
    rows = {
        m[0]: (m[1], m[2])
        for m in re.findall(r"\| `([\w-]+)`[^|]*\| `(\S+)` \|[^|]*\| `(\w+)` \|", text)
    }
    assert rows == {name: (p.base_url, p.env_var) for name, p in PRESETS.items()}


def test_no_page_cites_a_file_outside_the_repository() -> None:
    for page in pages():
        text = page.read_text(encoding="utf-8")
        assert "PROTOCOL.md" not in text, page.name


def test_help_shows_the_defaults_the_docs_state() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: dict[str, argparse.ArgumentParser] = dict(commands.choices)
    assert "(default 20)" in sub["generate"].format_help()
    assert "(default 8765)" in sub["simulate"].format_help()
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert "simulated time runs X times faster (default 20)" in cli
    assert "replaces the provider's whole base URL, path prefix included" in cli
