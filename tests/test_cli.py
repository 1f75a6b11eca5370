"""The command line, in process on the built-in simulator: exit codes and what it prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux_async._cli import build_parser, main

FAST = ["--simulate", "--sim-speed", "300", "--no-progress"]


def batch(prompts: Path, out: Path, *extra: str) -> int:
    return main(["batch", str(prompts), "--out", str(out), *FAST, *extra])


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# two animals\na red fox\n\nan owl at night\n", encoding="utf-8")
    return path


def test_batch_json_summary_and_exit_0(
    prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert batch(prompts, out, "--json", "--width", "512", "--height", "512") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["total"], summary["ok"], summary["failed"], summary["pending"]) == (2, 2, 0, 0)
    assert (summary["exit_code"], summary["stopped"], summary["spent"]) == (0, None, 6.0)
    assert summary["results"] == str(out / "results.jsonl")
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "00000-a-red-fox.jpeg",
        "00001-an-owl-at-night.jpeg",
        "index.html",
        "results.jsonl",
    ]
    # The same command again resumes: nothing left to do, nothing submitted.
    assert batch(prompts, out, "--width", "512", "--height", "512") == 0
    err = capsys.readouterr().err
    assert "2 of 2 saved, 0 failed, 0 credits this run (6 in all)" in err
    assert "index.html" in err


def test_bad_input_exits_2_naming_file_line_field_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "p.csv"
    bad.write_text("prompt,width\na fox,512\na cat,wide\nan owl,100\n", encoding="utf-8")
    assert batch(bad, tmp_path / "out", "--json") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{bad}:3: width: must be a whole number, got 'wide'" in captured.err
    assert f"{bad}:4: width:" in captured.err
    assert "nothing was submitted" in captured.err
    assert "--skip-invalid" in captured.err
    assert batch(bad, tmp_path / "out", "--json", "--skip-invalid") == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ok"], summary["failed"], summary["exit_code"]) == (1, 2, 1)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "no such prompt file"),
        ("prompts.md", "a fox\n", "unsupported prompt file type"),
    ],
)
def test_unusable_prompt_files_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | None,
    message: str,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    assert batch(path, tmp_path / "out") == 2
    assert message in capsys.readouterr().err


def test_changed_options_are_explained_and_exit_2_until_accepted(
    prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert batch(prompts, out, "--seed", "1") == 0
    capsys.readouterr()
    assert batch(prompts, out, "--seed", "2") == 2
    err = capsys.readouterr().err
    assert "defaults.seed: 1 -> 2" in err
    assert "--accept-changes" in err
    assert batch(prompts, out, "--seed", "2", "--accept-changes", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ok"], summary["submitted"]) == (2, 2)


def test_max_cost_stops_early_with_exit_1(
    prompts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert batch(prompts, tmp_path / "out", "--max-cost", "4") == 1
    err = capsys.readouterr().err
    assert "1 of 2 saved, 0 failed, 1 pending" in err
    assert "raise --max-cost" in err
    results = (tmp_path / "out" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["status"] for line in results] == ["ok", "pending"]


def test_generate_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "one"
    code = main(["generate", "a red fox", "--out", str(out), "--name", "fox", *FAST[:3], "--json"])
    assert code == 0
    image = json.loads(capsys.readouterr().out)
    assert Path(image["path"]) == out / "fox.jpeg"


@pytest.mark.parametrize(
    "argv",
    [
        ["batch", "p.txt"],  # --out is required
        ["batch", "p.txt", "--out", "o", "--concurrency", "0"],
        ["batch", "p.txt", "--out", "o", "--max-cost", "-1"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    assert "error" in capsys.readouterr().err
