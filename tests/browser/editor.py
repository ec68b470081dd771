"""Drive ComfyUI's real graph editor in headless Chromium (Python Playwright).

The browser tests and `scripts/make_thumbnails.py` share this module: open
the editor of a running server, load a UI-format workflow the way the
Templates menu does (`app.loadGraphData`), look for what a user would see
go wrong (the missing-nodes dialog, widget values the node does not offer),
queue it with the Run button and wait for the picture in the Save Image node,
and take pictures of the graph.

Only the frontend's public surface is used: `window.app` (graph, canvas,
`loadGraphData`, `nodeOutputs`, `lastNodeErrors`, `lastExecutionError`),
`app.extensionManager.command.execute(<command id>)` and
`app.extensionManager.setting.set(...)`, and what is on the screen.

Chromium is Debian's package (`/usr/bin/chromium`, or CHROMIUM_PATH):
Playwright's own browser download does not work on these machines.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
)
VIEWPORT = {"width": 1280, "height": 800}
PACK_URL_PREFIX = "/extensions/diffusers_studio/"

# Settings that make the editor quiet and its pictures clean: no first-run
# banners or tours, no minimap over the graph. Set once per page.
EDITOR_SETTINGS = {
    "Comfy.Minimap.Visible": False,
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Graph.CanvasInfo": False,
    # Nodes drawn in full (titles, widget text) even when a whole graph is
    # fitted into the window, so the pictures can be read.
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
}
# For the pictures that ship (thumbnails, the README's screenshot): no zoom
# buttons over the graph, no source badges on the nodes.
PICTURE_SETTINGS = {
    "Comfy.Graph.CanvasMenu": False,
    "Comfy.NodeBadge.NodeSourceBadgeMode": "None",
}
PICTURE_VIEWPORT = {"width": 1600, "height": 1000}

# Runs in the page before the editor's code: the one-off "Nodes 2.0" banner
# keeps its dismissal in localStorage, not in the settings.
_QUIET_START_JS = "window.localStorage.setItem('vueNodesBannerDismissed', 'true');"

# A JS function (not code built from strings) returning everything a test
# needs to know about the loaded graph: node types the frontend lacks, widget
# values outside what the widget offers, and the open dialogs' text.
_GRAPH_REPORT_JS = """
() => {
  const report = { missing: [], invalid: [], dialogs: [], nodes: [] };
  for (const node of app.graph.nodes) {
    report.nodes.push({ id: node.id, type: node.type });
    if (!LiteGraph.registered_node_types[node.type] || node.has_errors) {
      report.missing.push(`${node.id} ${node.type}`);
    }
    for (const widget of node.widgets ?? []) {
      const where = `node ${node.id} (${node.type}) widget ${widget.name}`;
      const options = widget.options ?? {};
      const value = widget.value;
      if (widget.type === "combo") {
        let values = options.values;
        if (typeof values === "function") values = values(widget, node);
        if (Array.isArray(values) && !values.includes(value)) {
          report.invalid.push(`${where}: ${JSON.stringify(value)} is not one of ${JSON.stringify(values.slice(0, 20))}`);
        }
      } else if (widget.type === "number") {
        if (typeof value !== "number" || Number.isNaN(value)) {
          report.invalid.push(`${where}: ${JSON.stringify(value)} is not a number`);
        } else if ((options.min != null && value < options.min) || (options.max != null && value > options.max)) {
          report.invalid.push(`${where}: ${value} is outside [${options.min}, ${options.max}]`);
        }
      }
    }
  }
  for (const dialog of document.querySelectorAll(".p-dialog")) {
    if (dialog.offsetParent !== null || dialog.getClientRects().length) {
      report.dialogs.push(dialog.innerText.slice(0, 500));
    }
  }
  return report;
}
"""

# Make a loaded workflow cheap for a CPU, as harness.prompts.shrink does for
# the API format: every EmptyLatentImage at size x size with batch 1, every
# DSSampler at most max_steps steps (a start/end step inside the schedule
# scaled with it). Nothing else changes.
_SHRINK_JS = """
([size, maxSteps]) => {
  const changed = [];
  for (const node of app.graph.nodes) {
    const total = node.widgets?.find((w) => w.name === "steps")?.value;  // before it shrinks
    for (const widget of node.widgets ?? []) {
      let value = widget.value;
      if ((node.type === "EmptyLatentImage" || node.type === "EmptySD3LatentImage") && (widget.name === "width" || widget.name === "height")) value = size;
      if ((node.type === "EmptyLatentImage" || node.type === "EmptySD3LatentImage") && widget.name === "batch_size") value = 1;
      if (node.type === "DSSampler" && widget.name === "steps") value = Math.min(widget.value, maxSteps);
      if (node.type === "DSSampler" && (widget.name === "start_step" || widget.name === "end_step")) {
        // A split schedule (base + refiner hand-off) keeps its proportions.
        const shrunk = Math.min(total, maxSteps);
        if (total && widget.value > 0 && widget.value < total) {
          const scaled = Math.round((widget.value * shrunk) / total);
          value = widget.name === "end_step" ? Math.max(1, scaled) : Math.min(scaled, shrunk - 1);
        }
      }
      if (value !== widget.value) {
        widget.value = value;
        changed.push(`${node.id} ${node.type}.${widget.name}=${value}`);
      }
    }
  }
  app.graph.setDirtyCanvas(true, true);
  return changed;
}
"""

# Where a queued run stands: the images each output node shows, and any error
# the editor got (a 400 with node_errors, or an execution error).
_RUN_STATE_JS = """
(outputTypes) => {
  const outputs = app.graph.nodes.filter((node) => outputTypes.includes(node.type));
  const shown = outputs.map((node) => ({
    id: node.id,
    type: node.type,
    images: (node.imgs ?? []).filter((img) => img.complete && img.naturalWidth > 0)
      .map((img) => ({ src: img.src, width: img.naturalWidth, height: img.naturalHeight })),
  }));
  const nodeErrors = app.lastNodeErrors && Object.keys(app.lastNodeErrors).length ? app.lastNodeErrors : null;
  return {
    shown,
    done: outputs.length > 0 && shown.every((entry) => entry.images.length > 0),
    nodeErrors,
    executionError: app.lastExecutionError ?? null,
    dialogs: [...document.querySelectorAll(".p-dialog")].map((d) => d.innerText.slice(0, 500)),
  };
}
"""


def chromium_path() -> Optional[str]:
    """Debian's Chromium (or CHROMIUM_PATH), or None when there is none."""
    candidates = [os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch_browser(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=True)


@dataclass
class ConsoleEntry:
    kind: str
    text: str
    url: str = ""

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        return f"[{self.kind}] {self.text}{where}"


@dataclass
class Editor:
    """One browser page with ComfyUI's editor open, and what it logged."""

    page: object
    base_url: str
    console: list[ConsoleEntry] = field(default_factory=list)
    responses: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def open(
        cls, browser, base_url: str, viewport: Optional[dict] = None, timeout: float = 90.0, fresh_user: bool = False
    ) -> "Editor":
        """The editor in a new page (its own browser context: empty storage).

        `fresh_user` opens it as a person's first visit: none of the quiet
        settings or banner dismissals below, so the editor starts as it does
        for a newcomer (what the server holds for its user stays as it is).
        """
        page = browser.new_page(viewport=viewport or VIEWPORT)
        editor = cls(page, base_url.rstrip("/"))
        page.on("console", editor._on_console)
        page.on("pageerror", lambda error: editor.console.append(ConsoleEntry("pageerror", str(error))))
        page.on("response", lambda response: editor.responses.append((response.status, response.url)))
        # Nothing outside the test server: the editor's calls to api.comfy.org
        # and the like fail fast instead of waiting for a network there is not.
        local = re.escape(editor.base_url)
        page.route(re.compile(rf"^(?!{local}/|data:|blob:)"), lambda route: route.abort())
        # Settings the editor reads at start-up (a first-run user otherwise
        # gets the template browser and banners over the graph): the server
        # stores them per user, POST /settings sets several at once.
        if not fresh_user:
            response = page.request.post(editor.base_url + "/api/settings", data=EDITOR_SETTINGS)
            if not response.ok:
                raise RuntimeError(f"POST /api/settings answered {response.status}: {response.text()}")
            page.add_init_script(_QUIET_START_JS)
        page.goto(editor.base_url + "/", wait_until="domcontentloaded", timeout=timeout * 1000)
        page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.app.extensionManager?.setting",
            timeout=timeout * 1000,
        )
        page.wait_for_timeout(300)
        if not fresh_user:
            editor.close_dialogs()
        return editor

    def _on_console(self, message) -> None:
        location = message.location or {}
        self.console.append(ConsoleEntry(message.type, message.text, location.get("url", "")))

    # ------------------------------------------------------------ the editor
    def apply_settings(self, settings: dict) -> None:
        for key, value in settings.items():
            self.page.evaluate(
                "([key, value]) => app.extensionManager.setting.set(key, value)", [key, value]
            )

    def command(self, command_id: str) -> None:
        """Run one of the editor's commands (what a menu entry or a shortcut does)."""
        self.page.evaluate("(id) => app.extensionManager.command.execute(id)", command_id)

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.page.locator(".p-dialog").count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(150)

    def errors(self) -> list[ConsoleEntry]:
        return [entry for entry in self.console if entry.kind in ("error", "pageerror")]

    def pack_errors(self) -> list[ConsoleEntry]:
        """Console errors that concern the pack's frontend code or its nodes."""
        markers = (PACK_URL_PREFIX, "DiffusersStudio", "diffusers_studio", "Error loading extension")
        return [entry for entry in self.errors() if any(marker in f"{entry.text} {entry.url}" for marker in markers)]

    def pack_responses(self) -> list[tuple[int, str]]:
        return [(status, url) for status, url in self.responses if PACK_URL_PREFIX in url]

    # ------------------------------------------------------------- workflows
    def load_workflow(self, workflow: dict, name: str) -> dict:
        """Open a UI-format workflow as the Templates menu does; returns the graph report."""
        self.close_dialogs()
        self.page.evaluate(
            "([workflow, name]) => app.loadGraphData(workflow, true, true, name)", [workflow, name]
        )
        self.page.wait_for_timeout(300)  # let the dialogs the load opens render
        return self.graph_report()

    def graph_report(self) -> dict:
        return self.page.evaluate(_GRAPH_REPORT_JS)

    def shrink(self, size: int = 64, max_steps: int = 3) -> list[str]:
        return self.page.evaluate(_SHRINK_JS, [size, max_steps])

    def run_button(self):
        return self.page.get_by_role("button", name="Run", exact=True)

    def queue_and_wait(self, timeout: float = 180.0, output_types=("SaveImage", "PreviewImage")) -> dict:
        """Press Run; wait until every output node shows its picture, or an error."""
        self.page.evaluate("() => { app.lastNodeErrors = null; app.lastExecutionError = null; }")
        self.run_button().click()
        deadline = time.monotonic() + timeout
        state = {}
        while time.monotonic() < deadline:
            state = self.page.evaluate(_RUN_STATE_JS, list(output_types))
            if state["done"] or state["nodeErrors"] or state["executionError"]:
                return state
            self.page.wait_for_timeout(250)
        state["timed_out"] = True
        return state

    # -------------------------------------------------------------- pictures
    def screenshot_graph(self, path: Path, clean: bool = True) -> Path:
        """A picture of the whole graph: fit to the window, the editor's chrome hidden."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.close_dialogs()
        focus = clean and not self.page.evaluate("() => app.extensionManager.focusMode")
        if focus:
            self.command("Workspace.ToggleFocusMode")
        self.page.wait_for_timeout(200)  # the canvas resizes to the freed space
        self.command("Comfy.Canvas.FitView")
        self.page.evaluate("() => app.graph.setDirtyCanvas(true, true)")
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=str(path))
        if focus:
            self.command("Workspace.ToggleFocusMode")
        return path

    def close(self) -> None:
        self.page.close()
