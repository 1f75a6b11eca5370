"""Reference images: classification, limits, sniffing and encoding per dialect."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pytest

from flux_async import ValidationError
from flux_async._request._references import (
    MAX_REFERENCE_BYTES,
    ReferenceImage,
    check_references,
    image_dimensions,
    reference_placeholders,
    resolve_references,
    sniff_image_type,
)
from flux_async.testing._images import render

pytestmark = pytest.mark.anyio

URL = "https://images.example.invalid/cat.png"


def image_bytes(fmt: str = "png", width: int = 64, height: int = 48) -> bytes:
    return b"".join(render(fmt, width, height, seed=3, target=0).chunks())


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "ref.png"
    path.write_bytes(image_bytes("png"))
    return path


@pytest.mark.parametrize(("fmt", "mime"), [("png", "png"), ("jpeg", "jpeg"), ("webp", "webp")])
def test_types_and_sizes_are_read_from_the_bytes(fmt: str, mime: str) -> None:
    data = image_bytes(fmt, 80, 48)
    assert sniff_image_type(data[:16]) == f"image/{mime}"
    assert image_dimensions(data) == (80, 48)


def test_unknown_bytes_are_no_image() -> None:
    assert sniff_image_type(b"GIF89a....") is None
    assert image_dimensions(b"GIF89a" + bytes(30)) is None
    # A lossy WebP header (VP8): 14-bit sizes after the key-frame start code.
    vp8 = b"RIFF\0\0\0\0WEBPVP8 " + bytes(10) + struct.pack("<HH", 320, 200)
    assert image_dimensions(vp8) == (320, 200)


async def test_bfl_gets_raw_base64_and_relays_get_data_urls(png: Path) -> None:
    raw = png.read_bytes()
    b64 = base64.b64encode(raw).decode()
    data_url = f"data:image/png;base64,{b64}"
    images: list[ReferenceImage] = [png, URL, raw, data_url, str(png)]
    bfl = await resolve_references(images, model="flux-2-pro", dialect="bfl")
    assert bfl == {
        "input_image": b64,
        "input_image_2": URL,
        "input_image_3": b64,
        "input_image_4": b64,
        "input_image_5": b64,
    }
    relay = await resolve_references(images, model="flux-2-pro", dialect="openai")
    assert relay["input_image"] == data_url
    assert relay["input_image_2"] == URL
    assert relay["input_image_3"] == relay["input_image_4"] == relay["input_image_5"] == data_url


async def test_each_model_family_fills_its_own_fields(png: Path) -> None:
    assert list(await resolve_references([URL], model="flux-pro-1.1", dialect="bfl")) == [
        "image_prompt"
    ]
    assert list(await resolve_references([png], model="flux-pro-1.0-fill", dialect="bfl")) == [
        "image"
    ]
    kontext = await resolve_references([URL] * 4, model="flux-kontext-pro", dialect="bfl")
    assert list(kontext) == ["input_image", "input_image_2", "input_image_3", "input_image_4"]


@pytest.mark.parametrize(("model", "limit"), [("flux-2-pro", 8), ("flux-2-klein-4b", 4)])
async def test_too_many_images_for_the_model(model: str, limit: int) -> None:
    with pytest.raises(ValidationError) as info:
        reference_placeholders([URL] * (limit + 1), model=model)
    assert info.value.field == "images"
    assert f"at most {limit}" in info.value.rule
    assert info.value.model == model
    with pytest.raises(ValidationError):
        await resolve_references([URL] * (limit + 1), model=model, dialect="bfl")


async def test_missing_and_unreadable_files_are_named_by_position(
    tmp_path: Path, png: Path
) -> None:
    with pytest.raises(ValidationError) as info:
        await resolve_references(
            [png, URL, tmp_path / "nope.png"], model="flux-2-pro", dialect="bfl"
        )
    assert info.value.field == "images[2]"
    assert "no such file" in info.value.rule
    with pytest.raises(ValidationError, match="folder"):
        await resolve_references([tmp_path], model="flux-2-pro", dialect="bfl")
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked.png"
        locked.write_bytes(png.read_bytes())
        locked.chmod(0)
        with pytest.raises(ValidationError, match="cannot read"):
            await resolve_references([locked], model="flux-2-pro", dialect="bfl")


async def test_non_images_empty_and_oversized_files_fail_before_sending(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    big = tmp_path / "big.png"
    with big.open("wb") as handle:
        handle.write(image_bytes("png"))
        handle.truncate(MAX_REFERENCE_BYTES + 1)  # sparse: cheap on disk
    cases = [(text, "not a PNG, JPEG or WebP"), (empty, "empty"), (big, "at most 20 MiB")]
    for path, rule in cases:
        with pytest.raises(ValidationError, match=rule) as info:
            await resolve_references([path], model="flux-2-pro", dialect="openai")
        assert info.value.field == "images[0]"
        with pytest.raises(ValidationError, match=rule):
            await check_references([path], model="flux-2-pro")


def test_bytes_and_data_urls_are_checked_without_io() -> None:
    with pytest.raises(ValidationError, match="not a PNG"):
        reference_placeholders([b"plain text"], model="flux-2-pro")
    with pytest.raises(ValidationError, match="is empty"):
        reference_placeholders([b""], model="flux-2-pro")
    with pytest.raises(ValidationError, match=r"base64,"):
        reference_placeholders(["data:image/png,rawtext"], model="flux-2-pro")
    gif = base64.b64encode(b"GIF89a" + bytes(20)).decode()
    with pytest.raises(ValidationError, match="not a PNG") as info:
        reference_placeholders([URL, f"data:image/gif;base64,{gif}"], model="flux-2-pro")
    assert info.value.field == "images[1]"
    with pytest.raises(ValidationError, match="ftp://"):
        reference_placeholders(["ftp://files.example/cat.png"], model="flux-2-pro")
    with pytest.raises(ValidationError, match="list of images"):
        reference_placeholders("cat.png", model="flux-2-pro")
    with pytest.raises(ValidationError, match="got int"):
        reference_placeholders([3], model="flux-2-pro")  # type: ignore[list-item]


def test_too_many_pixels_is_refused() -> None:
    huge = image_bytes("png", 5000, 5000)  # 25 MP, but a one-colour PNG is small
    with pytest.raises(ValidationError, match="5000x5000 pixels; at most 20 MP"):
        reference_placeholders([huge], model="flux-2-pro")


def test_placeholders_stand_in_for_the_images(png: Path) -> None:
    raw = png.read_bytes()
    assert reference_placeholders([png, URL, raw], model="flux-2-pro") == {
        "input_image": str(png),
        "input_image_2": URL,
        "input_image_3": f"<{len(raw)} bytes>",
    }
    assert reference_placeholders(None, model="flux-2-pro") == {}
    with pytest.raises(ValidationError, match="given together with input_image"):
        reference_placeholders([URL], model="flux-2-pro", fields={"input_image": URL})


async def test_check_references_reads_only_the_head(png: Path) -> None:
    await check_references([png, URL], model="flux-2-pro")
    with pytest.raises(ValidationError, match="images"):
        await check_references([png] * 5, model="flux-2-klein-4b")
