"""The UI-to-API workflow converter the integration tests rely on.

Every shipped-workflow test goes through `harness.workflow_api`, so a mistake
there would make the tests check something other than what the editor
queues. These tests pin it against a workflow saved by hand in the editor's
format (with a reroute, a primitive driving a converted widget, a bypassed
node, muted nodes and notes) and the API prompt the editor sends for it.
The offline tests use a saved slice of ComfyUI 0.3.75's /object_info; one
integration test converts the same workflow with the live server's schemas.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.workflow_api import (
    WorkflowError,
    expected_widget_count,
    has_control_widget,
    to_api_prompt,
    widget_values,
)

DATA = Path(__file__).resolve().parent.parent / "harness" / "data"


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def _without_meta(prompt: dict) -> dict:
    return {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in prompt.items()}


@pytest.fixture
def workflow() -> dict:
    return _load("native_workflow.json")


@pytest.fixture
def object_info_slice() -> dict:
    return _load("object_info_native.json")


def test_hand_saved_workflow_converts_to_the_editor_prompt(workflow, object_info_slice):
    prompt = to_api_prompt(workflow, object_info_slice)
    assert _without_meta(prompt) == _load("native_workflow_api.json")


def test_meta_titles_are_display_names_or_node_titles(workflow, object_info_slice):
    prompt = to_api_prompt(workflow, object_info_slice)
    assert prompt["3"]["_meta"]["title"] == "KSampler"
    assert prompt["4"]["_meta"]["title"] == "Load Checkpoint"


def test_seed_control_value_is_skipped(workflow, object_info_slice):
    # widgets_values is [42, "randomize", 20, ...]: "randomize" belongs to the
    # seed's control widget, not to `steps`.
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    values = widget_values(sampler, object_info_slice["KSampler"])
    assert values["seed"] == 42 and values["steps"] == 20 and values["cfg"] == 7.5


def test_upload_button_value_is_skipped(object_info_slice):
    node = {"id": 1, "type": "LoadImage", "widgets_values": ["example.png", "image"]}
    assert widget_values(node, object_info_slice["LoadImage"]) == {"image": "example.png"}


def test_expected_widget_counts_match_saved_workflows(workflow, object_info_slice):
    for node in workflow["nodes"]:
        if node["type"] in object_info_slice and node.get("widgets_values") is not None:
            assert len(node["widgets_values"]) == expected_widget_count(object_info_slice[node["type"]]), node["type"]


def test_seed_without_option_gets_a_control_as_in_the_editor():
    assert has_control_widget("seed", "INT", {})
    assert has_control_widget("noise_seed", "INT", {})
    assert not has_control_widget("seed", "INT", {"control_after_generate": False})
    assert has_control_widget("variation_seed", "INT", {"control_after_generate": True})
    assert not has_control_widget("steps", "INT", {})
    assert has_control_widget("pick", "COMBO", {"control_after_generate": True, "options": ["a"]})
    assert not has_control_widget("pick", ["a", "b"], {})


def test_v3_combo_and_force_input_widgets():
    info = {
        "input": {
            "required": {
                "mode": ["COMBO", {"options": ["fixed", "increment"]}],
                "seed": ["INT", {"control_after_generate": True}],
                "text": ["STRING", {"forceInput": True}],
                "strength": ["FLOAT", {}],
            }
        },
        "input_order": {"required": ["mode", "seed", "text", "strength"]},
    }
    # "fixed" as a combo's own value is not mistaken for a control value.
    node = {"widgets_values": ["fixed", 7, "increment", 0.5]}
    assert widget_values(node, info) == {"mode": "fixed", "seed": 7, "strength": 0.5}


def test_object_links_format(workflow, object_info_slice):
    # Newer editors may save links as objects instead of arrays.
    converted = copy.deepcopy(workflow)
    converted["links"] = [
        {"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3], "target_slot": l[4], "type": l[5]}
        for l in workflow["links"]
    ]
    assert _without_meta(to_api_prompt(converted, object_info_slice)) == _load("native_workflow_api.json")


def test_bypassed_node_without_matching_input_drops_the_link(workflow, object_info_slice):
    changed = copy.deepcopy(workflow)
    for node in changed["nodes"]:
        if node["type"] == "VAEDecode":
            node["mode"] = 4  # bypassed: it has no IMAGE input to pass through
    prompt = to_api_prompt(changed, object_info_slice)
    assert "8" not in prompt
    assert "images" not in prompt["9"]["inputs"]


def test_unknown_node_type_is_named(workflow, object_info_slice):
    del object_info_slice["VAEDecode"]
    with pytest.raises(WorkflowError, match="VAEDecode"):
        to_api_prompt(workflow, object_info_slice)


def test_subgraphs_are_refused_plainly(workflow, object_info_slice):
    workflow["definitions"] = {"subgraphs": [{"id": "x"}]}
    with pytest.raises(WorkflowError, match="subgraph"):
        to_api_prompt(workflow, object_info_slice)


@pytest.mark.integration
def test_live_object_info_gives_the_same_prompt(workflow, object_info):
    """The saved /object_info slice still matches the server the tests run."""
    prompt = to_api_prompt(workflow, object_info)
    assert _without_meta(prompt) == _load("native_workflow_api.json")
