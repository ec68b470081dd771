"""The region editor (web/js/region_editor.js) on Diffusers Region Canvas, in the real editor.

A user picks a region, drags a rectangle on the node's canvas with the
mouse, and queues: the masks the backend makes (MaskToImage -> Preview Image,
read back through /view) must be the drawn rectangles. The rectangles are
kept in the node's `regions` widget, so they are saved with the workflow and
come back, drawn, when it is loaded again. Each region shows the first words
of the prompt its mask feeds.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

SIZE = 64
# (x0, y0, x1, y1) in fractions of the canvas, dragged with the mouse.
DRAWN = [(0.10, 0.15, 0.50, 0.60), (0.55, 0.30, 0.95, 0.90)]
TOLERANCE = 0.02  # a fraction of the canvas: a couple of screen pixels
EMPTY_WORKFLOW = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [],
                  "config": {}, "extra": {}, "version": 0.4}

# Region Canvas -> MaskToImage -> Preview Image for regions 1 and 2, plus a
# Regional Prompt fed by a text encoder on region 1 (for the label check).
_BUILD_JS = """
(size) => {
  const add = (type, pos) => {
    const node = LiteGraph.createNode(type);
    node.pos = pos;
    app.graph.add(node);
    return node;
  };
  const canvasNode = add("DSRegionCanvas", [260, 120]);
  canvasNode.setSize([380, 440]);
  for (const widget of canvasNode.widgets) {
    if (widget.name === "width" || widget.name === "height") widget.value = size;
  }
  const previews = [];
  for (const slot of [0, 1]) {
    const toImage = add("MaskToImage", [700, 120 + slot * 300]);
    const preview = add("PreviewImage", [920, 120 + slot * 300]);
    canvasNode.connect(slot, toImage, 0);
    toImage.connect(0, preview, 0);
    previews.push(preview.id);
  }
  const regional = add("DSRegionalPrompt", [700, 700]);
  const encoder = add("DSTextEncode", [260, 700]);
  encoder.widgets.find((widget) => widget.name === "text").value = "a red vintage car parked on the grass";
  canvasNode.connect(0, regional, regional.inputs.findIndex((input) => input.name === "mask"));
  encoder.connect(0, regional, regional.inputs.findIndex((input) => input.name === "region_conditioning"));
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset = [0, 0];
  app.graph.setDirtyCanvas(true, true);
  return { canvasNode: canvasNode.id, previews, extra: [regional.id, encoder.id] };
}
"""

_STATE_JS = """
(id) => {
  const node = app.graph.getNodeById(id);
  const editor = node.dsRegionEditor;
  const canvas = editor.canvas;
  const ctx = canvas.getContext("2d");
  const centres = editor.regions.map((r) => {
    if (!r) return null;
    const pixel = ctx.getImageData(Math.floor((r.x + r.w / 2) * canvas.width),
                                   Math.floor((r.y + r.h / 2) * canvas.height), 1, 1).data;
    return Array.from(pixel.slice(0, 3));
  });
  return {
    value: node.widgets.find((widget) => widget.name === "regions").value,
    regions: editor.regions,
    labels: editor.labels(),
    centres,
    buttons: Array.from(editor.root.querySelectorAll(".ds-region-button")).map((b) => b.textContent),
  };
}
"""


def _rectangle(width: int, height: int, x: float, y: float, w: float, h: float) -> np.ndarray:
    """The mask the backend makes (engine.regional.rectangle_mask, no feather), as 0/255."""
    def ramp(n: int, start: float, size: float) -> np.ndarray:
        centres = np.arange(n) + 0.5
        before = centres - start if start > 0 else np.full(n, np.inf)
        after = start + size - centres if start + size < n else np.full(n, np.inf)
        return (np.minimum(before, after) >= 0).astype(np.uint8)

    return ramp(height, y * height, h * height)[:, None] * ramp(width, x * width, w * width)[None, :] * 255


def _drag(editor, region: int, rect) -> None:
    editor.page.locator(f'.ds-region-button[data-region="{region}"]').click()
    box = editor.page.locator(".ds-region-canvas").bounding_box()
    assert box and box["width"] > 50 and box["height"] > 50, f"the region canvas is not on screen: {box}"
    x0, y0, x1, y1 = rect
    mouse = editor.page.mouse
    mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    mouse.down()
    mouse.move(box["x"] + x1 * box["width"], box["y"] + y1 * box["height"], steps=6)
    mouse.up()


def test_draw_two_regions_queue_and_reload(editor, idle_comfy, artifacts_dir):
    logged_before = len(editor.console)  # the page is the session's: only this test's messages count
    editor.load_workflow(EMPTY_WORKFLOW, "region_editor_test")
    ids = editor.page.evaluate(_BUILD_JS, SIZE)
    editor.page.wait_for_timeout(500)  # the editor's DOM widget follows the node on the next frames

    for region, rect in enumerate(DRAWN, start=1):
        _drag(editor, region, rect)
    editor.page.wait_for_timeout(200)
    state = editor.page.evaluate(_STATE_JS, ids["canvasNode"])
    editor.page.screenshot(path=str(artifacts_dir / "region_editor.png"))

    stored = json.loads(state["value"])["regions"]
    assert len(stored) == 2, state
    for region, (x0, y0, x1, y1) in zip(stored, DRAWN):
        drawn = {"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0}
        assert all(abs(region[key] - drawn[key]) <= TOLERANCE for key in drawn), (region, drawn)
    # Each region in its own colour, labelled with its prompt's first words.
    assert state["labels"][0] == "a red vintage car…", state["labels"]
    assert state["buttons"][0].startswith("1: a red vintage car"), state["buttons"]
    assert state["centres"][0] != state["centres"][1] and state["centres"][0] != [34, 34, 34], state["centres"]

    # The label helpers are not part of the run: the text encoder has no model.
    editor.page.evaluate("(ids) => ids.forEach((id) => app.graph.remove(app.graph.getNodeById(id)))", ids["extra"])
    run = editor.queue_and_wait(timeout=120, output_types=("PreviewImage",))
    assert not run.get("timed_out") and not run["nodeErrors"] and not run["executionError"], run
    shown = {entry["id"]: entry["images"] for entry in run["shown"]}
    for preview_id, region in zip(ids["previews"], stored):
        images = shown[preview_id]
        assert len(images) == 1, run
        body = editor.page.request.get(images[0]["src"]).body()
        mask = np.asarray(Image.open(io.BytesIO(body)).convert("L"))
        expected = _rectangle(SIZE, SIZE, region["x"], region["y"], region["w"], region["h"])
        assert mask.shape == (SIZE, SIZE)
        assert np.array_equal(mask, expected), f"mask of preview {preview_id} differs in {(mask != expected).sum()} px"
    # And against the drag itself: well inside is white, well outside is black.
    for preview_id, (x0, y0, x1, y1) in zip(ids["previews"], DRAWN):
        body = editor.page.request.get(shown[preview_id][0]["src"]).body()
        mask = np.asarray(Image.open(io.BytesIO(body)).convert("L"))
        inner = mask[int(y0 * SIZE) + 2: int(y1 * SIZE) - 2, int(x0 * SIZE) + 2: int(x1 * SIZE) - 2]
        assert inner.min() == 255
        assert mask[: int(y0 * SIZE) - 2].max() == 0 and mask[:, : int(x0 * SIZE) - 2].max() == 0

    # Saved in the workflow (the DOM widget itself is not a saved value), restored on load.
    # As the editor saves it: JSON text (no `undefined` left in it).
    saved = editor.page.evaluate("() => JSON.parse(JSON.stringify(app.graph.serialize()))")
    node = next(entry for entry in saved["nodes"] if entry["type"] == "DSRegionCanvas")
    assert node["widgets_values"] == [SIZE, SIZE, 0, state["value"]], node["widgets_values"]
    editor.load_workflow(EMPTY_WORKFLOW, "region_editor_empty")
    report = editor.load_workflow(saved, "region_editor_reloaded")
    assert not report["missing"] and not report["invalid"] and not report["dialogs"], report
    editor.page.wait_for_timeout(500)
    reloaded_id = editor.page.evaluate("() => app.graph.nodes.find((n) => n.type === 'DSRegionCanvas').id")
    reloaded = editor.page.evaluate(_STATE_JS, reloaded_id)
    assert reloaded["value"] == state["value"]
    assert reloaded["regions"][:2] == state["regions"][:2] and reloaded["regions"][2:] == [None, None]
    assert reloaded["centres"][:2] == state["centres"][:2], (reloaded["centres"], state["centres"])
    editor.page.screenshot(path=str(artifacts_dir / "region_editor-reloaded.png"))
    errors = [entry for entry in editor.pack_errors() if entry in editor.console[logged_before:]]
    assert not errors, "\n".join(map(str, errors))
