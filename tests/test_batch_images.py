"""A batch's ``images`` entries get the library's checks and stay inside the prompt's folder."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from flux_async import ValidationError
from flux_async._batching._batch import BatchInputError, run_batch
from flux_async._batching._batch_images import check_image_entries, image_entry_value
from flux_async._cli import main
from flux_async.testing._images import render

from .test_batch import simulated

pytestmark = pytest.mark.anyio

HUGE = 300 * 1024 * 1024


def png_bytes() -> bytes:
    return b"".join(render("png", 32, 32, 1, 0).chunks())


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A prompt folder with good and bad images, and a secret beside it."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "ref.png").write_bytes(png_bytes())
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.png").write_bytes(png_bytes())
    (tmp_path / "outside.png").write_bytes(png_bytes())
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    (folder / "page.png").write_text("<html>not an image</html>")
    with (folder / "huge.png").open("wb") as fh:  # sparse: no disk used, 300 MB long
        fh.truncate(HUGE)
    return folder


def lines(*items: dict[str, object]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


def test_each_kind_of_entry_is_checked_like_the_library_does(layout: Path) -> None:
    outside = str(layout.parent / "outside.png")
    good_b64 = base64.b64encode(png_bytes()).decode()
    entries = [
        "ref.png",
        "sub/inner.png",
        "https://example.test/a.png",
        f"data:image/png;base64,{good_b64}",
        good_b64,
        "../outside.png",
        outside,
        "link.png",
        "huge.png",
        "page.png",
        "missing/none.png",
        "data:image/png;base64,PGh0bWw+",
        "???",
        " ",
    ]
    problems = dict(check_image_entries(entries, base_dir=layout, allow_any_path=False))
    assert set(problems) == {f"images[{i}]" for i in range(5, 14)}
    for i in (5, 6, 7):
        assert "outside the prompt file's folder" in problems[f"images[{i}]"]
    assert "at most 20 MiB" in problems["images[8]"]
    assert "PNG, JPEG or WebP" in problems["images[9]"]
    assert "no such image file" in problems["images[10]"]
    assert "PNG, JPEG or WebP" in problems["images[11]"]
    opted = dict(check_image_entries(entries[5:8], base_dir=layout, allow_any_path=True))
    assert opted == {}


def test_a_file_is_refused_at_submit_time_too_and_never_read_whole(layout: Path) -> None:
    with pytest.raises(ValidationError, match="outside"):
        image_entry_value(0, "../outside.png", base_dir=layout, allow_any_path=False)
    with pytest.raises(ValidationError, match="20 MiB") as caught:
        image_entry_value(2, "huge.png", base_dir=layout, allow_any_path=False)
    assert caught.value.field == "images[2]"
    sent = image_entry_value(0, "ref.png", base_dir=layout, allow_any_path=False)
    assert base64.b64decode(sent) == png_bytes()
    assert image_entry_value(0, "https://x.test/a.png", base_dir=layout, allow_any_path=False)


async def test_bad_entries_stop_the_batch_before_any_submit(layout: Path, tmp_path: Path) -> None:
    prompts = layout / "p.jsonl"
    prompts.write_text(
        lines(
            {"prompt": "fine", "images": ["ref.png"]},
            {"prompt": "escape", "images": ["ref.png", "../outside.png"]},
            {"prompt": "symlink", "images": ["link.png"]},
            {"prompt": "big", "images": ["huge.png"]},
            {"prompt": "html", "images": ["page.png"]},
            {"prompt": "too many", "images": ["ref.png"] * 9},
        )
    )
    async with simulated() as (sim, flux):
        with pytest.raises(BatchInputError) as caught:
            await run_batch(flux, prompts, tmp_path / "out")
    shown = [str(p) for p in caught.value.problems]
    assert shown[0] == (
        f"{prompts}:2: images[1]: ../outside.png resolves outside the prompt file's folder "
        f"{layout.resolve()} (--allow-any-image-path allows it)"
    )
    assert shown[1].startswith(f"{prompts}:3: images[0]: link.png resolves outside")
    assert shown[2].startswith(f"{prompts}:4: images[0]: ")
    assert "at most 20 MiB" in shown[2]
    assert shown[3].startswith(f"{prompts}:5: images[0]: ")
    assert "PNG, JPEG or WebP" in shown[3]
    assert shown[4].startswith(f"{prompts}:6: images: ")
    assert "at most 8" in shown[4]
    assert len(sim.records.submits) == 0


async def test_the_opt_in_lets_an_outside_file_through(layout: Path, tmp_path: Path) -> None:
    prompts = layout / "p.jsonl"
    prompts.write_text(lines({"prompt": "escape", "images": ["../outside.png", "link.png"]}))
    async with simulated() as (sim, flux):
        summary = await run_batch(flux, prompts, tmp_path / "out", allow_any_image_path=True)
    assert summary.ok == 1
    body = sim.records.submits[0].body
    assert base64.b64decode(body["input_image"]) == png_bytes()


def test_cli_prints_file_line_field_rule_and_exits_2(
    layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = layout / "p.jsonl"
    prompts.write_text(lines({"prompt": "x", "images": [str(layout.parent / "outside.png")]}))
    out = tmp_path / "out"
    assert main(["batch", str(prompts), "--out", str(out), "--simulate", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{prompts}:1: images[0]: " in err
    assert "--allow-any-image-path" in err
    code = main(
        [
            "batch",
            str(prompts),
            "--out",
            str(out),
            "--simulate",
            "--no-progress",
            "--allow-any-image-path",
        ]
    )
    assert code == 0
    assert os.listdir(out)
