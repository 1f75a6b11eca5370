"""What a user sees for a bad command: one sentence naming the option, exit 2, no traceback.

Each case runs ``main()`` in process (capsys) and checks the exact line on stderr; a few
run as real ``python -m flux_async`` subprocesses, where a traceback would show.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flux_async import __version__
from flux_async._cli import build_parser, main

from .test_batch_resume import states

FAST = ["--simulate", "--sim-speed", "300", "--no-progress"]
UPSAMPLING = (
    "--prompt-upsampling is not accepted by flux-2-pro; its options: --width, --height, "
    "--seed, --output-format, --safety-tolerance"
)
NO_KEY = (
    "error: no API key for provider 'bfl': pass --api-key KEY or set BFL_API_KEY; "
    "--simulate runs against the built-in simulator (no key, no network)"
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current folder with a two-line p.txt, an empty e.txt and a plain file 'afile'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BFL_API_KEY", raising=False)
    (tmp_path / "p.txt").write_text("a red fox\nan owl at night\n", encoding="utf-8")
    (tmp_path / "e.txt").write_text("# nothing yet\n\n", encoding="utf-8")
    (tmp_path / "afile").write_text("not a folder", encoding="utf-8")
    return tmp_path


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own exit for a bad option
        return int(stop.code or 0)


BAD = [
    ([], "flux-async: error: the following arguments are required: command"),
    (["frobnicate"], "flux-async: error: argument command: invalid choice: 'frobnicate'"),
    (["generate", "a fox"], NO_KEY),
    (
        ["batch", "p.txt", "--out", "o", "--max-cost", "abc"],
        "flux-async batch: error: argument --max-cost: "
        "expected a number of credits >= 0 (got 'abc')",
    ),
    (
        ["batch", "p.txt", "--out", "o", "--max-cost", "-1"],
        "flux-async batch: error: argument --max-cost: "
        "expected a number of credits >= 0 (got '-1')",
    ),
    (
        ["batch", "p.txt", "--out", "o", "--max-cost", "nan"],
        "flux-async batch: error: argument --max-cost: "
        "expected a number of credits >= 0 (got 'nan')",
    ),
    (
        ["batch", "p.txt", "--out", "o", "--concurrency", "x"],
        "flux-async batch: error: argument --concurrency: expected a whole number >= 1 (got 'x')",
    ),
    (
        ["batch", "p.txt", "--out", "o", "--concurrency", "0"],
        "flux-async batch: error: argument --concurrency: expected a whole number >= 1 (got '0')",
    ),
    (
        ["generate", "a fox", "--simulate", "--sim-speed", "0"],
        "flux-async generate: error: argument --sim-speed: "
        "expected a number > 0 (1 = real time) (got '0')",
    ),
    (
        ["simulate", "--port", "99999"],
        "flux-async simulate: error: argument --port: "
        "expected a port number from 0 to 65535 (got '99999')",
    ),
    (
        ["simulate", "--speed", "-1"],
        "flux-async simulate: error: argument --speed: "
        "expected a number > 0 (1 = real time) (got '-1')",
    ),
    (
        ["generate", "a fox", "--width", "wide"],
        "flux-async generate: error: argument --width: expected a whole number (got 'wide')",
    ),
    (
        ["generate", "a fox", "--guidance", "lots"],
        "flux-async generate: error: argument --guidance: expected a number (got 'lots')",
    ),
    (
        ["generate", "a fox", "--model", "flux-2-por"],
        "flux-async generate: error: argument --model: unknown model 'flux-2-por' "
        "(did you mean 'flux-2-pro'?); known models: flux-2-pro,",
    ),
    (
        ["batch", "p.txt", "--out", "afile", *FAST],
        "error: --out afile: is a file, not a folder",
    ),
    (
        ["generate", "a fox", "--out", "afile/images", "--simulate"],
        "error: --out afile/images: cannot create the folder: {tmp}/afile is a file",
    ),
    (["generate", "a fox", "--simulate", "--prompt-upsampling"], f"error: {UPSAMPLING}"),
    (
        ["batch", "e.txt", "--out", "o", *FAST],
        "error: e.txt holds no prompts (only blank lines or # comments); nothing to do",
    ),
    (
        ["batch", "p.txt", "--out", "o", *FAST, "--prompt-upsampling"],
        f"p.txt: lines 1, 2: {UPSAMPLING}",
    ),
    (["batch", "missing.txt", "--out", "o", *FAST], "error: missing.txt: no such prompt file"),
    (
        ["generate", "a fox", "--provider", "nope"],
        "flux-async generate: error: argument --provider: invalid choice: 'nope'",
    ),
    (
        ["generate", "a fox", "--simulate", "--width", "17"],
        "error: invalid request for model 'flux-2-pro': width: must be >= 64 (or 0: the "
        "first input image's size) for flux-2-pro (got 17)",
    ),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_invocation_says_one_thing_and_exits_2(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    # The message is a whole line of stderr (or, for long lists, its start).
    expected = message.format(tmp=workdir)
    assert any(line.startswith(expected) for line in captured.err.splitlines()), captured.err
    assert "Traceback" not in captured.err
    assert "_credits" not in captured.err
    assert "api_key=" not in captured.err
    if not message.startswith("p.txt"):  # found at argument time: no folder was made
        assert not (workdir / "o").exists()


def test_the_upsampling_message_is_said_once(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "p.txt").write_text("".join(f"prompt {n}\n" for n in range(15)), encoding="utf-8")
    assert run(["batch", "p.txt", "--out", "o", *FAST, "--prompt-upsampling"]) == 2
    err = capsys.readouterr().err
    assert err.count("--prompt-upsampling is not accepted") == 1
    assert "webhook_url" not in err
    assert "p.txt: lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 ...: " in err


def test_an_unknown_model_in_a_batch_file_gets_a_did_you_mean(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "m.jsonl").write_text('{"prompt": "a fox", "model": "flux-2-maxx"}\n')
    assert run(["batch", "m.jsonl", "--out", "o", *FAST]) == 2
    err = capsys.readouterr().err
    assert "m.jsonl:1: model: unknown model 'flux-2-maxx' (did you mean 'flux-2-max'?)" in err


def test_an_empty_csv_says_so_too(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "e.csv").write_text("prompt,width\n", encoding="utf-8")
    assert run(["batch", "e.csv", "--out", "o", *FAST]) == 2
    assert capsys.readouterr().err == "error: e.csv holds no prompts; nothing to do\n"
    assert not (workdir / "o").exists()


def test_a_busy_port_names_the_address(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(["simulate", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in err


def test_max_cost_says_spent_and_reserved(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["batch", "p.txt", "--out", "o", *FAST, "--max-cost", "4"]) == 1
    err = capsys.readouterr().err
    assert (
        "stopped submitting: the next submit (about 3 credits) could take the spend past "
        "--max-cost 4 (0 spent, 3 reserved for tasks in progress)"
    ) in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"flux-async {__version__}\n"


def test_generate_checks_the_output_folder_before_paying(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A writable folder that does not exist yet is fine: it is created when the image lands.
    assert run(["generate", "a fox", "--out", "new/deep", *FAST[:3], "--json"]) == 0
    saved = Path(json.loads(capsys.readouterr().out)["path"])
    assert saved.parent == Path("new/deep")


def python_m(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "flux_async", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["generate", "a fox"], 2, NO_KEY),
        (
            ["batch", "p.txt", "--out", "o", "--max-cost", "abc"],
            2,
            "argument --max-cost: expected a number of credits >= 0 (got 'abc')",
        ),
        (["simulate", "--port", "99999"], 2, "expected a port number from 0 to 65535"),
        (
            ["generate", "a", "--simulate", "--sim-speed", "0"],
            2,
            "argument --sim-speed: expected a number > 0",
        ),
    ],
)
def test_as_a_real_process_no_traceback(
    argv: list[str], code: int, message: str, tmp_path: Path
) -> None:
    done = python_m(*argv)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_version_as_a_real_process() -> None:
    done = python_m("--version")
    assert (done.returncode, done.stdout) == (0, f"flux-async {__version__}\n")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_stops_the_simulator_with_143() -> None:
    cmd = [sys.executable, "-m", "flux_async", "simulate", "--port", "0"]
    with subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()  # blocks until it listens
            assert first.startswith("simulator listening on http://127.0.0.1:")
            process.send_signal(signal.SIGTERM)
            _out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 143
    assert "terminated (SIGTERM)" in err
    assert "Traceback" not in err


def every_checked_option() -> list[tuple[str, str]]:
    """Return ``(command, option)`` for every option whose value is checked by argparse."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.option_strings and (action.type not in (None, str) or action.choices):
                found.append((name, action.option_strings[-1]))
    return found


