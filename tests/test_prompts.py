"""Reading prompt files (txt, jsonl, csv), validating items, fingerprints and safe file names."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from flux_async._batching._item_fields import (
    input_fingerprint,
    merged_fields,
    reference_image_fields,
    validate_item,
)
from flux_async._batching._prompts import (
    InputProblem,
    PromptItem,
    aiter_prompt_file,
    iter_prompt_file,
    output_stem,
)
from flux_async._errors import ConfigurationError, ValidationError


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def items_of(entries: list[PromptItem | InputProblem]) -> list[PromptItem]:
    return [e for e in entries if isinstance(e, PromptItem)]


def problems_of(entries: list[PromptItem | InputProblem]) -> list[InputProblem]:
    return [e for e in entries if isinstance(e, InputProblem)]


# --- txt -------------------------------------------------------------------------------


def test_txt_skips_blank_and_comment_lines_and_counts_only_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.txt",
        "\ufeffa red fox\n\n   \n# a comment\n  #indented comment\n  a cat  \nlast",
    )
    entries = list(iter_prompt_file(path))
    assert entries == [
        PromptItem(index=0, line=1, prompt="a red fox"),
        PromptItem(index=1, line=6, prompt="a cat"),
        PromptItem(index=2, line=7, prompt="last"),
    ]


def test_txt_handles_crlf_and_reports_undecodable_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", b"one\r\n\xff\xfe broken\r\ntwo\r\n")
    entries = list(iter_prompt_file(path))
    assert [(e.index, e.line) for e in entries if isinstance(e, PromptItem)] == [(0, 1), (2, 3)]
    [problem] = problems_of(entries)
    assert (problem.line, problem.field, problem.index) == (2, "line", 1)
    assert "UTF-8" in problem.rule
    assert items_of(entries)[0].prompt == "one"


def test_unknown_suffix_raises_value_error_naming_supported_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.yaml", "a: b\n")
    with pytest.raises(ValueError, match=r"\.txt, \.jsonl, \.csv"):
        iter_prompt_file(path)


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, "P.TXT", "hello\n")
    assert [e.prompt for e in items_of(list(iter_prompt_file(path)))] == ["hello"]


# --- jsonl -----------------------------------------------------------------------------


def test_jsonl_reads_fields_name_model_images(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "prompt": "a fox",
                "width": 512,
                "seed": 7,
                "name": "fox",
                "model": "flux-dev",
                "images": ["ref.png", "https://example.test/a.png"],
            }
        ),
        "",
        json.dumps({"prompt": "plain"}),
    ]
    path = write(tmp_path, "p.jsonl", "\n".join(lines) + "\n")
    first, second = list(iter_prompt_file(path))
    assert first == PromptItem(
        index=0,
        line=1,
        prompt="a fox",
        fields={"width": 512, "seed": 7},
        name="fox",
        model="flux-dev",
        images=["ref.png", "https://example.test/a.png"],
    )
    assert second == PromptItem(index=1, line=3, prompt="plain")


def test_jsonl_bad_lines_become_problems_and_keep_their_index(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "ok"}',
        "[1, 2]",
        "{not json",
        '{"prompt": 5, "images": "one.png"}',
        '{"prompt": "after"}',
    ]
    path = write(tmp_path, "p.jsonl", "\n".join(lines))
    entries = list(iter_prompt_file(path))
    problems = problems_of(entries)
    assert [(p.line, p.field, p.index) for p in problems] == [
        (2, "line", 1),
        (3, "line", 2),
        (4, "prompt", 3),
        (4, "images", 3),
    ]
    assert problems[0].rule.startswith("not a JSON object: got list")
    assert problems[1].rule.startswith("not a JSON object:")
    assert str(problems[2]) == f"{path}:4: prompt: must be a string"
    assert [(i.index, i.prompt) for i in items_of(entries)] == [(0, "ok"), (4, "after")]


# --- csv -------------------------------------------------------------------------------


def test_csv_converts_only_known_fields_and_drops_empty_cells(tmp_path: Path) -> None:
    text = (
        "prompt,width,height,seed,guidance,raw,prompt_upsampling,aspect_ratio,output_format,"
        "name,images\n"
        "a fox, 1024 ,768.0,0042,3,TRUE,no,16:9,png,fox,a.png| b.png |\n"
        "a cat,,,,,,,,,,\n"
    )
    path = write(tmp_path, "p.csv", text)
    fox, cat = list(iter_prompt_file(path))
    assert fox == PromptItem(
        index=0,
        line=2,
        prompt="a fox",
        fields={
            "width": 1024,
            "height": 768,
            "seed": 42,
            "guidance": 3.0,
            "raw": True,
            "prompt_upsampling": False,
            "aspect_ratio": "16:9",
            "output_format": "png",
        },
        name="fox",
        images=["a.png", "b.png"],
    )
    assert isinstance(fox, PromptItem)
    assert type(fox.fields["width"]) is int
    assert cat == PromptItem(index=1, line=3, prompt="a cat")


def test_csv_bad_numbers_and_bools_are_problems(tmp_path: Path) -> None:
    text = "prompt,width,guidance,raw\nfox,wide,3,true\ncat,10.5,x,maybe\nowl,512,1.5,false\n"
    path = write(tmp_path, "p.csv", text)
    entries = list(iter_prompt_file(path))
    assert [(p.line, p.field, p.index) for p in problems_of(entries)] == [
        (2, "width", 0),
        (3, "width", 1),
        (3, "guidance", 1),
        (3, "raw", 1),
    ]
    assert str(problems_of(entries)[0]) == f"{path}:2: width: must be a whole number, got 'wide'"
    [owl] = items_of(entries)
    assert (owl.index, owl.fields) == (2, {"width": 512, "guidance": 1.5, "raw": False})


def test_csv_reports_the_physical_line_of_multiline_records(tmp_path: Path) -> None:
    text = (
        '\ufeffprompt,seed\r\n"a fox\r\nin the snow",1\r\n\r\n"second, with comma",2\r\nthird,x\r\n'
    )
    path = write(tmp_path, "p.csv", text)
    entries = list(iter_prompt_file(path))
    first, second = items_of(entries)
    assert (first.line, first.prompt, first.fields) == (2, "a fox\r\nin the snow", {"seed": 1})
    assert (second.index, second.line, second.prompt) == (1, 5, "second, with comma")
    [problem] = problems_of(entries)
    assert (problem.line, problem.index, problem.field) == (6, 2, "seed")


def test_csv_header_without_prompt_is_one_file_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "text,width\nfox,512\n")
    [problem] = list(iter_prompt_file(path))
    assert isinstance(problem, InputProblem)
    assert (problem.line, problem.field, problem.index) == (1, "header", None)
    assert "prompt" in problem.rule


def test_csv_row_with_too_many_cells_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", "prompt,seed\nfox,1,extra\ncat,2\n")
    entries = list(iter_prompt_file(path))
    [problem] = problems_of(entries)
    assert (problem.line, problem.field, problem.index) == (2, "line", 0)
    assert [i.index for i in items_of(entries)] == [1]


# --- streaming -------------------------------------------------------------------------


def test_reading_is_streamed_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    row = json.dumps({"prompt": "a fairly long prompt about foxes " * 3, "seed": 1}) + "\n"
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(row for _ in range(20_000))
    assert path.stat().st_size > 2_000_000
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_prompt_file(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 1_000_000  # a fraction of the file: lines are never all in memory


@pytest.mark.anyio
async def test_aiter_prompt_file_yields_the_same_items(tmp_path: Path) -> None:
    path = write(tmp_path, "p.txt", "\n".join(f"prompt {n}" for n in range(25)))
    seen = [entry async for entry in aiter_prompt_file(path, chunk=4)]
    assert seen == list(iter_prompt_file(path))


# --- validation ------------------------------------------------------------------------


class FakeBuilder:
    """Stands in for build_request: records calls, rejects width 1000 and unknown models."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, dict[str, Any]]] = []

    def __call__(self, model: str, prompt: str | None, **fields: Any) -> object:
        self.calls.append((model, prompt, fields))
        if model == "nope":
            raise ConfigurationError("unknown model 'nope'")
        errors = [
            (k, "must be a multiple of 16") for k in ("width", "height") if fields.get(k) == 1000
        ]
        if errors:
            raise ValidationError(errors[0][0], errors[0][1], model=model, errors=errors)
        return object()


