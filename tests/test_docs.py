"""Docs' examples run: every ```python block marked runnable in docs/ is executed here.

A block is run when it builds its client on the simulator (it mentions ``Simulator(``);
blocks that need a real key are type-checked by tests/typing/api.py instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def runnable_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for n, code in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
            if "Simulator(" in code and "anyio.run(" in code:
                found.append((f"{page.relative_to(DOCS)}#{n}", code))
    return found


@pytest.mark.parametrize(("where", "code"), runnable_blocks(), ids=lambda v: v if "#" in v else "")
def test_doc_example_runs(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__doc_example__"})  # noqa: S102
    assert any(tmp_path.rglob("*.jpeg")) or any(tmp_path.rglob("*.png")), where


def test_the_quickstart_has_a_runnable_example() -> None:
    assert any(where.startswith("quickstart.md") for where, _ in runnable_blocks())
