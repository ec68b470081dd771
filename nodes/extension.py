"""The extension object ComfyUI loads: every node of the pack, its routes.

Each concept module exports `NODES`, the node classes it defines; this file
only gathers them, so a new concept is one import line here.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import (
    controlnet,
    encode,
    face_restore,
    flux_control,
    flux_guidance,
    inpaint,
    ip_adapter,
    loaders,
    lora,
    model_options,
    region_masks,
    regional,
    routes,
    sample,
    sdxl_conditioning,
    sd_upscale,
    seamless,
    split_loader,
    vae,
)

CONCEPT_MODULES = [
    loaders, split_loader, encode, sdxl_conditioning, flux_guidance, sample, vae, ip_adapter, controlnet, inpaint,
    regional, region_masks, lora, model_options, seamless, sd_upscale, face_restore, flux_control,
]

NODES: list[type[io.ComfyNode]] = [node for module in CONCEPT_MODULES for node in module.NODES]


class DiffusersStudioExtension(ComfyExtension):
    async def on_load(self) -> None:
        routes.register()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 never calls on_load; this runs before the server adds
        # its routes, so registering here works on old and new versions alike.
        routes.register()
        return list(NODES)
