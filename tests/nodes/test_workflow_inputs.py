"""Named inputs of a saved workflow: the naming rule, discovery and the checks on values.

The workflow here is built from ComfyUI's own core nodes (their schemas and
display names come from ComfyUI's `nodes` module, imported as a library), so
the rules are tested apart from the pack's nodes; the shipped workflows are
run through the real endpoint in tests/integration/test_workflow_endpoints.py.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest

from diffusers_studio.nodes.workflow_convert import WorkflowError
from diffusers_studio.nodes.workflow_inputs import build_prompt, describe_inputs, named_inputs, node_names


@pytest.fixture(scope="module", autouse=True)
def comfy_nodes():
    """ComfyUI's `nodes` module, as the server has it (the checkout's own `nodes/` folder shadows it on sys.path)."""
    path = Path(os.environ["COMFYUI_PATH"]) / "nodes.py"
    spec = importlib.util.spec_from_file_location("nodes", path)
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "nodes", module)
        spec.loader.exec_module(module)
        yield module


def _node(node_id, node_type, widgets, title=None, inputs=(), outputs=()):
    node = {"id": node_id, "type": node_type, "mode": 0, "widgets_values": list(widgets),
            "inputs": list(inputs), "outputs": list(outputs)}
    if title:
        node["title"] = title
    return node


def _workflow() -> dict:
    """Two untitled KSamplers, a titled prompt, an untitled one, a primitive feeding the second sampler's steps."""
    sampler = [20, 7.0, "euler", "normal", 1.0]
    return {
        "nodes": [
            _node(1, "CheckpointLoaderSimple", ["model.safetensors"],
                  outputs=[{"name": "MODEL", "type": "MODEL", "links": []},
                           {"name": "CLIP", "type": "CLIP", "links": [1]},
                           {"name": "VAE", "type": "VAE", "links": []}]),
            _node(2, "CLIPTextEncode", ["a cat"], title="Positive prompt",
                  inputs=[{"name": "clip", "type": "CLIP", "link": 1}]),
            _node(3, "CLIPTextEncode", ["blurry"]),
            _node(4, "EmptyLatentImage", [512, 512, 1]),
            _node(6, "KSampler", [2, "fixed", *sampler],
                  inputs=[{"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 2}]),
            _node(5, "KSampler", [1, "fixed", *sampler]),
            _node(7, "PrimitiveNode", [20, "fixed"], title="Steps",
                  outputs=[{"name": "INT", "type": "INT", "links": [2], "widget": {"name": "steps"}}]),
            _node(8, "Note", ["a note"]),
            _node(9, "SaveImage", ["ComfyUI"]),
        ],
        "links": [[1, 1, 1, 2, 0, "CLIP"], [2, 7, 0, 6, 0, "INT"]],
    }


def test_names_are_titles_else_display_names_numbered_by_node_id():
    names = node_names(_workflow()["nodes"])
    assert names["Positive prompt"] == ["2"]
    assert names["CLIP Text Encode (Prompt)"] == ["3"]
    assert names["Load Checkpoint"] == ["1"]
    assert names["KSampler"] == ["5", "6"]  # a shared name addresses every node showing it
    assert names["KSampler #1"] == ["5"] and names["KSampler #2"] == ["6"]  # node-id order, not file order
    assert "Empty Latent Image #1" not in names  # numbered names only where a name is shared


def test_every_widget_is_an_input_and_links_are_not():
    inputs = named_inputs(_workflow())
    assert [t.node_id for t in inputs["KSampler.seed"]] == ["5", "6"]
    assert [t.node_id for t in inputs["KSampler #2.seed"]] == ["6"]
    assert [(t.node_id, t.widget) for t in inputs["KSampler"]] == [("5", "seed"), ("6", "seed")]
    assert "KSampler #2.steps" not in inputs  # fed by the primitive
    assert "Positive prompt.clip" not in inputs and "Positive prompt" in inputs
    assert "Empty Latent Image.width" in inputs and "Save Image.filename_prefix" in inputs
    assert not any(name.startswith("Note") for name in inputs)


def test_discovery_lists_type_default_range_options_and_nodes():
    described = describe_inputs(_workflow())
    seed = described["KSampler #1.seed"]
    assert seed["type"] == "INT" and seed["default"] == 1 and seed["min"] == 0 and seed["nodes"] == ["5"]
    assert "euler" in described["KSampler #2.sampler_name"]["options"]
    # the primitive takes the range of the widget it feeds
    assert described["Steps"] == {"type": "INT", "min": 1, "max": 10000, "default": 20, "nodes": ["7"]}


def test_values_land_on_the_widgets_they_name():
    prompt = build_prompt(_workflow(), {"inputs": {"KSampler #2.seed": 9, "Steps": 4, "Empty Latent Image.width": 64,
                                                   "Positive prompt": "a dog", "KSampler #1.cfg": 3}})
    assert prompt["6"]["inputs"]["seed"] == 9 and prompt["5"]["inputs"]["seed"] == 1
    assert prompt["6"]["inputs"]["steps"] == 4 and prompt["5"]["inputs"]["steps"] == 20
    assert prompt["4"]["inputs"]["width"] == 64 and prompt["2"]["inputs"]["text"] == "a dog"
    assert prompt["5"]["inputs"]["cfg"] == 3.0 and isinstance(prompt["5"]["inputs"]["cfg"], float)
    both = build_prompt(_workflow(), {"KSampler.seed": 11})
    assert both["5"]["inputs"]["seed"] == both["6"]["inputs"]["seed"] == 11


def test_a_shared_title_still_sets_every_node():
    workflow = _workflow()
    workflow["nodes"][2]["title"] = "Positive prompt"
    prompt = build_prompt(workflow, {"Positive prompt": "a dog", "Positive prompt #2": "a fox"})
    assert prompt["2"]["inputs"]["text"] == "a dog" and prompt["3"]["inputs"]["text"] == "a fox"


def test_a_title_wins_over_the_same_display_name():
    workflow = _workflow()
    workflow["nodes"][2]["title"] = "KSampler"  # a text encoder titled like the untitled samplers
    names = node_names(workflow["nodes"])
    assert names["KSampler"] == ["3"]
    assert names["KSampler #1"] == ["3"] and names["KSampler #2"] == ["5"] and names["KSampler #3"] == ["6"]
    prompt = build_prompt(workflow, {"KSampler": "a fox", "KSampler #3.seed": 4})
    assert prompt["3"]["inputs"]["text"] == "a fox" and prompt["6"]["inputs"]["seed"] == 4


@pytest.mark.parametrize("body, words", [
    ({"KSampler.sed": 5}, ["'KSampler.sed'", "did you mean", "'KSampler.seed'", "GET /ds/workflows/flow"]),
    ({"seed": 5}, ["'seed'", "'KSampler #1.seed'"]),
    ({"KSampler #1.steps": 0}, ["KSampler #1.steps", "0", "from 1 to 10000"]),
    ({"KSampler #1.steps": "many"}, ["KSampler #1.steps", "'many'", "whole number"]),
    ({"KSampler #1.steps": 2.5}, ["KSampler #1.steps", "2.5", "whole number"]),
    ({"KSampler #1.cfg": math.nan}, ["KSampler #1.cfg", "nan", "a JSON number"]),
    ({"KSampler #1.cfg": True}, ["KSampler #1.cfg", "True"]),
    ({"KSampler #1.sampler_name": "eular"}, ["'eular'", "did you mean", "'euler'"]),
    ({"Positive prompt": 3}, ["Positive prompt", "3", "a JSON string"]),
])
def test_mistakes_name_the_input_the_value_and_the_fix(body, words):
    with pytest.raises(WorkflowError) as caught:
        build_prompt(_workflow(), body, "flow")
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert caught.value.details[0]["loc"] == ["body", next(iter(body))]


def test_every_mistake_of_a_request_is_reported():
    with pytest.raises(WorkflowError) as caught:
        build_prompt(_workflow(), {"nope": 1, "KSampler #1.steps": 0, "Steps": "x"})
    assert [d["loc"][-1] for d in caught.value.details] == ["nope", "KSampler #1.steps", "Steps"]


def test_the_body_must_be_an_object():
    with pytest.raises(WorkflowError, match="JSON object"):
        build_prompt(_workflow(), ["KSampler.seed", 5])
