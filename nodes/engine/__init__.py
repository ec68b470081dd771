"""The diffusion engine: torch, diffusers and transformers only.

Nothing under this package imports ComfyUI (comfy, folder_paths, server,
nodes, ...). The node layer passes in paths, callbacks and devices; a unit test
walks these modules' imports to keep it that way.
"""
