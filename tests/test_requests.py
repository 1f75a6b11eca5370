"""Request models: every rule fails locally, naming the field and the rule."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from pydantic import BaseModel, Field

from flux_async._errors import ConfigurationError, ValidationError
from flux_async._request._build import build_request, validate_request
from flux_async._request._request_rules import SEED_MAX, convert_errors, image_order_rules
from flux_async._request._requests import (
    BaseRequest,
    Flux2FlexRequest,
    Flux2Request,
    FluxDevRequest,
    FluxFillRequest,
    FluxUltraRequest,
    KontextRequest,
)

IMG = "https://img.example.com/ref.png"

# (model, fields, expected field, fragment of the rule)
BROKEN: list[tuple[str, dict[str, Any], str, str]] = [
    # FLUX.2 sizes
    ("flux-2-pro", {"width": 1000}, "width", "multiple of 16"),
    ("flux-2-max", {"height": 1032 + 1}, "height", "multiple of 16"),
    ("flux-2-klein-4b", {"width": 48}, "width", ">= 64"),
    ("flux-2-flex", {"height": -16}, "height", ">= 64"),
    ("flux-2-pro", {"width": 4096, "height": 2048}, "width", "<= 4194304 pixels"),
    ("flux-2-pro", {"width": 2048, "height": 2064}, "width", "4 MP"),
    # FLUX.1 sizes
    ("flux-pro-1.1", {"width": 1000}, "width", "multiple of 32 from 256 to 1440"),
    ("flux-pro-1.1", {"height": 1472}, "height", "multiple of 32 from 256 to 1440"),
    ("flux-dev", {"width": 224}, "width", "from 256 to 1440"),
    # ranges
    ("flux-2-pro", {"safety_tolerance": 6}, "safety_tolerance", "<= 5"),
    ("flux-kontext-pro", {"safety_tolerance": 7}, "safety_tolerance", "<= 6"),
    ("flux-pro-1.1", {"safety_tolerance": -1}, "safety_tolerance", ">= 0"),
    ("flux-2-flex", {"steps": 0}, "steps", ">= 1"),
    ("flux-2-flex", {"steps": 51}, "steps", "<= 50"),
    ("flux-pro-1.0-fill", {"image": IMG, "steps": 14}, "steps", ">= 15"),
    ("flux-2-flex", {"guidance": 10.5}, "guidance", "<= 10"),
    ("flux-dev", {"guidance": 5.5}, "guidance", "<= 5"),
    ("flux-pro-1.0-expand", {"image": IMG, "guidance": 1.4}, "guidance", ">= 1.5"),
    ("flux-pro-1.1-ultra", {"image_prompt_strength": 1.5}, "image_prompt_strength", "<= 1"),
    ("flux-pro-1.0-expand", {"image": IMG, "top": 2049}, "top", "<= 2048"),
    ("flux-2-pro", {"seed": -1}, "seed", ">= 0"),
    ("flux-2-pro", {"seed": SEED_MAX + 1}, "seed", f"<= {SEED_MAX}"),
    # reference image counts
    ("flux-2-klein-4b", {"input_image_5": IMG}, "input_image_5", "at most 4 reference images"),
    ("flux-2-pro", {"input_image_9": IMG}, "input_image_9", "at most 8 reference images"),
    ("flux-kontext-max", {"input_image_5": IMG}, "input_image_5", "at most 4 reference images"),
    ("flux-dev", {"input_image": IMG}, "input_image", "accepted: guidance, height"),
    # reference image order
    ("flux-2-pro", {"input_image": IMG, "input_image_3": IMG}, "input_image_3", "input_image_2"),
    ("flux-kontext-pro", {"input_image_2": IMG}, "input_image_2", "fill reference images in order"),
    ("flux-2-pro", {"input_image": ""}, "input_image", "must not be empty"),
    # unknown fields
    ("flux-2-pro", {"steps": 28}, "steps", "not accepted by flux-2-pro (accepted: height"),
    ("flux-2-pro", {"widht": 1024}, "widht", "not accepted by flux-2-pro"),
    ("flux-2-klein-9b", {"prompt_upsampling": True}, "prompt_upsampling", "not accepted"),
    ("flux-kontext-pro", {"width": 1024}, "width", "not accepted"),
    # output_format
    ("flux-2-pro", {"output_format": "jpg"}, "output_format", "'jpeg', 'png' or 'webp'"),
    ("flux-kontext-pro", {"output_format": "gif"}, "output_format", "must be one of"),
    # aspect ratio
    ("flux-kontext-pro", {"aspect_ratio": "1:3"}, "aspect_ratio", "between 21:9 and 9:21"),
    ("flux-pro-1.1-ultra", {"aspect_ratio": "22:9"}, "aspect_ratio", "between 21:9 and 9:21"),
    ("flux-pro-1.1-ultra", {"aspect_ratio": "0:9"}, "aspect_ratio", "between 21:9 and 9:21"),
    ("flux-kontext-pro", {"aspect_ratio": "16x9"}, "aspect_ratio", '"W:H"'),
    ("flux-kontext-pro", {"aspect_ratio": "1.5:1"}, "aspect_ratio", '"W:H"'),
    # prompts
    ("flux-2-pro", {"prompt": ""}, "prompt", "must not be empty"),
    ("flux-kontext-pro", {"prompt": "   "}, "prompt", "must not be empty"),
    ("flux-pro-1.1", {"prompt": ""}, "prompt", "unless image_prompt is set"),
    ("flux-dev", {"prompt": None}, "prompt", "unless image_prompt is set"),
    ("flux-pro-1.1-ultra", {"prompt": " "}, "prompt", "unless image_prompt is set"),
    # webhooks
    ("flux-2-pro", {"webhook_url": "ftp://hooks.example.com/x"}, "webhook_url", "http://"),
    ("flux-2-pro", {"webhook_url": "https://"}, "webhook_url", "https:// URL"),
    ("flux-dev", {"webhook_url": "https://h.example.com/" + "a" * 2062}, "webhook_url", "2083"),
    ("flux-dev", {"webhook_url": ""}, "webhook_url", "must not be empty"),
    # types
    ("flux-2-pro", {"width": True}, "width", "true/false"),
    ("flux-2-pro", {"seed": False}, "seed", "true/false"),
    ("flux-2-pro", {"width": "wide"}, "width", "must be an integer"),
    ("flux-2-pro", {"width": 1024.5}, "width", "must be an integer"),
    ("flux-2-pro", {"seed": [1]}, "seed", "must be an integer"),
    ("flux-2-flex", {"guidance": "high"}, "guidance", "must be a number"),
    ("flux-2-flex", {"guidance": [1]}, "guidance", "must be a number"),
    ("flux-dev", {"guidance": float("nan")}, "guidance", "finite"),
    ("flux-2-flex", {"prompt_upsampling": "maybe"}, "prompt_upsampling", "true or false"),
    ("flux-pro-1.1-ultra", {"raw": [1]}, "raw", "true or false"),
    ("flux-2-pro", {"prompt": 5}, "prompt", "must be a string"),
    ("flux-pro-1.0-fill", {}, "image", "is required"),
]


def _build(model: str, fields: dict[str, Any]) -> BaseRequest:
    data = dict(fields)
    prompt = data.pop("prompt", "a red fox")
    return build_request(model, prompt, **data)


@pytest.mark.parametrize(
    ("model", "fields", "field", "fragment"),
    BROKEN,
    ids=[f"{m}-{f}-{i}" for i, (m, _, f, _) in enumerate(BROKEN)],
)
def test_each_rule_fails_locally(
    model: str, fields: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _build(model, fields)
    err = caught.value
    assert not isinstance(err, pydantic.ValidationError)
    assert err.field == field
    assert fragment in err.rule
    assert err.model == model
    assert f"{field}: " in str(err)
    assert model in err.rule


def test_message_names_field_rule_model_and_value() -> None:
    with pytest.raises(ValidationError) as caught:
        build_request("flux-2-pro", "a fox", width=1000)
    assert caught.value.rule == "must be a multiple of 16 for flux-2-pro (got 1000)"
    assert caught.value.errors == [("width", caught.value.rule)]
    assert "width: must be a multiple of 16 for flux-2-pro (got 1000)" in str(caught.value)


def test_every_broken_field_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        build_request("flux-2-pro", "", width=1000, seed=-3, output_format="gif", steps=4)
    assert {field for field, _ in caught.value.errors} == {
        "prompt",
        "width",
        "seed",
        "output_format",
        "steps",
    }


def test_every_broken_cross_field_rule_is_reported_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        build_request(
            "flux-2-pro", "x", width=4096, height=4096, input_image_2=IMG, input_image_4=IMG
        )
    fields = [field for field, _ in caught.value.errors]
    assert fields == ["input_image_2", "input_image_4", "width"]
    assert all("input_image" in rule for _, rule in caught.value.errors[:2])


def test_image_order_rules_name_the_first_gap() -> None:
    rules = image_order_rules([("a", "x"), ("b", None), ("c", None), ("d", "y")])
    assert [(r.field, "is set but b is not" in r.rule) for r in rules] == [("d", True)]
    assert image_order_rules([("a", "x"), ("b", "y"), ("c", None)]) == []


def test_secrets_are_never_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        build_request("flux-2-pro", "x", webhook_secret=["sim-fake-secret"])
    assert caught.value.field == "webhook_secret"
    assert "sim-fake-secret" not in str(caught.value)


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(ValidationError) as caught:
        build_request("flux-kontext-pro", "x", aspect_ratio="9" * 5000)
    assert "5002 chars" in caught.value.rule
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        ("flux-2-pro", {"width": 64, "height": 1024}),
        ("flux-2-pro", {"width": 2048, "height": 2048}),
        ("flux-2-pro", {"width": 4096, "height": 1024}),
        ("flux-2-klein-4b", {"input_image": IMG, "input_image_2": IMG, "input_image_4": None}),
        ("flux-kontext-pro", {"aspect_ratio": "21:9"}),
        ("flux-kontext-pro", {"aspect_ratio": "9:21"}),
        ("flux-pro-1.1-ultra", {"aspect_ratio": "1:1"}),
        ("flux-pro-1.1", {"width": 1440, "height": 256}),
        ("flux-pro-1.1", {"prompt": "", "image_prompt": IMG}),
        ("flux-dev", {"prompt": None, "image_prompt": IMG}),
        ("flux-pro-1.0-fill", {"prompt": None, "image": IMG}),
        ("flux-pro-1.0-expand", {"prompt": "", "image": IMG, "top": 0}),
        ("flux-2-pro", {"webhook_url": "http://127.0.0.1:8000/hook"}),
        ("flux-2-pro", {"seed": 0}),
        ("flux-2-pro", {"seed": SEED_MAX}),
        ("flux-2-pro", {"width": "1024", "seed": "7"}),
    ],
)
def test_valid_requests_pass(model: str, fields: dict[str, Any]) -> None:
    request = _build(model, fields)
    body = request.to_body()
    for name, value in fields.items():
        if value is not None and value != "":
            assert str(body[name]) == str(value)


def test_to_body_omits_unset_fields_and_model() -> None:
    request = build_request("flux-2-flex", "a fox", seed=3, steps=None, output_format="webp")
    body = request.to_body()
    assert body == {"prompt": "a fox", "seed": 3, "output_format": "webp"}
    assert type(body["output_format"]) is str


def test_zero_size_means_infer_and_is_not_sent() -> None:
    request = build_request("flux-2-pro", "x", width=0, height="0", input_image=IMG)
    assert isinstance(request, Flux2Request)
    assert request.width is None
    assert "width" not in request.to_body()
    assert "height" not in request.to_body()


def test_guidance_int_is_sent_as_a_number() -> None:
    body = build_request("flux-dev", "x", guidance=3).to_body()
    assert body["guidance"] == 3.0


def test_reference_images_in_order() -> None:
    flux2 = build_request("flux-2-pro", "x", input_image="a", input_image_2="b", input_image_3="c")
    assert flux2.reference_images() == ["a", "b", "c"]
    assert flux2.images() == {"input_image": "a", "input_image_2": "b", "input_image_3": "c"}
    ultra = build_request("flux-pro-1.1-ultra", "x", image_prompt="p")
    assert ultra.reference_images() == ["p"]
    fill = build_request("flux-pro-1.0-fill", None, image="i", mask="m")
    assert fill.reference_images() == ["i"]
    assert fill.images() == {"image": "i", "mask": "m"}
    assert build_request("flux-2-pro", "x").reference_images() == []


def test_prompt_text() -> None:
    assert build_request("flux-2-pro", "a fox").prompt_text == "a fox"
    assert build_request("flux-pro-1.0-fill", image=IMG).prompt_text == ""


def test_prompt_given_twice_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        build_request("flux-2-pro", "a", prompt="b")
    assert caught.value.field == "prompt"
    assert build_request("flux-2-pro", prompt="b").prompt_text == "b"


def test_model_keyword_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        build_request("flux-2-pro", "a", model="flux-dev")
    assert caught.value.field == "model"


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_request("flux-3-pro", "a")
    assert "flux-2-pro" in str(caught.value)
    assert "flux-pro-1.0-expand" in str(caught.value)


def test_direct_construction_raises_our_error() -> None:
    with pytest.raises(ValidationError) as caught:
        Flux2Request(model="flux-2-pro", prompt="x", width=1000)
    assert caught.value.field == "width"
    assert isinstance(caught.value.__cause__, pydantic.ValidationError)


def test_direct_construction_without_a_model_name() -> None:
    with pytest.raises(ValidationError) as caught:
        Flux2Request(prompt="x", steps=3)  # type: ignore[call-arg]
    assert caught.value.model is None
    assert dict(caught.value.errors)["model"] == "is required"
    assert "not accepted by this model" in dict(caught.value.errors)["steps"]


def test_validate_request_accepts_a_matching_request() -> None:
    request = KontextRequest(model="flux-kontext-max", prompt="x", aspect_ratio="4:3")
    checked = validate_request(request)
    assert checked == request
    assert checked.to_body() == {"prompt": "x", "aspect_ratio": "4:3"}


def test_validate_request_refuses_another_family() -> None:
    request = Flux2Request(model="flux-dev", prompt="x")
    with pytest.raises(ValidationError) as caught:
        validate_request(request)
    assert caught.value.field == "model"
    assert "FluxDevRequest" in caught.value.rule
    assert "Flux2Request" in caught.value.rule


def test_validate_request_refuses_an_unknown_model() -> None:
    with pytest.raises(ConfigurationError, match="known models"):
        validate_request(FluxDevRequest(model="flux-dev-2", prompt="x"))


def test_validate_request_catches_skipped_validation() -> None:
    request = Flux2FlexRequest.model_construct(model="flux-2-flex", prompt="x", steps=99)
    with pytest.raises(ValidationError) as caught:
        validate_request(request)
    assert caught.value.field == "steps"
    assert "<= 50 for flux-2-flex" in caught.value.rule


def test_replace_validates_and_none_unsets() -> None:
    request = build_request("flux-pro-1.1-ultra", "x", raw=True, seed=5)
    changed = request.replace(seed=None, aspect_ratio="3:2")
    assert changed.to_body() == {"prompt": "x", "raw": True, "aspect_ratio": "3:2"}
    assert isinstance(changed, FluxUltraRequest)
    with pytest.raises(ValidationError):
        request.replace(aspect_ratio="3:1")


def test_requests_are_immutable_and_hashable() -> None:
    request = FluxFillRequest(model="flux-pro-1.0-fill", image=IMG)
    assert hash(request) == hash(FluxFillRequest(model="flux-pro-1.0-fill", image=IMG))


def test_accepted_fields_excludes_model() -> None:
    accepted = Flux2Request.accepted_fields()
    assert "model" not in accepted
    assert list(accepted) == sorted(accepted)
    assert "input_image_8" in accepted


class _Other(BaseModel):
    count: int = Field(gt=0)


def test_convert_errors_keeps_pydantic_wording_it_does_not_reword() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        _Other(count=0)
    err = convert_errors(caught.value, model="m", accepted=["count"])
    assert err.rule == "must be > 0 for m (got 0)"
    with pytest.raises(pydantic.ValidationError) as caught:
        _Other.model_validate("not a mapping")
    err = convert_errors(caught.value, model=None, accepted=["count"])
    assert err.field == "request"
    assert err.rule.startswith("input should be a valid dictionary")


def test_repr_hides_the_secret_unset_fields_and_long_images() -> None:
    image = "data:image/png;base64," + "A" * 10_000
    request = build_request(
        "flux-2-pro",
        "a fox",
        input_image=image,
        webhook_url="https://h.example.com/x",
        webhook_secret="sim-fake-secret",
    )
    text = repr(request)
    assert "sim-fake-secret" not in text
    assert "input_image_2" not in text
    assert "(10022 chars)" in text
    assert len(text) < 400
    assert "prompt='a fox'" in text
