"""Fuzzing the A1111 routes from their own OpenAPI document: no request gets a 500.

The request schemas come from the served `/sdapi/docs/openapi.json`; for each
body, hypothesis picks a few of the declared properties and gives each either
a value of a wrong type, an out-of-range number, or a small value of the
declared type (so that bodies which validate still run quickly on the tiny
models). Whatever comes back must be a JSON answer with a status below 500:
a client's mistake is a 4xx in A1111's shapes, never a crash.
"""
from __future__ import annotations

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.models import SD15_CHECKPOINT

pytestmark = pytest.mark.integration

ROUTES = {"/sdapi/v1/txt2img": "StableDiffusionTxt2ImgProcessingAPI",
          "/sdapi/v1/img2img": "StableDiffusionImg2ImgProcessingAPI"}
SIZE_FIELDS = {"width", "height", "hr_resize_x", "hr_resize_y"}
HEAVY_INTS = {"steps", "hr_second_pass_steps", "batch_size", "n_iter"}

WRONG = st.one_of(
    st.none(), st.booleans(), st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.integers(min_value=-10**12, max_value=-1), st.floats(allow_nan=False, allow_infinity=False),
)


def _declared_type(schema: dict) -> set:
    kinds = set()
    for option in [schema] + schema.get("anyOf", []) + schema.get("oneOf", []):
        if "type" in option:
            kinds.update(option["type"] if isinstance(option["type"], list) else [option["type"]])
    return kinds


def _small_valid(name: str, schema: dict):
    kinds = _declared_type(schema)
    if name in SIZE_FIELDS:
        return st.sampled_from([0, 64, 63, 72])
    if name in HEAVY_INTS:
        return st.integers(min_value=-2, max_value=2)
    if "integer" in kinds:
        return st.integers(min_value=-5, max_value=5)
    if "number" in kinds:
        return st.floats(min_value=-2, max_value=2, allow_nan=False)
    if "boolean" in kinds:
        return st.booleans()
    if "string" in kinds:
        return st.text(max_size=20)
    if "array" in kinds:
        return st.lists(st.text(max_size=8), max_size=2)
    return st.none()


@pytest.fixture
def request_schemas(comfy):
    document = comfy.get("/sdapi/docs/openapi.json").json()
    schemas = document["components"]["schemas"]
    return {route: schemas[name]["properties"] for route, name in ROUTES.items()}


def _bodies(properties: dict):
    names = sorted(properties)

    @st.composite
    def body(draw):
        chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
        out = {"steps": 1, "width": 64, "height": 64,
               "override_settings": {"sd_model_checkpoint": SD15_CHECKPOINT}}
        for name in chosen:
            out[name] = draw(st.one_of(WRONG, _small_valid(name, properties[name])))
        return out

    return body()


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_no_body_derived_from_the_openapi_document_gets_a_500(idle_comfy, comfy_server, request_schemas, route):
    properties = request_schemas[route]
    failures = []

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_bodies(properties))
    def check(body):
        response = requests.post(comfy_server.url + route, json=body, timeout=120)
        if response.status_code >= 500:
            failures.append((body, response.status_code, response.text[:300]))
        response.json()  # always a JSON answer

    check()
    assert failures == [], failures[:3]
    assert comfy_server.url and requests.get(comfy_server.url + "/system_stats", timeout=10).ok
