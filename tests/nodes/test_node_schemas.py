"""Every DS node's schema: ids, categories, descriptions, tooltips on every socket."""
from __future__ import annotations

import pytest


def _all_nodes():
    from diffusers_studio.nodes.extension import NODES

    return NODES


def test_node_ids_are_the_fixed_ones(models_dir):
    ids = {node.define_schema().node_id for node in _all_nodes()}
    assert {"DSLoadModel", "DSTextEncode", "DSSampler", "DSVAEDecode", "DSVAEEncode"} <= ids


def test_every_input_and_output_has_a_tooltip(models_dir):
    for node in _all_nodes():
        schema = node.define_schema()
        assert schema.node_id.startswith("DS")
        assert schema.category.startswith("Diffusers Studio/")
        assert schema.description and schema.display_name
        for socket in list(schema.inputs) + list(schema.outputs):
            assert socket.tooltip, f"{schema.node_id}.{socket.id or socket.display_name} has no tooltip"


def test_display_names_fit_the_search_box(models_dir):
    """The editor's node search (Fuse.js) matches at most 32 characters of a query.

    A user typing a longer display name in full gets no result at all (seen
    with "Diffusers SDXL Refiner Aesthetic Score"), so every name stays within it.
    """
    too_long = [(n.define_schema().node_id, n.define_schema().display_name) for n in _all_nodes()
                if len(n.define_schema().display_name) > 32]
    assert not too_long, f"display names over 32 characters: {too_long}"


def test_model_list_holds_folders_and_single_files(models_dir):
    from diffusers_studio.nodes import comfy_bridge

    names = comfy_bridge.model_names()
    assert "tiny-sd15" in names and "tiny-sd15.safetensors" in names and "tiny-sdxl.safetensors" in names


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "missing.safetensors", "tiny-sd15/../../x"])
def test_unknown_or_escaping_model_names_are_refused(models_dir, name):
    from diffusers_studio.nodes.loaders import DSLoadModel

    message = DSLoadModel.validate_inputs(name, "auto")
    assert isinstance(message, str) and name in message
    with pytest.raises(ValueError, match="model_name"):
        DSLoadModel.execute(name, "auto")


def test_a_corrupt_checkpoint_is_a_clear_error(models_dir):
    from diffusers_studio.nodes.loaders import DSLoadModel

    with pytest.raises(ValueError, match="not-a-model.safetensors"):
        DSLoadModel.execute("not-a-model.safetensors", "float32")


def test_loading_twice_returns_the_same_objects(models_dir):
    from diffusers_studio.nodes.loaders import DSLoadModel

    first = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    second = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    assert all(a is b for a, b in zip(first, second))
