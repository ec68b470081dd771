"""Every DS node has a help page the editor's node library shows.

ComfyUI's frontend (1.32) fetches a custom node's help from the pack's web
folder: `/extensions/<pack>/docs/<NodeId>/<locale>.md`, then
`/extensions/<pack>/docs/<NodeId>.md`. The pack ships one English page per
node as `web/docs/<NodeId>.md`, which every locale falls back to. The page
has no title (the panel shows the display name above it), documents every
input and output, and has an example.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.server import PACK_NAME

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parent.parent.parent / "web" / "docs"


def _ds_nodes(object_info: dict) -> dict[str, dict]:
    return {
        name: info
        for name, info in object_info.items()
        if info.get("python_module") == f"custom_nodes.{PACK_NAME}" and name.startswith("DS")
    }


def test_every_pack_node_has_a_help_page_covering_its_inputs(comfy, object_info):
    problems = []
    nodes = _ds_nodes(object_info)
    assert nodes
    for name, info in sorted(nodes.items()):
        response = comfy.get(f"/extensions/{PACK_NAME}/docs/{name}.md")
        if response.status_code != 200:
            problems.append(f"{name}: GET /extensions/{PACK_NAME}/docs/{name}.md -> {response.status_code}")
            continue
        text = response.text
        if text.lstrip().startswith("# "):
            problems.append(f"{name}: the page starts with a title; the help panel shows the display name already")
        inputs = [key for section in ("required", "optional") for key in info["input"].get(section, {})]
        undocumented = [key for key in inputs if f"`{key}`" not in text]
        if undocumented:
            problems.append(f"{name}: inputs not documented: {undocumented}")
        outputs = [output for output in info.get("output_name", []) if f"`{output}`" not in text]
        if outputs:
            problems.append(f"{name}: outputs not documented: {outputs}")
        if "## Example" not in text:
            problems.append(f"{name}: no '## Example' section")
    assert not problems, "\n".join(problems)


def test_no_help_page_for_a_node_that_does_not_exist(object_info):
    """A page left behind after a node was renamed or removed would never be shown."""
    names = set(_ds_nodes(object_info))
    pages = {path.stem for path in DOCS.glob("*.md")} | {path.name for path in DOCS.iterdir() if path.is_dir()}
    assert not (pages - names), f"help pages for unknown nodes: {sorted(pages - names)}"


def test_the_editor_shows_a_pack_node_help_page(editor, object_info, artifacts_dir):
    """The node library's help button shows the pack's page for a DS node."""
    page = editor.page
    display = _ds_nodes(object_info)["DSSampler"]["display_name"]
    first_words = (DOCS / "DSSampler.md").read_text(encoding="utf-8").split(".")[0]
    editor.command("Workspace.ToggleSidebarTab.node-library")
    try:
        search = page.get_by_placeholder("Search Nodes...").first
        search.wait_for(state="visible", timeout=10_000)
        search.fill(display)
        entry = page.locator(".node-lib-node-container").filter(has=page.get_by_text(display, exact=True)).first
        entry.wait_for(state="visible", timeout=10_000)
        entry.hover()
        entry.locator("button.help-button").click()
        page.get_by_text(first_words, exact=False).first.wait_for(state="visible", timeout=10_000)
        page.screenshot(path=str(artifacts_dir / "node-help-DSSampler.png"))
    finally:
        editor.command("Workspace.ToggleSidebarTab.node-library")
