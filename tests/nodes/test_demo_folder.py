"""The pack's demo folder (models/diffusers_studio_demo/<kind>/): listed by the pack's loaders only.

`make run` and the tests write the tiny random-weight models there, under the
real file names the shipped workflows use. The pack lists them after
ComfyUI's own folders, a real file of the same name wins, and ComfyUI's own
listing (what native loaders offer) never shows them.
"""
from __future__ import annotations

import pytest


@pytest.fixture
def demo_models(tmp_path, monkeypatch):
    import folder_paths

    from diffusers_studio.nodes import comfy_bridge

    models = tmp_path / "models"
    real = models / "checkpoints"
    demo = models / comfy_bridge.DEMO_FOLDER / "checkpoints"
    for folder in (real, demo / "sub"):
        folder.mkdir(parents=True)
    (real / "both.safetensors").write_bytes(b"real")
    (demo / "both.safetensors").write_bytes(b"demo")
    (demo / "sub" / "only-demo.safetensors").write_bytes(b"demo")
    (demo / "notes.txt").write_text("not a model")
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints", ([str(real)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    yield comfy_bridge.CHECKPOINTS, real, demo
    folder_paths.filename_list_cache.clear()


def test_demo_files_are_listed_after_real_ones_and_a_real_file_wins(demo_models):
    checkpoints, real, demo = demo_models
    assert checkpoints.names() == ["both.safetensors", "sub/only-demo.safetensors"]
    assert checkpoints.path("both.safetensors") == str(real / "both.safetensors")
    assert checkpoints.path("sub/only-demo.safetensors") == str(demo / "sub" / "only-demo.safetensors")


def test_comfyuis_own_listing_never_shows_demo_files(demo_models):
    import folder_paths

    assert folder_paths.get_filename_list("checkpoints") == ["both.safetensors"]


@pytest.mark.parametrize("name", ["notes.txt", "../checkpoints/both.safetensors", "sub/../both.safetensors"])
def test_only_listed_demo_names_resolve(demo_models, name):
    checkpoints, _, _ = demo_models
    assert checkpoints.resolve(name) is None
    with pytest.raises(ValueError, match="model_name"):
        checkpoints.path(name)
