"""The simulator is as strict as BFL's OpenAPI document, no stricter, and agrees with the client.

- Its own validator (``flux_async.testing._schema``) gives the same verdict as
  ``jsonschema`` on every request schema of the document, for a valid body and for each
  field set to each of a spread of wrong values.
- Every catalog model's minimal and maximal body, as the client builds it, passes the
  simulator; a bound the client enforces is enforced by the simulator on the same side.
- The cases the issue found: webp on FLUX.1, an optional prompt with ``image_prompt``,
  ``safety_tolerance``/``steps``/``guidance`` ranges, FLUX.2 ``width``/``height`` 0.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from flux_async._errors import ValidationError
from flux_async._request._build import build_request
from flux_async._request._catalog import MODELS
from flux_async.testing import FAKE_API_KEY, Simulator
from flux_async.testing._schema import openapi_document, request_schema, validate
from flux_async.testing._validation import DOCUMENTED_RULES, check

from .test_contract_openapi import BOUNDS, PATHS, SCHEMAS, SPEC, SPEC_URI, VALID

WRONG: list[Any] = [None, "", "x", 0, -1, 7, 1.5, 4000, True, [], {}, "a" * 2100]


def plain_validator(schema_name: str) -> Any:
    """jsonschema without format checks: ``format`` is an annotation, as in our validator."""
    resource = Resource.from_contents(SPEC, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=registry)


def full_body(name: str) -> dict[str, Any]:
    spec = MODELS[name]
    return build_request(name, **{f: VALID[f] for f in spec.accepted_fields}).to_body()


def minimal_body(name: str) -> dict[str, Any]:
    fields = {"image": VALID["image"]} if MODELS[name].size_mode == "from_image" else {}
    return build_request(name, VALID["prompt"], **fields).to_body()


def test_the_shipped_document_is_the_one_the_contract_tests_use() -> None:
    assert openapi_document() == SPEC


@pytest.mark.parametrize("name", sorted(PATHS))
def test_our_validator_agrees_with_jsonschema(name: str) -> None:
    schema = request_schema(name)
    assert schema is not None
    reference = plain_validator(PATHS[name])
    base = full_body(name)
    bodies = [base, {}, {"prompt": "x"}]
    for field in SCHEMAS[PATHS[name]]["properties"]:
        bodies += [{**base, field: value} for value in WRONG]
        bodies.append({k: v for k, v in base.items() if k != field})
    disagreements = []
    for body in bodies:
        ours = validate(schema, body)
        theirs = [e.message for e in reference.iter_errors(body)]
        if bool(ours) != bool(theirs):
            disagreements.append((body, ours, theirs))
    assert disagreements == []


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", ["minimal", "maximal"])
def test_what_the_client_builds_the_simulator_accepts(name: str, shape: str) -> None:
    body = minimal_body(name) if shape == "minimal" else full_body(name)
    assert check(name, body) == []
    for fmt in SCHEMAS["OutputFormat"]["enum"]:
        assert check(name, {**body, "output_format": fmt}) == [], fmt


@pytest.mark.parametrize(("name", "field", "bound"), BOUNDS, ids=[f"{m}-{f}" for m, f, _ in BOUNDS])
def test_client_and_simulator_draw_each_bound_at_the_same_place(
    name: str, field: str, bound: dict[str, Any]
) -> None:
    base = {f: VALID[f] for f in MODELS[name].accepted_fields if f not in ("width", "height")}
    step = int(bound.get("multipleOf", 1)) if bound["type"] == "integer" else 0.5
    edges = []
    if "minimum" in bound:
        edges.append((bound["minimum"], bound["minimum"] - step))
    if "maximum" in bound:
        edges.append((bound["maximum"], bound["maximum"] + step))
    for inside, outside in edges:
        value = int(inside) if bound["type"] == "integer" else inside
        body = build_request(name, **{**base, field: value}).to_body()
        assert check(name, body) == []
        with pytest.raises(ValidationError):
            build_request(name, **{**base, field: outside})
        refused = check(name, {**body, field: outside})
        assert [p["loc"] for p in refused] == [["body", field]], refused


async def submit(model: str, body: Any) -> httpx.Response:
    sim = Simulator()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.config.api_base) as client:
        return await client.post(f"/v1/{model}", json=body, headers={"x-key": FAKE_API_KEY})


FLUX1 = [
    "flux-pro-1.1",
    "flux-dev",
    "flux-pro-1.1-ultra",
    "flux-pro-1.0-fill",
    "flux-pro-1.0-expand",
    "flux-kontext-pro",
    "flux-kontext-max",
]


@pytest.mark.anyio
@pytest.mark.parametrize("name", FLUX1)
async def test_webp_is_accepted_on_flux1_as_the_document_allows(name: str) -> None:
    body = {**minimal_body(name), "output_format": "webp"}
    build_request(name, **body)  # the client takes it too
    assert (await submit(name, body)).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["flux-pro-1.1", "flux-dev", "flux-pro-1.1-ultra"])
@pytest.mark.parametrize("prompt", [None, ""])
async def test_prompt_is_optional_with_an_image_prompt(name: str, prompt: str | None) -> None:
    body: dict[str, Any] = {"image_prompt": VALID["image_prompt"]}
    if prompt is not None:
        body["prompt"] = prompt
    build_request(name, prompt, image_prompt=VALID["image_prompt"])  # the client agrees
    assert (await submit(name, body)).status_code == 200


OUT_OF_RANGE = [
    ("flux-pro-1.1", "safety_tolerance", -1),
    ("flux-pro-1.1", "safety_tolerance", 7),
    ("flux-2-pro", "safety_tolerance", 6),
    ("flux-2-klein-4b", "safety_tolerance", 6),
    ("flux-dev", "steps", 51),
    ("flux-dev", "guidance", 5.5),
    ("flux-2-flex", "steps", 0),
    ("flux-2-flex", "guidance", 10.5),
    ("flux-pro-1.0-fill", "steps", 14),
    ("flux-pro-1.0-fill", "guidance", 100.5),
    ("flux-pro-1.0-expand", "steps", 51),
    ("flux-pro-1.0-expand", "guidance", 1),
    ("flux-2-pro", "width", 0),
    ("flux-2-pro", "height", 0),
    ("flux-2-max", "width", 1000),  # documented beyond the schema: multiples of 16
    ("flux-2-pro", "width", 4096),  # documented beyond the schema: at most 4 MP
]


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "field", "value"), OUT_OF_RANGE)
async def test_what_the_schema_rejects_the_simulator_rejects(
    name: str, field: str, value: Any
) -> None:
    body = {**minimal_body(name), field: value}
    if field == "width" and value == 4096:
        body["height"] = 4096
    answer = await submit(name, body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail[0]["loc"] in (["body", field], ["body"])
    assert isinstance(detail[0]["msg"], str)
    assert detail[0]["msg"]


def test_the_client_drops_a_flux2_size_of_0_instead_of_sending_it() -> None:
    body = build_request("flux-2-pro", "x", width=0, height=0).to_body()
    assert "width" not in body
    assert "height" not in body
    assert check("flux-2-pro", body) == []


def test_every_rule_beyond_the_schema_names_its_source() -> None:
    assert DOCUMENTED_RULES
    for models, rule, source in DOCUMENTED_RULES:
        assert models
        assert rule
        assert source.startswith("BFL docs")


def test_messages_speak_fastapi() -> None:
    problems = check("flux-dev", {"prompt": "x", "steps": "many", "width": 1000})
    steps = {"loc": ["body", "steps"], "msg": "Input should be a valid integer", "type": "int_type"}
    width = {
        "loc": ["body", "width"],
        "msg": "Input should be a multiple of 32",
        "type": "multiple_of",
    }
    assert problems == [steps, width]  # in the body's order
    assert json.dumps(problems)  # JSON-able, as the 422 body carries it


def test_an_unsupported_keyword_is_not_silently_ignored() -> None:
    with pytest.raises(NotImplementedError, match="pattern"):
        validate({"type": "string", "pattern": "^a"}, "b")