def test_validate_item_merges_defaults_under_item_fields() -> None:
    builder = FakeBuilder()
    item = PromptItem(index=3, line=9, prompt="fox", fields={"width": 512, "seed": None})
    problems = validate_item(
        item,
        defaults={"width": 1024, "seed": 5, "height": 768, "model": "ignored"},
        default_model="flux-dev",
        path=Path("p.jsonl"),
        builder=builder,
    )
    assert problems == []
    assert builder.calls == [("flux-dev", "fox", {"width": 512, "height": 768})]


def test_validate_item_turns_errors_into_problems_with_line() -> None:
    item = PromptItem(index=2, line=12, prompt="fox", fields={"width": 1000, "height": 1000})
    problems = validate_item(
        item, defaults={}, default_model="flux-dev", path=Path("p.jsonl"), builder=FakeBuilder()
    )
    assert [str(p) for p in problems] == [
        "p.jsonl:12: width: must be a multiple of 16",
        "p.jsonl:12: height: must be a multiple of 16",
    ]
    assert {p.index for p in problems} == {2}
    bad_model = PromptItem(index=0, line=1, prompt="fox", model="nope")
    [problem] = validate_item(
        bad_model, defaults={}, default_model="flux-dev", path=Path("p"), builder=FakeBuilder()
    )
    assert (problem.field, problem.rule) == ("model", "unknown model 'nope'")


