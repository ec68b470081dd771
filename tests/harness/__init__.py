"""Test harness for a real ComfyUI server with the pack installed.

`server` starts and stops ComfyUI in a private base directory, `models` writes
the tiny random-weight models under the real file names, `client` talks HTTP
and websocket to the server, and `workflow_api` turns the UI-format workflows
we ship into the API-format prompts that `/prompt` accepts. The integration
tests and `scripts/make_demo_models.py` share it, so the demo models a user
sees are the ones the tests ran.
"""
