"""The model catalog: limits, request types, behaviour figures, lookups."""

from __future__ import annotations

import pytest

from flux_async._errors import ConfigurationError
from flux_async._request._catalog import DEFAULT_ACTIVE_LIMIT, MODELS, ModelSpec, get_model
from flux_async._request._requests import (
    Flux2FlexRequest,
    Flux2KleinRequest,
    Flux2Request,
    FluxExpandRequest,
    FluxFillRequest,
    KontextRequest,
)

SIZE_FIELD = {
    "pixels16": "width",
    "pixels32": "width",
    "aspect_ratio": "aspect_ratio",
    "from_image": "image",
}


def test_active_limits() -> None:
    assert DEFAULT_ACTIVE_LIMIT == 24
    assert get_model("flux-kontext-max").active_limit == 6
    others = {spec.active_limit for name, spec in MODELS.items() if name != "flux-kontext-max"}
    assert others == {DEFAULT_ACTIVE_LIMIT}


@pytest.mark.parametrize(
    ("name", "request_type", "max_images"),
    [
        ("flux-2-pro", Flux2Request, 8),
        ("flux-2-max", Flux2Request, 8),
        ("flux-2-flex", Flux2FlexRequest, 8),
        ("flux-2-klein-4b", Flux2KleinRequest, 4),
        ("flux-2-klein-9b-preview", Flux2KleinRequest, 4),
        ("flux-kontext-pro", KontextRequest, 4),
        ("flux-pro-1.1", None, 1),
        ("flux-pro-1.1-ultra", None, 1),
        ("flux-dev", None, 1),
        ("flux-pro-1.0-fill", FluxFillRequest, 1),
        ("flux-pro-1.0-expand", FluxExpandRequest, 1),
    ],
)
def test_request_types_and_reference_limits(
    name: str, request_type: type | None, max_images: int
) -> None:
    spec = get_model(name)
    if request_type is not None:
        assert spec.request_type is request_type
    assert spec.max_reference_images == max_images
    assert len(spec.request_type.reference_fields) == max_images


@pytest.mark.parametrize("spec", MODELS.values(), ids=list(MODELS))
def test_spec_is_consistent(spec: ModelSpec) -> None:
    assert MODELS[spec.name] is spec
    assert SIZE_FIELD[spec.size_mode] in spec.accepted_fields
    assert spec.default_output_format == ("png" if spec.family == "kontext" else "jpeg")
    assert spec.latency_median > 0
    assert 0 < spec.latency_sigma < 2
    assert "model" not in spec.accepted_fields


def test_one_request_type_per_family() -> None:
    by_family: dict[str, set[type]] = {}
    for spec in MODELS.values():
        by_family.setdefault(spec.family, set()).add(spec.request_type)
    assert all(len(types) == 1 for types in by_family.values())
    assert len(by_family) == 9


def test_latency_order_follows_bfl_guide() -> None:
    def latency(name: str) -> float:
        return get_model(name).latency_median

    assert latency("flux-2-klein-4b") < latency("flux-2-pro") < latency("flux-2-max")
    assert latency("flux-2-max") < latency("flux-2-flex")


def test_unknown_model_error_lists_known_names() -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_model("flux-2-proo")
    message = str(caught.value)
    assert all(name in message for name in MODELS)
    assert "did you mean 'flux-2-pro'?" in message
    assert isinstance(caught.value, ValueError)


def test_unknown_model_without_a_close_match() -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_model("zzz")
    assert "did you mean" not in str(caught.value)


def test_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODELS["x"] = MODELS["flux-dev"]  # type: ignore[index]
