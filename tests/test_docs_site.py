"""The documentation site covers every public name, and its CLI page comes from the parser."""

from __future__ import annotations

import argparse
import importlib.util
import re
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import flux_async
import flux_async.testing
from flux_async._cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
DIRECTIVE = re.compile(r"^::: ([\w.]+)$", re.MULTILINE)


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented() -> set[str]:
    found: set[str] = set()
    for page in REFERENCE.glob("*.md"):
        found.update(DIRECTIVE.findall(page.read_text(encoding="utf-8")))
    return found


@pytest.mark.parametrize("module", [flux_async, flux_async.testing], ids=lambda m: m.__name__)
def test_every_public_name_has_a_reference_entry(module: ModuleType) -> None:
    names = documented()
    missing = [
        name
        for name in module.__all__
        if f"{module.__name__}.{name}" not in names
        # The clocks are re-exported by flux_async.testing; their entry is flux_async's.
        and f"flux_async.{name}" not in names
    ]
    assert missing == []


def test_every_directive_names_something_that_exists() -> None:
    for target in documented():
        parts = target.split(".")
        obj: object = __import__(parts[0])
        for n, part in enumerate(parts[1:], start=1):
            if not hasattr(obj, part):
                obj = __import__(".".join(parts[: n + 1]), fromlist=["_"])
            else:
                obj = getattr(obj, part)
        assert obj is not None, target


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_cli_reference_lists_every_option_of_every_command() -> None:
    page: str = hooks().render_cli_reference()
    parser = build_parser()
    for name, sub in subparsers(parser).items():
        assert f"## `flux-async {name}`" in page
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}" in page, option
    assert "`--version`" in page
    assert "| `--sim-speed SIM_SPEED` | with --simulate:" in page
    assert "| `20.0` |" in page  # defaults are shown


def test_sphinx_roles_are_tidied_in_rendered_docstrings() -> None:
    html = "Raises :class:<code>~flux_async.ConfigurationError</code> or :meth:<code>wait</code>"
    assert hooks().tidy_roles(html) == (
        "Raises <code>ConfigurationError</code> or <code>wait</code>"
    )


def build_request_examples() -> list[str]:
    source = (ROOT / "flux_async" / "_request" / "_requests.py").read_text(encoding="utf-8")
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", source, re.DOTALL)]
    return [b for b in blocks if b.startswith("build_request(") and b.count("build_request(") == 1]


@pytest.mark.parametrize("code", build_request_examples())
def test_each_request_class_example_builds_that_class(code: str) -> None:
    request = eval(code, {"build_request": flux_async.build_request})  # noqa: S307
    assert isinstance(request, flux_async.BaseRequest)
    assert request.model in code


def test_every_request_class_has_an_example() -> None:
    assert len(build_request_examples()) == 9
