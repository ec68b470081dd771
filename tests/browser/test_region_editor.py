"""The region editor (web/js/region_editor.js) on Diffusers Region Canvas, in the real editor.

A user picks a region, drags a rectangle on the node's canvas with the
mouse, and queues: the masks the backend makes (MaskToImage -> Preview Image,
read back through /view) must be the drawn rectangles. The rectangles are
kept in the node's `regions` widget, so they are saved with the workflow and
come back, drawn, when it is loaded again. Each region shows the first words
of the prompt its mask feeds.

The same for free-hand painting: the brush paints a stroke with the mouse,
the eraser takes part of it away, and the mask the server makes is checked
twice: pixel for pixel against the stroke points the editor stored (the
backend's rule, worked out here by brute force), and against the mouse path
itself with a tolerance of 1.5 mask pixels at the stroke's edge (the editor
keeps one point per 0.5 % of the canvas and the mouse lands on whole screen
pixels, so the stored path is the drawn one up to about a pixel).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from region_reference import stroke_pixels as _stroke_pixels

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
  const centres = editor.regions.map((region) => {
    const r = region?.rect;
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


# The painting test: a 128x96 mask (brush sizes are fractions of the shorter side, 96).
PAINT_W, PAINT_H = 128, 96
BRUSH = ([(0.15, 0.30), (0.85, 0.30), (0.60, 0.80)], 12)  # mouse waypoints (canvas fractions), size in %
ERASER = ([(0.50, 0.05), (0.50, 0.55)], 8)
EDGE = 1.5  # tolerance at the stroke's edge against the mouse path, in mask pixels

_TOOL_JS = """
([id, tool, percent]) => {
  const editor = app.graph.getNodeById(id).dsRegionEditor;
  editor.root.querySelector(`.ds-region-tool[data-tool="${tool}"]`).click();
  const slider = editor.root.querySelector(".ds-region-size");
  slider.value = String(percent);
  slider.dispatchEvent(new Event("input", { bubbles: true }));
  return [editor.tool, editor.brush];
}
"""

_PIXELS_JS = """
([id, points]) => {
  const canvas = app.graph.getNodeById(id).dsRegionEditor.canvas;
  const ctx = canvas.getContext("2d");
  return points.map(([x, y]) => Array.from(ctx.getImageData(Math.floor(x * canvas.width),
                                                             Math.floor(y * canvas.height), 1, 1).data.slice(0, 3)));
}
"""


def _paint(editor, waypoints, steps: int = 60) -> int:
    """Press, move through the waypoints (straight lines, `steps` mouse events each), release."""
    box = editor.page.locator(".ds-region-canvas").bounding_box()
    assert box and box["width"] > 50 and box["height"] > 50, f"the region canvas is not on screen: {box}"
    mouse = editor.page.mouse
    at = lambda x, y: (box["x"] + x * box["width"], box["y"] + y * box["height"])  # noqa: E731
    mouse.move(*at(*waypoints[0]))
    mouse.down()
    for point in waypoints[1:]:
        mouse.move(*at(*point), steps=steps)
    mouse.up()
    return steps * (len(waypoints) - 1)


def test_paint_and_erase_a_region_queue_and_reload(editor, idle_comfy, artifacts_dir):
    logged_before = len(editor.console)
    editor.load_workflow(EMPTY_WORKFLOW, "region_paint_test")
    ids = editor.page.evaluate(_BUILD_JS, SIZE)
    editor.page.evaluate("(ids) => ids.forEach((id) => app.graph.remove(app.graph.getNodeById(id)))", ids["extra"])
    editor.page.evaluate(
        """([id, w, h]) => {
          for (const widget of app.graph.getNodeById(id).widgets) {
            if (widget.name === "width") widget.value = w;
            if (widget.name === "height") widget.value = h;
          }
          app.graph.setDirtyCanvas(true, true);
        }""",
        [ids["canvasNode"], PAINT_W, PAINT_H],
    )
    editor.page.wait_for_timeout(500)
    editor.page.locator('.ds-region-button[data-region="1"]').click()
    assert editor.page.evaluate(_TOOL_JS, [ids["canvasNode"], "brush", BRUSH[1]]) == ["brush", BRUSH[1]]
    moves = _paint(editor, BRUSH[0], steps=250)  # about 0.25 % of the canvas per mouse event
    assert editor.page.evaluate(_TOOL_JS, [ids["canvasNode"], "erase", ERASER[1]]) == ["erase", ERASER[1]]
    _paint(editor, ERASER[0])
    editor.page.wait_for_timeout(200)
    editor.page.screenshot(path=str(artifacts_dir / "region_editor-painted.png"))

    value = editor.page.evaluate(
        "(id) => app.graph.getNodeById(id).widgets.find((w) => w.name === 'regions').value", ids["canvasNode"])
    stored = json.loads(value)["regions"]
    assert len(stored) == 1 and "x" not in stored[0], stored
    brush, eraser = stored[0]["strokes"]
    assert brush["size"] == BRUSH[1] / 100 and not brush.get("erase"), brush
    assert eraser["size"] == ERASER[1] / 100 and eraser["erase"] is True, eraser
    # Simplified: one point per 0.5 % of the canvas at most, not one per mouse event.
    assert 10 < len(brush["points"]) < 0.6 * moves, (len(brush["points"]), moves)
    steps = np.hypot(*np.diff(np.asarray(brush["points"]), axis=0).T)
    assert steps[:-1].min() >= 0.005 - 1e-4, steps.min()  # (the last point is where the mouse was lifted)
    for stroke, (waypoints, _) in ((brush, BRUSH), (eraser, ERASER)):
        for point, drawn in ((stroke["points"][0], waypoints[0]), (stroke["points"][-1], waypoints[-1])):
            assert abs(point[0] - drawn[0]) < 0.01 and abs(point[1] - drawn[1]) < 0.01, (point, drawn)

    run = editor.queue_and_wait(timeout=120, output_types=("PreviewImage",))
    assert not run.get("timed_out") and not run["nodeErrors"] and not run["executionError"], run
    shown = {entry["id"]: entry["images"] for entry in run["shown"]}
    masks = []
    for preview_id in ids["previews"]:
        body = editor.page.request.get(shown[preview_id][0]["src"]).body()
        masks.append(np.asarray(Image.open(io.BytesIO(body)).convert("L")))
    mask, empty = masks
    assert mask.shape == (PAINT_H, PAINT_W) and empty.max() == 0
    assert set(np.unique(mask)) <= {0, 255}
    painted = mask == 255

    # 1. Exactly the stored strokes, by the backend's rule.
    expected = (_stroke_pixels(PAINT_W, PAINT_H, brush["points"], brush["size"])
                & ~_stroke_pixels(PAINT_W, PAINT_H, eraser["points"], eraser["size"]))
    assert np.array_equal(painted, expected), f"{(painted != expected).sum()} px differ from the stored strokes"
    # 2. The mouse path, up to EDGE px at the edges: sure inside is painted, sure outside is not.
    def band(stroke, grow):
        return _stroke_pixels(PAINT_W, PAINT_H, stroke[0], stroke[1] / 100, grow)

    inside = band(BRUSH, -EDGE) & ~band(ERASER, EDGE)
    outside = ~band(BRUSH, EDGE) | band(ERASER, -EDGE)
    assert inside.sum() > 300 and painted[inside].all(), f"{(~painted & inside).sum()} px of the stroke missing"
    assert not painted[outside].any(), f"{(painted & outside).sum()} px painted outside the stroke"
    cut = (int(0.30 * PAINT_H), int(0.50 * PAINT_W))  # where the eraser crossed the brush
    assert not painted[cut] and painted[int(0.30 * PAINT_H), int(0.25 * PAINT_W)]

    # Saved with the workflow and back, painted, after a reload.
    on_canvas = [(0.25, 0.30), (0.50, 0.30), (0.05, 0.90)]  # painted, erased, never painted
    before = editor.page.evaluate(_PIXELS_JS, [ids["canvasNode"], on_canvas])
    assert before[0] != [34, 34, 34] and before[1] == [34, 34, 34] == before[2], before
    saved = editor.page.evaluate("() => JSON.parse(JSON.stringify(app.graph.serialize()))")
    node = next(entry for entry in saved["nodes"] if entry["type"] == "DSRegionCanvas")
    assert node["widgets_values"] == [PAINT_W, PAINT_H, 0, value], node["widgets_values"]
    editor.load_workflow(EMPTY_WORKFLOW, "region_paint_empty")
    report = editor.load_workflow(saved, "region_paint_reloaded")
    assert not report["missing"] and not report["invalid"] and not report["dialogs"], report
    editor.page.wait_for_timeout(500)
    reloaded_id = editor.page.evaluate("() => app.graph.nodes.find((n) => n.type === 'DSRegionCanvas').id")
    reloaded = editor.page.evaluate(_STATE_JS, reloaded_id)
    assert reloaded["value"] == value
    assert reloaded["regions"][0]["strokes"] == [
        {"points": stroke["points"], "size": stroke["size"], "erase": bool(stroke.get("erase"))}
        for stroke in (brush, eraser)
    ]
    assert editor.page.evaluate(_PIXELS_JS, [reloaded_id, on_canvas]) == before
    editor.page.screenshot(path=str(artifacts_dir / "region_editor-painted-reloaded.png"))
    errors = [entry for entry in editor.pack_errors() if entry in editor.console[logged_before:]]
    assert not errors, "\n".join(map(str, errors))


# A pen as the browser reports it: pointer events with pointerType "pen"; its
# eraser end presses button 5 and erases whatever tool is selected.
_PEN_JS = """
([id, strokes]) => {
  const editor = app.graph.getNodeById(id).dsRegionEditor;
  const canvas = editor.canvas;
  const box = canvas.getBoundingClientRect();
  const send = (type, [x, y], button) => canvas.dispatchEvent(new PointerEvent(type, {
    pointerId: 7, pointerType: "pen", isPrimary: true, bubbles: true, cancelable: true, button,
    buttons: type === "pointerup" ? 0 : (button === 5 ? 32 : 1), pressure: 0.5,
    clientX: box.left + x * box.width, clientY: box.top + y * box.height,
  }));
  for (const [points, button] of strokes) {
    send("pointerdown", points[0], button);
    for (const point of points.slice(1)) send("pointermove", point, -1);
    send("pointerup", points[points.length - 1], button);
  }
  return app.graph.getNodeById(id).widgets.find((w) => w.name === "regions").value;
}
"""


def test_a_pen_paints_its_eraser_end_erases_and_clear_empties_the_region(editor, idle_comfy):
    logged_before = len(editor.console)
    editor.load_workflow(EMPTY_WORKFLOW, "region_pen_test")
    ids = editor.page.evaluate(_BUILD_JS, SIZE)
    editor.page.wait_for_timeout(500)
    editor.page.locator('.ds-region-button[data-region="2"]').click()
    assert editor.page.evaluate(_TOOL_JS, [ids["canvasNode"], "brush", 10]) == ["brush", 10]
    line = [[0.1 + 0.02 * i, 0.5] for i in range(41)]  # 2 % apart: every point is kept
    value = editor.page.evaluate(_PEN_JS, [ids["canvasNode"], [[line, 0], [[[0.5, 0.3], [0.5, 0.7]], 5]]])
    regions = json.loads(value)["regions"]
    assert regions[0] is None and len(regions) == 2, regions
    brush, eraser = regions[1]["strokes"]
    assert len(brush["points"]) == 41 and brush["size"] == 0.1 and not brush.get("erase")
    assert all(abs(a - b) < 0.01 for p, q in zip(brush["points"], line) for a, b in zip(p, q)), brush["points"]
    assert eraser["erase"] is True and eraser["size"] == 0.1
    editor.page.locator(".ds-region-clear").click()
    value = editor.page.evaluate(
        "(id) => app.graph.getNodeById(id).widgets.find((w) => w.name === 'regions').value", ids["canvasNode"])
    assert json.loads(value) == {"version": 1, "regions": []}, value
    errors = [entry for entry in editor.pack_errors() if entry in editor.console[logged_before:]]
    assert not errors, "\n".join(map(str, errors))


# Undo and redo: every finished edit is one step, Ctrl+Z / Ctrl+Shift+Z / Ctrl+Y
# while the pointer is over the editor (or it was clicked), buttons in the toolbar.
_HISTORY_JS = """
([id, points]) => {
  const editor = app.graph.getNodeById(id).dsRegionEditor;
  const canvas = editor.canvas;
  const ctx = canvas.getContext("2d");
  const undo = editor.root.querySelector(".ds-region-undo");
  const redo = editor.root.querySelector(".ds-region-redo");
  return {
    value: app.graph.getNodeById(id).widgets.find((w) => w.name === "regions").value,
    pixels: points.map(([x, y]) => Array.from(ctx.getImageData(Math.floor(x * canvas.width),
                                                                Math.floor(y * canvas.height), 1, 1).data.slice(0, 3))),
    undo: !undo.disabled,
    redo: !redo.disabled,
    focused: document.activeElement === editor.keys,
  };
}
"""
# Where a graph click lands on nothing: left of the Region Canvas node (graph position, scale 1).
_EMPTY_SPOT_JS = """
() => {
  const box = app.canvas.canvas.getBoundingClientRect();
  for (const [gx, gy] of [[120, 300], [160, 420], [80, 200], [600, 60]]) {
    const x = box.left + gx, y = box.top + gy;
    if (document.elementFromPoint(x, y) === app.canvas.canvas && !app.graph.getNodeOnPos(gx, gy)) return [x, y];
  }
  return null;
}
"""
STROKE_2 = [(0.60, 0.80), (0.90, 0.80)]  # region 2's stroke, clear of region 1's rectangle
ON_CANVAS = [(0.30, 0.40), (0.75, 0.80), (0.05, 0.95)]  # in the rectangle, on the stroke, nothing


def _history(editor, node_id: int) -> dict:
    return editor.page.evaluate(_HISTORY_JS, [node_id, ON_CANVAS])


def test_undo_and_redo_by_keyboard_and_buttons_then_queue(editor, idle_comfy):
    logged_before = len(editor.console)
    editor.load_workflow(EMPTY_WORKFLOW, "region_history_test")
    ids = editor.page.evaluate(_BUILD_JS, SIZE)
    editor.page.evaluate("(ids) => ids.forEach((id) => app.graph.remove(app.graph.getNodeById(id)))", ids["extra"])
    editor.page.wait_for_timeout(500)
    node_id = ids["canvasNode"]
    background = [34, 34, 34]
    start = _history(editor, node_id)
    assert not start["undo"] and not start["redo"], start

    _drag(editor, 1, DRAWN[0])
    with_rect = _history(editor, node_id)
    editor.page.locator('.ds-region-button[data-region="2"]').click()
    assert editor.page.evaluate(_TOOL_JS, [node_id, "brush", 10]) == ["brush", 10]
    _paint(editor, STROKE_2, steps=30)
    editor.page.wait_for_timeout(100)
    done = _history(editor, node_id)
    regions = json.loads(done["value"])["regions"]
    assert len(regions) == 2 and "x" in regions[0] and len(regions[1]["strokes"]) == 1, regions
    assert done["undo"] and not done["redo"] and done["focused"], done
    assert done["pixels"][0] != background and done["pixels"][1] != background, done
    assert done["pixels"][2] == background

    # The pointer is over the editor (it just painted there): the keys are the editor's.
    keyboard = editor.page.keyboard
    keyboard.press("Control+z")
    editor.page.wait_for_timeout(100)
    once = _history(editor, node_id)
    assert once["value"] == with_rect["value"] and len(json.loads(once["value"])["regions"]) == 1, once
    assert once["pixels"][1] == background and once["pixels"][0] != background, once  # the stroke is gone
    assert once["undo"] and once["redo"], once
    keyboard.press("Control+z")
    editor.page.wait_for_timeout(100)
    twice = _history(editor, node_id)
    assert json.loads(twice["value"]) == {"version": 1, "regions": []}, twice
    assert twice["pixels"] == [background] * 3, twice  # the rectangle is gone too
    assert not twice["undo"] and twice["redo"], twice
    keyboard.press("Control+Shift+z")
    keyboard.press("Control+y")
    editor.page.wait_for_timeout(100)
    redone = _history(editor, node_id)
    assert redone["value"] == done["value"] and redone["pixels"] == done["pixels"], (redone, done)
    assert redone["undo"] and not redone["redo"], redone
    # The toolbar's buttons do the same.
    editor.page.locator(".ds-region-undo").click()
    assert _history(editor, node_id)["value"] == with_rect["value"]
    editor.page.locator(".ds-region-redo").click()
    by_buttons = _history(editor, node_id)
    assert by_buttons["value"] == done["value"] and by_buttons["undo"] and not by_buttons["redo"], by_buttons

    # Away from the editor Ctrl+Z is ComfyUI's own (its workflow undo), not the editor's: with
    # another change (feather) as the workflow's last, ComfyUI undoes that and the regions stay.
    spot = editor.page.evaluate(_EMPTY_SPOT_JS)
    assert spot, "no empty spot on the graph to click"
    editor.page.evaluate(
        "(id) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'feather').value = 3; }", node_id)
    editor.page.mouse.click(*spot)  # the click's mouseup lets ComfyUI record the change
    editor.page.wait_for_timeout(200)
    assert not _history(editor, node_id)["focused"]
    keyboard.press("Control+z")
    editor.page.wait_for_function(
        "(id) => app.graph.getNodeById(id)?.widgets.find((w) => w.name === 'feather').value === 0", arg=node_id,
        timeout=5000)
    editor.page.wait_for_timeout(300)
    outside = _history(editor, node_id)
    assert outside["value"] == done["value"], outside
    assert outside["pixels"] == done["pixels"], (outside, done)
    # The pointer over the editor (no click) gives it the keys; leaving gives them back.
    box = editor.page.locator(".ds-region-canvas").bounding_box()
    editor.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    assert _history(editor, node_id)["focused"]
    editor.page.mouse.move(*spot, steps=5)
    assert not _history(editor, node_id)["focused"]

    # The server's mask is the redone drawing.
    run = editor.queue_and_wait(timeout=120, output_types=("PreviewImage",))
    assert not run.get("timed_out") and not run["nodeErrors"] and not run["executionError"], run
    shown = {entry["id"]: entry["images"] for entry in run["shown"]}
    rect, painted = json.loads(done["value"])["regions"]
    stroke = painted["strokes"][0]
    expected = [_rectangle(SIZE, SIZE, rect["x"], rect["y"], rect["w"], rect["h"]),
                _stroke_pixels(SIZE, SIZE, stroke["points"], stroke["size"]).astype(np.uint8) * 255]
    for preview_id, want in zip(ids["previews"], expected):
        body = editor.page.request.get(shown[preview_id][0]["src"]).body()
        mask = np.asarray(Image.open(io.BytesIO(body)).convert("L"))
        assert np.array_equal(mask, want), f"mask of preview {preview_id} differs in {(mask != want).sum()} px"

    # A new edit after an undo drops what was undone. (ComfyUI's undo above loaded the workflow
    # again: a new editor, on region 1 with the rectangle tool.)
    editor.page.locator('.ds-region-button[data-region="2"]').click()
    assert editor.page.evaluate(_TOOL_JS, [node_id, "brush", 10]) == ["brush", 10]
    _paint(editor, [(0.60, 0.10), (0.90, 0.10)], steps=20)
    editor.page.wait_for_timeout(100)
    keyboard.press("Control+z")
    editor.page.wait_for_timeout(100)
    assert _history(editor, node_id)["redo"]
    _paint(editor, [(0.60, 0.30), (0.90, 0.30)], steps=20)
    editor.page.wait_for_timeout(100)
    branched = _history(editor, node_id)
    assert branched["undo"] and not branched["redo"], branched
    strokes = json.loads(branched["value"])["regions"][1]["strokes"]
    assert len(strokes) == 2 and abs(strokes[1]["points"][0][1] - 0.30) < 0.01, strokes
    errors = [entry for entry in editor.pack_errors() if entry in editor.console[logged_before:]]
    assert not errors, "\n".join(map(str, errors))
