"""Strict request models, one class per request schema of ``bfl-openapi.json``.

A request is checked locally before anything is paid for: unknown fields, ranges,
sizes, reference-image counts and order. Every optional field defaults to ``None`` and
is left out of the body, so the server applies its own defaults; only the fields the
target model has exist on its class, so only those can be sent.

Decisions the OpenAPI document leaves open:

- ``prompt`` must be non-blank for every model except fill/expand. ``flux-pro-1.1``,
  ``flux-pro-1.1-ultra`` and ``flux-dev`` default it to ``""``; there a blank prompt is
  accepted only together with ``image_prompt`` (a blank text-to-image prompt is a mistake
  that would still be billed).
- ``seed`` is an integer from 0 to 2**63 - 1. A negative seed is usually the ``-1``
  "random" sentinel of other image APIs, which BFL does not document (leave ``seed``
  unset for a random one); the upper bound is what the ledger's SQLite INTEGER holds.
- FLUX.2 ``width``/``height`` of ``0`` mean "infer from the first input image", the same
  as leaving them out, so ``0`` is dropped rather than sent.
- Numbers are parsed leniently (``"1024"`` is 1024, as read from a CSV file) but a
  boolean is never taken for a number.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from ._base_request import BaseRequest
from ._request_rules import (
    FLUX2_MAX_PIXELS,
    AspectRatio,
    Flux1Side,
    Flux2Side,
    ImageRef,
    Prompt,
    Rule,
)

__all__ = [
    "BaseRequest",
    "Flux2FlexRequest",
    "Flux2KleinRequest",
    "Flux2Request",
    "FluxDevRequest",
    "FluxExpandRequest",
    "FluxFillRequest",
    "FluxPro11Request",
    "FluxUltraRequest",
    "KontextRequest",
]


def _images(count: int) -> tuple[str, ...]:
    return ("input_image", *(f"input_image_{n}" for n in range(2, count + 1)))


# --- FLUX.2 -------------------------------------------------------------------------


class _Flux2Common(BaseRequest):
    reference_fields = _images(4)
    image_fields = reference_fields

    prompt: Prompt
    input_image: ImageRef | None = None
    input_image_2: ImageRef | None = None
    input_image_3: ImageRef | None = None
    input_image_4: ImageRef | None = None
    width: Flux2Side | None = None
    height: Flux2Side | None = None
    safety_tolerance: Annotated[int, Field(ge=0, le=5)] | None = None

    @field_validator("width", "height", mode="before")
    @classmethod
    def _zero_means_infer(cls, value: Any) -> Any:
        if not isinstance(value, bool) and value in (0, "0"):
            return None
        return value

    def _rules(self) -> list[Rule]:
        rules = super()._rules()
        if self.width is not None and self.height is not None:
            pixels = self.width * self.height
            if pixels > FLUX2_MAX_PIXELS:
                got = f"{self.width}x{self.height} = {pixels}"
                rules.append(
                    Rule("width", f"width*height must be <= {FLUX2_MAX_PIXELS} pixels (4 MP)", got)
                )
        return rules


class Flux2KleinRequest(_Flux2Common):
    """``flux-2-klein-4b``, ``flux-2-klein-9b``, ``flux-2-klein-9b-preview``: up to 4 images.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request("flux-2-klein-4b", "a paper boat", width=512, height=512)
        ```
    """

    schema_name = "Flux2KleinInputs"


class _Flux2Wide(_Flux2Common):
    reference_fields = _images(8)
    image_fields = reference_fields

    input_image_5: ImageRef | None = None
    input_image_6: ImageRef | None = None
    input_image_7: ImageRef | None = None
    input_image_8: ImageRef | None = None


class Flux2Request(_Flux2Wide):
    """``flux-2-pro``, ``flux-2-pro-preview``, ``flux-2-max``: up to 8 reference images.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request("flux-2-pro", "the cat, in a hat", input_image="https://example.com/cat.png")
        ```
    """

    schema_name = "Flux2Inputs"


class Flux2FlexRequest(_Flux2Wide):
    """``flux-2-flex``: FLUX.2 with ``steps``, ``guidance`` and ``prompt_upsampling``.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request("flux-2-flex", "a shop sign", steps=50, guidance=4.5)
        ```
    """

    schema_name = "Flux2FlexInputs"

    prompt_upsampling: bool | None = None
    steps: Annotated[int, Field(ge=1, le=50)] | None = None
    guidance: Annotated[float, Field(ge=1.5, le=10)] | None = None


# --- FLUX.1 Kontext -----------------------------------------------------------------


class KontextRequest(BaseRequest):
    """``flux-kontext-pro``, ``flux-kontext-max``: ``input_image`` (+ 3 experimental).

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request(
            "flux-kontext-pro", "make it night", input_image="https://example.com/a.png"
        )
        ```
    """

    schema_name = "FluxKontextProInputs"
    reference_fields = _images(4)
    image_fields = reference_fields

    prompt: Prompt
    input_image: ImageRef | None = None
    input_image_2: ImageRef | None = None
    input_image_3: ImageRef | None = None
    input_image_4: ImageRef | None = None
    aspect_ratio: AspectRatio | None = None
    prompt_upsampling: bool | None = None
    safety_tolerance: Annotated[int, Field(ge=0, le=6)] | None = None


# --- FLUX1.1 [pro], Ultra, [dev]: text-to-image with an optional image prompt --------


class _ImagePromptRequest(BaseRequest):
    reference_fields = ("image_prompt",)
    image_fields = reference_fields

    prompt: str | None = None
    image_prompt: ImageRef | None = None
    prompt_upsampling: bool | None = None
    safety_tolerance: Annotated[int, Field(ge=0, le=6)] | None = None

    def _rules(self) -> list[Rule]:
        rules = super()._rules()
        if not (self.prompt or "").strip() and self.image_prompt is None:
            rules.append(Rule("prompt", "must not be empty unless image_prompt is set"))
        return rules


class FluxPro11Request(_ImagePromptRequest):
    """``flux-pro-1.1``: 256-1440 pixels a side, multiples of 32.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request("flux-pro-1.1", "a red fox", width=1024, height=768)
        ```
    """

    schema_name = "FluxPro11Inputs"

    width: Flux1Side | None = None
    height: Flux1Side | None = None


class FluxUltraRequest(_ImagePromptRequest):
    """``flux-pro-1.1-ultra``: sized by ``aspect_ratio``; ``raw`` for a natural look.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request("flux-pro-1.1-ultra", "a red fox", aspect_ratio="21:9", raw=True)
        ```
    """

    schema_name = "FluxUltraInput"

    aspect_ratio: AspectRatio | None = None
    raw: bool | None = None
    image_prompt_strength: Annotated[float, Field(ge=0, le=1)] | None = None


class FluxDevRequest(_ImagePromptRequest):
    """``flux-dev``: 256-1440 pixels a side, multiples of 32; ``steps`` and ``guidance``.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request("flux-dev", "a red fox", steps=28, guidance=3.0)
        ```
    """

    schema_name = "FluxDevInputs"

    width: Flux1Side | None = None
    height: Flux1Side | None = None
    steps: Annotated[int, Field(ge=1, le=50)] | None = None
    guidance: Annotated[float, Field(ge=1.5, le=5)] | None = None


# --- FLUX.1 Fill / Expand: edit one given image --------------------------------------


class _EditRequest(BaseRequest):
    reference_fields: ClassVar[tuple[str, ...]] = ("image",)
    image_fields: ClassVar[tuple[str, ...]] = reference_fields

    image: ImageRef
    prompt: str | None = None
    steps: Annotated[int, Field(ge=15, le=50)] | None = None
    guidance: Annotated[float, Field(ge=1.5, le=100)] | None = None
    prompt_upsampling: bool | None = None
    safety_tolerance: Annotated[int, Field(ge=0, le=6)] | None = None


class FluxFillRequest(_EditRequest):
    """``flux-pro-1.0-fill``: inpaint ``image`` where ``mask`` (or its alpha) is white.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request(
            "flux-pro-1.0-fill", "a hat", image="https://a.example/i.png", mask="https://a.example/m.png"
        )
        ```
    """

    schema_name = "FluxProFillInputs"
    image_fields = ("image", "mask")

    mask: ImageRef | None = None


_Margin = Annotated[int, Field(ge=0, le=2048)]


class FluxExpandRequest(_EditRequest):
    """``flux-pro-1.0-expand``: outpaint ``image`` by ``top``/``bottom``/``left``/``right`` px.

    Build it with ``build_request`` (or construct it with ``model=``); every field is
    checked against the model's rules and ``ValidationError`` lists each one broken.

    Examples:
        ```python
        build_request("flux-pro-1.0-expand", image="https://example.com/a.png", top=256)
        ```
    """

    schema_name = "FluxProExpandInputs"

    top: _Margin | None = None
    bottom: _Margin | None = None
    left: _Margin | None = None
    right: _Margin | None = None


# --- entry points ---------------------------------------------------------------------
