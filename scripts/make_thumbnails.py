"""Take each shipped workflow's thumbnail, and the README's screenshot, in the real editor.

For every `example_workflows/<name>.json` this starts the test harness's
ComfyUI server (the pack installed, the tiny demo models under the real file
names, in a temporary folder), opens the workflow in ComfyUI's editor in
headless Chromium as the Templates menu does, fits the graph to the window
and saves a picture of it as `example_workflows/<name>.jpg` (JPEG, 640 px
wide), the thumbnail the Templates menu shows next to the workflow. With
`--screenshot`, one workflow is also saved as `docs/screenshot.png`, the
editor as a user sees it, for the README.

Needs Debian's Chromium (`scripts/ensure_chromium.sh`), Python playwright and
COMFYUI_PATH (the Makefile sets it):

    python scripts/make_thumbnails.py                      # every workflow
    python scripts/make_thumbnails.py txt2img_sd15 img2img # some of them
    python scripts/make_thumbnails.py --screenshot txt2img_sd15
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
WORKFLOWS_DIR = REPO_ROOT / "example_workflows"
SCREENSHOT = REPO_ROOT / "docs" / "screenshot.png"
THUMBNAIL_WIDTH = 640
THUMBNAIL_ASPECT = 4 / 3  # width / height; the graph is centred, the rest is canvas
PADDING = 24  # CSS pixels around the graph

log = logging.getLogger("make_thumbnails")

# The graph's extent on the screen (CSS pixels): every node with its title,
# every group. Read from the canvas' own transform, so it matches the picture.
_GRAPH_BOUNDS_JS = """
() => {
  const canvas = app.canvas;
  const box = canvas.canvas.getBoundingClientRect();
  let left = Infinity, top = Infinity, right = -Infinity, bottom = -Infinity;
  const rects = [
    ...app.graph.nodes.map((node) => node.boundingRect),
    ...(app.graph.groups ?? []).map((group) => group.boundingRect ?? group._bounding),
  ];
  for (const rect of rects) {
    if (!rect) continue;
    const [x0, y0] = canvas.ds.convertOffsetToCanvas([rect[0], rect[1]]);
    const [x1, y1] = canvas.ds.convertOffsetToCanvas([rect[0] + rect[2], rect[1] + rect[3]]);
    left = Math.min(left, x0); top = Math.min(top, y0);
    right = Math.max(right, x1); bottom = Math.max(bottom, y1);
  }
  return { left: box.left + left, top: box.top + top, right: box.left + right, bottom: box.top + bottom,
           width: box.width, height: box.height };
}
"""


def _tests_path() -> None:
    # The harness (server, tiny models) and the editor driver live with the tests.
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))


def graph_clip(bounds: dict, viewport: dict) -> dict:
    """The part of the screen to keep: the graph plus padding, widened to the
    thumbnail's aspect, centred on the graph and kept inside the window."""
    width = bounds["right"] - bounds["left"] + 2 * PADDING
    height = bounds["bottom"] - bounds["top"] + 2 * PADDING
    if width / height < THUMBNAIL_ASPECT:
        width = height * THUMBNAIL_ASPECT
    else:
        height = width / THUMBNAIL_ASPECT
    width, height = min(width, viewport["width"]), min(height, viewport["height"])
    centre_x = (bounds["left"] + bounds["right"]) / 2
    centre_y = (bounds["top"] + bounds["bottom"]) / 2
    left = min(max(0.0, centre_x - width / 2), viewport["width"] - width)
    top = min(max(0.0, centre_y - height / 2), viewport["height"] - height)
    return {"x": left, "y": top, "width": width, "height": height}


def save_jpeg(png: bytes, path: Path, width: int = THUMBNAIL_WIDTH) -> Path:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as picture:
        picture = picture.convert("RGB")
        height = max(1, round(picture.height * width / picture.width))
        picture = picture.resize((width, height), Image.LANCZOS)
        picture.save(path, "JPEG", quality=88, optimize=True, progressive=True)
    return path