POSITIONAL = {"generate": ["a fox"], "batch": ["p.txt", "--out", "o"], "simulate": []}


@pytest.mark.parametrize(("command", "option"), every_checked_option())
def test_every_checked_option_refuses_nonsense_in_one_line(
    workdir: Path, capsys: pytest.CaptureFixture[str], command: str, option: str
) -> None:
    assert run([command, *POSITIONAL[command], option, "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: flux-async {command}")
    last = err.splitlines()[-1]
    assert last.startswith(f"flux-async {command}: error: argument {option}: ")
    assert "expected " in last or "invalid choice" in last or "unknown model" in last, last
    assert "Traceback" not in err
    # No internal (snake_case) function name such as "_credits" in what the user reads.
    said = last.split(": ", 3)[-1].split(" (got")[0].replace("b64_json", "")
    assert "_" not in said, said


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_sigterm_mid_batch_writes_the_reports_and_says_143_in_json(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"a paper boat number {n}\n" for n in range(6)), encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flux_async", "batch", str(prompts), "--out", str(out)]
    cmd += ["--simulate", "--sim-speed", "1", "--no-progress", "--json"]
    with subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            deadline = time.monotonic() + 30
            while states(out)["submitted"] < 1:  # real tasks take seconds at speed 1
                assert time.monotonic() < deadline, "the batch never submitted"
                assert process.poll() is None, "the batch ended before SIGTERM"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            stdout, err = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 143, err
    summary = json.loads(stdout)
    assert (summary["exit_code"], summary["stopped"]) == (143, "interrupted")
    assert "SIGTERM again to stop at once" in err
    assert "Traceback" not in err
    assert (out / "results.jsonl").is_file()
    assert (out / "index.html").is_file()
