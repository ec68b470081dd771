"""The extension object ComfyUI loads: the list of every node of the pack."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .encode import DSTextEncode
from .loaders import DSLoadModel
from .sample import DSSampler
from .vae import DSVAEDecode, DSVAEEncode

NODES: list[type[io.ComfyNode]] = [DSLoadModel, DSTextEncode, DSSampler, DSVAEEncode, DSVAEDecode]


class DiffusersStudioExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
