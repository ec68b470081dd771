"""The pack's ComfyUI nodes; `extension.py` lists them and registers routes."""