def test_validate_item_passes_images_as_reference_fields() -> None:
    builder = FakeBuilder()
    item = PromptItem(index=0, line=1, prompt="fox", images=["a.png", "b.png"])
    validate_item(item, defaults={}, default_model="flux-2-pro", path=Path("p"), builder=builder)
    assert builder.calls[0][2] == {"input_image": "a.png", "input_image_2": "b.png"}
    too_many = PromptItem(index=0, line=4, prompt="fox", images=["a.png", "b.png"])
    [problem] = validate_item(
        too_many, defaults={}, default_model="flux-pro-1.1", path=Path("p"), builder=builder
    )
    assert (problem.line, problem.field) == (4, "images")
    assert "at most 1" in problem.rule


def test_reference_image_fields_follow_the_model() -> None:
    assert reference_image_fields("flux-pro-1.1", ["a.png"]) == {"image_prompt": "a.png"}
    assert reference_image_fields("flux-kontext-pro", ["a", "b"]) == {
        "input_image": "a",
        "input_image_2": "b",
    }


def test_validate_item_with_the_real_request_builder() -> None:
    good = PromptItem(index=0, line=1, prompt="fox", fields={"width": 1024, "height": 768})
    assert validate_item(good, defaults={}, default_model="flux-2-pro", path=Path("p")) == []
    bad = PromptItem(index=1, line=2, prompt="fox", fields={"width": 1000})
    problems = validate_item(
        bad, defaults={"height": 768}, default_model="flux-2-pro", path=Path("p")
    )
    assert [(p.line, p.field) for p in problems] == [(2, "width")]


# --- fingerprints ----------------------------------------------------------------------


