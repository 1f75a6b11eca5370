"""Every body we build is valid against BFL's own OpenAPI document.

The document is the copy the simulator ships, ``flux_async/testing/bfl-openapi.json``, so
the tests do not depend on the ``shared/`` checkout; a drift test compares it with
``../shared`` when that is present.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from flux_async._errors import ValidationError
from flux_async._request._build import build_request
from flux_async._request._catalog import MODELS, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "flux_async" / "testing" / "bfl-openapi.json"
SHARED_SPEC_PATH = ROOT.parent / "shared" / "specs" / "bfl-openapi.json"
SPEC_URI = "urn:bfl-openapi"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]

# Schema fields we deliberately do not offer, with the reason.
NOT_OFFERED = {
    # An internal storage path of BFL's, not a user-facing input.
    "input_image_blob_path",
}

# One valid value per body field; a model takes the subset it accepts.
VALID: dict[str, Any] = {
    "prompt": "a red fox in the snow",
    "seed": 42,
    "width": 1024,
    "height": 768,
    "safety_tolerance": 2,
    "output_format": "png",
    "webhook_url": "https://hooks.example.com/flux?job=7",
    "webhook_secret": "sim-fake-secret",
    "aspect_ratio": "16:9",
    "prompt_upsampling": True,
    "raw": True,
    # A 1x1 PNG, base64: image prompts are documented as base64.
    "image_prompt": (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    ),
    "image_prompt_strength": 0.4,
    "image": "https://img.example.com/source.png",
    "mask": "https://img.example.com/mask.png",
    "steps": 30,
    "guidance": 3.5,
    "top": 256,
    "bottom": 0,
    "left": 128,
    "right": 2048,
    **{f"input_image{s}": f"https://img.example.com/ref{s}.png" for s in ["", "_2", "_3", "_4"]},
    **{f"input_image_{n}": f"https://img.example.com/ref_{n}.png" for n in range(5, 9)},
}


def generation_paths() -> dict[str, str]:
    """Return ``{model name: request schema name}`` for every generation endpoint."""
    found: dict[str, str] = {}
    for path, ops in SPEC["paths"].items():
        post = ops.get("post")
        if post is None or "finetune" in path:
            continue
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        found[path.removeprefix("/v1/")] = ref.rsplit("/", 1)[-1]
    return found


PATHS = generation_paths()


def validator_for(schema_name: str) -> Any:
    resource = Resource.from_contents(SPEC, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(
        schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def assert_valid_body(spec: ModelSpec, body: dict[str, Any]) -> None:
    schema_name = PATHS[spec.name]
    errors = [e.message for e in validator_for(schema_name).iter_errors(body)]
    assert errors == [], f"{spec.name}: {errors}"
    # The schemas allow extra properties; we must still send only declared ones.
    assert set(body) <= set(SCHEMAS[schema_name]["properties"])


def numeric_bounds() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield ``(model, field, number schema)`` for every bounded number in the document."""
    for name in MODELS:
        for field, prop in SCHEMAS[PATHS[name]]["properties"].items():
            for option in prop.get("anyOf", [prop]):
                if option.get("type") in ("integer", "number") and (
                    "minimum" in option or "maximum" in option
                ):
                    yield name, field, option


BOUNDS = list(numeric_bounds())


def test_spec_copy_matches_shared() -> None:
    if not SHARED_SPEC_PATH.exists():
        pytest.skip("no ../shared checkout beside the repository")
    assert json.loads(SHARED_SPEC_PATH.read_text(encoding="utf-8")) == SPEC


def test_every_generation_path_has_a_catalog_entry() -> None:
    assert sorted(PATHS) == sorted(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_request_type_matches_the_path_schema(name: str) -> None:
    assert MODELS[name].request_type.schema_name == PATHS[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fields_match_the_schema(name: str) -> None:
    schema = SCHEMAS[PATHS[name]]
    ours = set(MODELS[name].accepted_fields)
    theirs = set(schema["properties"])
    assert ours <= theirs
    assert theirs - ours <= NOT_OFFERED
    for field in schema.get("required", []):
        assert MODELS[name].request_type.model_fields[field].is_required()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_minimal_body_is_valid(name: str) -> None:
    spec = MODELS[name]
    fields = {"image": VALID["image"]} if spec.size_mode == "from_image" else {}
    request = build_request(name, VALID["prompt"], **fields)
    assert_valid_body(spec, request.to_body())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_body_is_valid(name: str) -> None:
    spec = MODELS[name]
    fields = {field: VALID[field] for field in spec.accepted_fields}
    body = build_request(name, **fields).to_body()
    assert set(body) == set(spec.accepted_fields)
    assert_valid_body(spec, body)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_output_format_of_the_enum_is_accepted(name: str) -> None:
    spec = MODELS[name]
    base = {field: VALID[field] for field in spec.accepted_fields}
    for fmt in SCHEMAS["OutputFormat"]["enum"]:
        assert_valid_body(spec, build_request(name, **{**base, "output_format": fmt}).to_body())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_webhook_url_length_limit_matches_the_schema(name: str) -> None:
    spec = MODELS[name]
    prop = SCHEMAS[PATHS[name]]["properties"]["webhook_url"]["anyOf"][0]
    prefix = "https://hooks.example.com/"
    longest = prefix + "a" * (prop["maxLength"] - len(prefix))
    base = {field: VALID[field] for field in spec.accepted_fields}
    assert_valid_body(spec, build_request(name, **{**base, "webhook_url": longest}).to_body())
    with pytest.raises(ValidationError) as caught:
        build_request(name, **{**base, "webhook_url": longest + "a"})
    assert caught.value.field == "webhook_url"


@pytest.mark.parametrize(("name", "field", "bound"), BOUNDS, ids=[f"{m}-{f}" for m, f, _ in BOUNDS])
def test_numeric_bounds_match_the_schema(name: str, field: str, bound: dict[str, Any]) -> None:
    spec = MODELS[name]
    base = {f: VALID[f] for f in spec.accepted_fields if f not in ("width", "height")}
    step = int(bound.get("multipleOf", 1)) if bound["type"] == "integer" else 0.5
    edges: list[tuple[Any, Any]] = []
    if "minimum" in bound:
        low = bound["minimum"]
        edges.append((int(low) if bound["type"] == "integer" else low, low - step))
    if "maximum" in bound:
        high = bound["maximum"]
        edges.append((int(high) if bound["type"] == "integer" else high, high + step))
    for inside, outside in edges:
        body = build_request(name, **{**base, field: inside}).to_body()
        assert body[field] == inside
        assert_valid_body(spec, body)
        with pytest.raises(ValidationError) as caught:
            build_request(name, **{**base, field: outside})
        assert caught.value.field == field
