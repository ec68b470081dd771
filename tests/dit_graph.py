"""The node calls the DiT graph tests share: tiny diffusers folders in models/diffusers, loaded and
encoded as ComfyUI runs the nodes (DSLoadModel, DSTextEncode)."""
from __future__ import annotations

from typing import Callable

import ldm_export


def save_folders(models_dir, makers: dict[str, Callable]):
    """Writes each tiny pipeline `makers[name]()` to models/diffusers/<name> once; returns that folder."""
    import folder_paths

    folder = models_dir / "diffusers"
    for name, make in makers.items():
        if not (folder / name).exists():
            ldm_export.save_diffusers_folder(make(), folder / name)
    folder_paths.filename_list_cache.clear()
    return folder


def load(name: str):
    """(DS_MODEL, DS_TEXT_ENCODER, DS_VAE) of a models/diffusers folder, float32."""
    from diffusers_studio.nodes.loaders import DSLoadModel

    return DSLoadModel.execute(name, "float32").args


def encode(text_encoder, text: str):
    """A prompt through Diffusers Text Encode with its defaults."""
    from diffusers_studio.nodes.encode import DSTextEncode

    return DSTextEncode.execute(text_encoder, text, 1, 0, False, 0).args[0]