def test_fingerprint_depends_on_the_merged_request_only() -> None:
    item = PromptItem(index=0, line=1, prompt="fox", fields={"width": 512})
    base = input_fingerprint(item, {"seed": 1, "height": 512}, "flux-dev")
    assert base == input_fingerprint(item, {"height": 512, "seed": 1}, "flux-dev")
    # The same request split differently between item and defaults is the same request.
    moved = PromptItem(index=0, line=1, prompt="fox", fields={"width": 512, "seed": 1})
    assert input_fingerprint(moved, {"height": 512}, "flux-dev") == base
    assert input_fingerprint(item, {"seed": 2, "height": 512}, "flux-dev") != base
    assert input_fingerprint(item, {"seed": 1, "height": 512}, "flux-2-pro") != base
    renamed = PromptItem(index=0, line=1, prompt="fox", fields={"width": 512}, name="x")
    assert input_fingerprint(renamed, {"seed": 1, "height": 512}, "flux-dev") != base
    assert len(base) == 64


# --- output names ----------------------------------------------------------------------


def test_output_stem_defaults_to_index_and_slug() -> None:
    assert (
        output_stem(7, "A Red Fox!  In the Snow", None, digits=5) == "00007-a-red-fox-in-the-snow"
    )
    assert output_stem(12, "Crème brûlée, façade", None, digits=3) == "012-creme-brulee-facade"
    assert output_stem(3, "狐狸 🦊", None, digits=5) == "00003"
    assert output_stem(3, None, None, digits=2) == "03"
    long = output_stem(1, "word " * 40, None, digits=1)
    assert len(long) <= 2 + 48
    assert not long.endswith("-")


def test_output_stem_name_wins_and_drops_an_image_suffix() -> None:
    assert output_stem(0, "fox", "my fox.PNG", digits=5) == "my-fox"
    assert output_stem(0, "fox", "狐狸", digits=5) == "狐狸"
    assert output_stem(4, "fox", "..", digits=5) == "00004-fox"  # nothing left: default wins


NASTY = [
    "../../etc/x",
    "/etc/passwd",
    "C:\\Windows\\system32\\x",
    "\\\\server\\share\\x",
    "..",
    ".",
    "...",
    ".hidden",
    "a/../../b",
    "CON",
    "con.txt",
    "Nul",
    "lpt1.jpeg",
    "a\x00b",
    "\x1b[31mred",
    "tab\tand\nnewline",
    "right\u202eto\u202dleft",
    'x:y*z?<>|"',
    "trailing. . ",
    "~/x",
    "🦊" * 200,
    "é" * 300,
    "  ",
    "",
]


@pytest.mark.parametrize("text", NASTY)
def test_output_stem_never_leaves_the_folder(text: str, tmp_path: Path) -> None:
    for stem in (output_stem(9, text, None, digits=5), output_stem(9, "fox", text, digits=5)):
        assert stem
        assert "/" not in stem
        assert "\\" not in stem
        assert ":" not in stem
        assert not stem.startswith((".", "-", " "))
        assert ".." not in stem
        assert all(ch.isprintable() and ch not in "\t\n" for ch in stem)
        assert stem.split(".")[0].lower() not in {"con", "prn", "aux", "nul", "lpt1", "com1"}
        assert len(stem.encode("utf-8")) <= 120
        target = (tmp_path / f"{stem}.jpeg").resolve()
        assert target.parent == tmp_path.resolve()


def test_output_stem_rejects_nonsense_arguments() -> None:
    with pytest.raises(ValueError, match="index"):
        output_stem(-1, "fox", None, digits=5)


def test_defaults_an_items_own_model_refuses_are_left_out() -> None:
    defaults = {"width": 512, "height": 512, "seed": 3}
    kontext = PromptItem(index=0, line=1, prompt="fox", model="flux-kontext-pro")
    assert merged_fields(kontext, defaults) == {"seed": 3}
    own = PromptItem(index=1, line=2, prompt="fox", model="flux-kontext-pro", fields={"width": 9})
    assert merged_fields(own, defaults) == {"seed": 3, "width": 9}  # the item's word stands
    plain = PromptItem(index=2, line=3, prompt="fox")
    assert merged_fields(plain, defaults) == defaults  # the default model: reported, not dropped
    unknown = PromptItem(index=3, line=4, prompt="fox", model="flux-9")
    assert merged_fields(unknown, defaults) == defaults
