"""The pack as the editor sees it: /object_info on a real server.

The editor builds its node menu, widgets and hover help from /object_info,
so these checks are what a user meets first: the five core nodes are there,
under "Diffusers Studio/", with a description, and every input and output
carries a tooltip (the pack's first documentation, see DESIGN.md).
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

CORE_NODES = ["DSLoadModel", "DSTextEncode", "DSSampler", "DSVAEDecode", "DSVAEEncode"]
PACK_MODULE = "custom_nodes.diffusers_studio"


def _pack_nodes(object_info: dict) -> dict:
    return {name: info for name, info in object_info.items() if info.get("python_module", "").startswith(PACK_MODULE)}


def test_core_nodes_are_listed(object_info):
    missing = [name for name in CORE_NODES if name not in object_info]
    assert not missing, f"/object_info lacks {missing}"
    for name in CORE_NODES:
        assert object_info[name]["python_module"].startswith(PACK_MODULE), name


def test_pack_node_ids_follow_the_convention(object_info):
    wrong = [name for name in _pack_nodes(object_info) if not name.startswith("DS")]
    assert not wrong, f"pack nodes whose id does not start with DS: {wrong}"


@pytest.mark.parametrize("node", CORE_NODES)
def test_node_has_description_category_and_display_name(object_info, node):
    info = object_info[node]
    assert info.get("description", "").strip(), f"{node} has no description"
    assert info.get("category", "").startswith("Diffusers Studio/"), f"{node} category is {info.get('category')!r}"
    assert info.get("display_name", "").strip() and info["display_name"] != node, f"{node} has no display name"


def test_every_pack_input_and_output_has_a_tooltip(object_info):
    missing = []
    for name, info in sorted(_pack_nodes(object_info).items()):
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip") or "").strip():
                    missing.append(f"{name}.{input_name}")
        for index, tooltip in enumerate(info.get("output_tooltips") or [None] * len(info["output"])):
            if not str(tooltip or "").strip():
                missing.append(f"{name} output {index} ({info['output_name'][index]})")
        if len(info.get("output_tooltips") or []) != len(info["output"]):
            missing.append(f"{name}: output_tooltips does not cover every output")
    assert not missing, "inputs/outputs without a tooltip: " + ", ".join(missing)


def test_model_list_offers_the_tiny_models(object_info):
    spec = object_info["DSLoadModel"]["input"]["required"]["model_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])
    for name in ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors", "tiny-sd15"):
        assert name in options, f"{name} not offered by DSLoadModel: {options}"


def test_sampler_seeds_get_a_control_widget(object_info):
    """The editor adds 'control after generate' only where the schema asks for it."""
    required = object_info["DSSampler"]["input"]["required"]
    assert required["seed"][1].get("control_after_generate") is True
    assert required["variation_seed"][1].get("control_after_generate") is True