def take_thumbnail(editor, workflow_path: Path) -> Path:
    from browser.editor import PICTURE_VIEWPORT

    workflow = json.loads(workflow_path.read_text(encoding="utf-8"))
    report = editor.load_workflow(workflow, workflow_path.stem)
    if report["missing"] or report["dialogs"]:
        log.warning("%s: %s %s", workflow_path.name, report["missing"], report["dialogs"])
    page = editor.page
    focus = not page.evaluate("() => app.extensionManager.focusMode")
    if focus:
        editor.command("Workspace.ToggleFocusMode")
    try:
        page.wait_for_timeout(300)
        editor.command("Comfy.Canvas.FitView")
        page.evaluate("() => app.graph.setDirtyCanvas(true, true)")
        page.wait_for_timeout(400)
        clip = graph_clip(page.evaluate(_GRAPH_BOUNDS_JS), PICTURE_VIEWPORT)
        png = page.screenshot(clip=clip)
    finally:
        if focus:
            editor.command("Workspace.ToggleFocusMode")
    target = save_jpeg(png, workflow_path.with_suffix(".jpg"))
    log.info("wrote %s", target.relative_to(REPO_ROOT))
    return target


def take_screenshot(browser, url: str, workflow_path: Path, target: Path = SCREENSHOT) -> Path:
    """The editor as a user sees it with one shipped workflow open (README)."""
    from browser.editor import PICTURE_SETTINGS, Editor

    editor = Editor.open(browser, url)
    try:
        editor.apply_settings({key: value for key, value in PICTURE_SETTINGS.items() if "Badge" in key})
        editor.load_workflow(json.loads(workflow_path.read_text(encoding="utf-8")), workflow_path.stem)
        editor.screenshot_graph(target, clean=False)
    finally:
        editor.close()
    log.info("wrote %s", target.relative_to(REPO_ROOT))
    return target


def select_workflows(names: list[str]) -> list[Path]:
    every = sorted(WORKFLOWS_DIR.glob("*.json"))
    if not names:
        return every
    chosen = [path for path in every if path.stem in names or path.name in names]
    unknown = set(names) - {path.stem for path in chosen} - {path.name for path in chosen}
    if unknown:
        raise SystemExit(f"no such workflow in example_workflows/: {sorted(unknown)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="*", help="workflow names (default: every example_workflows/*.json)")
    parser.add_argument(
        "--screenshot",
        metavar="WORKFLOW",
        help="also save docs/screenshot.png of this workflow in the editor (default: none)",
    )
    parser.add_argument("--no-thumbnails", action="store_true", help="only the screenshot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    _tests_path()
    from browser.editor import PICTURE_SETTINGS, PICTURE_VIEWPORT, Editor, chromium_path, launch_browser
    from harness import models, server

    executable = chromium_path()
    if executable is None:
        raise SystemExit("Chromium is not installed: run `bash scripts/ensure_chromium.sh` first")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("Python playwright is not installed: pip install playwright (requirements-dev.txt)")
    workflows = [] if args.no_thumbnails else select_workflows(args.workflows)
    screenshot_of = select_workflows([args.screenshot])[0] if args.screenshot else None

    with tempfile.TemporaryDirectory(prefix="ds-thumbnails-") as tmp:
        base_dir = server.prepare_base_dir(Path(tmp) / "base")
        models.write_tiny_models(base_dir / "models")
        running = server.start_server(base_dir, Path(tmp) / "server.log")
        try:
            problems = server.pack_import_problems(running.log_text())
            if problems:
                raise SystemExit("Diffusers Studio did not import into ComfyUI:\n" + "\n".join(problems))
            with sync_playwright() as playwright:
                browser = launch_browser(playwright, executable)
                try:
                    if workflows:
                        editor = Editor.open(browser, running.url, viewport=PICTURE_VIEWPORT)
                        editor.apply_settings(PICTURE_SETTINGS)
                        try:
                            for path in workflows:
                                take_thumbnail(editor, path)
                        finally:
                            editor.close()
                    if screenshot_of is not None:
                        take_screenshot(browser, running.url, screenshot_of)
                finally:
                    browser.close()
        finally:
            running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
