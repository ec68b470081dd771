"""Every shipped workflow runs on a real server, as the editor would queue it.

The files in example_workflows/ are found by glob, so a workflow is tested
the day it lands. Each is converted from the editor's format with the
server's /object_info (harness.workflow_api) and queued on /prompt. For a
CPU, the API prompt is shrunk before queueing (harness.prompts.shrink):
EmptyLatentImage at 64x64 with batch 1 and at most 3 sampler steps. Nothing
else is changed: the model files, samplers, schedules, denoise, prompts and
the LoadImage picture are the ones the workflow ships with. The harness
provides the models under the real file names (tiny, random weights) and
`example.png` (64x64) in the input folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from harness.prompts import shrink
from harness.workflow_api import (
    NOTE_TYPES,
    example_workflow_files,
    expected_widget_count,
    nodes_of_type,
    to_api_prompt,
    upstream,
)

pytestmark = pytest.mark.integration

TEST_SIZE = 64
WORKFLOWS = example_workflow_files()


def test_there_are_shipped_workflows():
    names = {path.name for path in WORKFLOWS}
    assert {"txt2img_sd15.json", "txt2img_sdxl.json", "img2img.json"} <= names


def test_editor_offers_the_shipped_workflows_as_templates(comfy):
    """The editor's template browser lists the pack's example_workflows/ and loads them from the server."""
    listing = comfy.get("/api/workflow_templates").json()
    assert sorted(listing.get("diffusers_studio", [])) == sorted(path.stem for path in WORKFLOWS), listing
    for path in WORKFLOWS:
        served = comfy.get(f"/api/workflow_templates/diffusers_studio/{path.name}")
        assert served.status_code == 200, path.name
        assert served.json() == json.loads(path.read_text(encoding="utf-8")), path.name


def test_shipped_workflows_use_only_listed_nodes_and_have_a_note(object_info):
    """Only nodes the server has, and a Note saying what the workflow does and which model it expects."""
    for path in WORKFLOWS:
        workflow = json.loads(path.read_text(encoding="utf-8"))
        types = [node["type"] for node in workflow["nodes"]]
        notes = [node for node in workflow["nodes"] if node["type"] in ("Note", "MarkdownNote")]
        assert notes and str(notes[0].get("widgets_values", [""])[0]).strip(), f"{path.name} has no explanatory Note"
        note_text = " ".join(str(value) for note in notes for value in note.get("widgets_values") or [])
        for node in workflow["nodes"]:
            if node["type"] == "DSLoadModel":
                model = node["widgets_values"][0]
                assert model in note_text, f"{path.name}: the Note does not say it expects {model}"
        unknown = [t for t in types if t not in object_info and t not in ("Note", "MarkdownNote")]
        assert not unknown, f"{path.name} uses node types the server lacks: {unknown}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_shipped_workflow_is_consistent_with_the_node_schemas(path, object_info):
    """Links agree on both ends and widgets_values match each node's current widgets.

    The editor silently drops a link whose ends disagree, and assigns saved
    values to widgets by position: a node that gained or lost a widget since
    the workflow was saved shifts every later value. This catches both when
    a node's inputs change and the workflow was not re-saved.
    """
    workflow = json.loads(path.read_text(encoding="utf-8"))
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "duplicate node ids"
    assert workflow["last_node_id"] >= max(nodes)
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    assert workflow["last_link_id"] >= max(link_ids, default=0)
    for link_id, source, source_slot, target, target_slot, link_type in workflow["links"]:
        output = nodes[source]["outputs"][source_slot]
        socket = nodes[target]["inputs"][target_slot]
        assert link_id in (output.get("links") or []), f"link {link_id} missing from node {source}'s output"
        assert socket.get("link") == link_id, f"link {link_id} missing from node {target}'s input"
        assert output["type"] == socket["type"] == link_type, f"link {link_id}: {output['type']} -> {socket['type']}"
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES:
            continue
        info = object_info[node["type"]]
        assert len(node.get("widgets_values") or []) == expected_widget_count(info), (
            f"node {node['id']} ({node['type']}): {len(node.get('widgets_values') or [])} saved values, "
            f"the schema has {expected_widget_count(info)} widget values: re-save the workflow"
        )
        names = [output["name"] for output in node.get("outputs") or []]
        assert names == info["output_name"], f"node {node['id']} ({node['type']}) outputs {names}"
        sockets = {name for section in ("required", "optional") for name in info["input"].get(section, {})}
        unknown = [socket["name"] for socket in node.get("inputs") or [] if socket["name"] not in sockets]
        assert not unknown, f"node {node['id']} ({node['type']}) has inputs the schema lacks: {unknown}"


def _expected_size(prompt: dict, save_id: str, input_dir: Path) -> tuple[int, int]:
    """The picture size a SaveImage should get: from the nearest latent or image source, enlarged by
    any SD upscale on the way (scale times each side, on the 8-pixel grid)."""
    scale = 1.0
    for node_id in upstream(prompt, save_id):
        node = prompt[node_id]
        if node["class_type"] == "DSSDUpscale":
            scale *= node["inputs"]["scale"]
            continue
        size = None
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            size = node["inputs"]["width"], node["inputs"]["height"]
        if node["class_type"] == "LoadImage":
            with Image.open(input_dir / node["inputs"]["image"]) as picture:
                size = picture.size
        if size is not None:
            return size if scale == 1.0 else tuple(max(64, round(side * scale / 8) * 8) for side in size)
    raise AssertionError(f"no EmptyLatentImage or LoadImage upstream of SaveImage {save_id}")


def _expected_count(prompt: dict, save_id: str) -> int:
    for node_id in upstream(prompt, save_id):
        if prompt[node_id]["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            return prompt[node_id]["inputs"]["batch_size"]
    return 1


@pytest.mark.parametrize("path", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_shipped_workflow_runs(path, idle_comfy, object_info, comfy_server):
    """Queued as shipped, except 64x64, batch 1 and at most 3 steps (see the module docstring)."""
    workflow = json.loads(path.read_text(encoding="utf-8"))
    prompt = shrink(to_api_prompt(workflow, object_info), size=TEST_SIZE)
    saves = nodes_of_type(prompt, "SaveImage")
    assert saves, f"{path.name} has no SaveImage node: a user would see no result"

    result = idle_comfy.run(prompt, timeout=180)
    assert result.status == "success", f"{path.name} failed:\n{result.summary()}"
    assert result.history.get("status", {}).get("completed") is True, result.history.get("status")

    for save_id, _node in saves:
        images = result.outputs.get(save_id, {}).get("images", [])
        assert len(images) == _expected_count(prompt, save_id), f"SaveImage {save_id}: {images}"
        expected = _expected_size(prompt, save_id, comfy_server.base_dir / "input")
        for image in images:
            data = idle_comfy.view(image)
            assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{image} is not a PNG"
            picture = idle_comfy.view_image(image)
            assert picture.size == expected, f"{image}: {picture.size} != {expected}"
