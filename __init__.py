"""Diffusers Studio: Hugging Face diffusers components as ComfyUI nodes.

ComfyUI imports this folder as a package and calls `comfy_entrypoint()`.
The import is kept light (nothing heavy at module level) so that the engine
under `nodes/engine/` can be imported and tested without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: returns the pack's extension object."""
    from .nodes.extension import DiffusersStudioExtension

    return DiffusersStudioExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
