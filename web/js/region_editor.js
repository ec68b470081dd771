// Region editor for Diffusers Region Canvas (DSRegionCanvas): a canvas on the
// node where the user draws, moves and resizes one rectangle per region and
// paints or erases free-hand strokes (InvokeAI's regional guidance paints its
// regions). Each region has its own colour and shows the first words of the
// prompt its mask feeds (through Diffusers Regional Prompt). The drawing lives
// in the node's `regions` STRING widget as JSON (fractions of the picture), so
// it is saved in the workflow, restored on load and sent to the backend, which
// turns it into MASKs (nodes/region_masks.py). The data format and the drawing
// of a region are in region_geometry.js.
//
// Undo and redo: every finished edit (a rectangle drawn, moved or resized, a
// stroke, a Clear) is one step of a bounded history kept in memory per node
// (not in the workflow). Ctrl+Z / Cmd+Z undo, Ctrl+Shift+Z / Ctrl+Y redo while
// the editor is the keyboard's target: ComfyUI's own Ctrl+Z (its ChangeTracker)
// listens on the window in the capture phase, ahead of any DOM widget, and
// leaves the keys alone only while an <input> has focus, as a text widget's
// does. So the editor takes focus into a small (invisible, read-only) input of
// its own when the pointer comes over it or it is clicked, handles only the
// undo/redo keys there, and gives the focus back when the pointer leaves (or a
// click lands elsewhere): everywhere else Ctrl+Z stays ComfyUI's.
//
// Public frontend API only: app.registerExtension, beforeRegisterNodeDef,
// node.addDOMWidget, the graph's nodes and links, app.canvas.emitBeforeChange /
// emitAfterChange (so that ComfyUI records an undo or redo as a change of the
// workflow). Only DSRegionCanvas is touched.
import { app } from "../../../scripts/app.js";
import {
  MAX_CHARS, MAX_POINTS, MAX_STROKES, addPoint, anchorOf, paintRegion, parseRegions, serialiseRegions,
} from "./region_geometry.js";

export { parseRegions, serialiseRegions };

const NODE_TYPE = "DSRegionCanvas";
export const REGION_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231"];
const HANDLE_PX = 10; // corner handle, in screen pixels
const MIN_FRACTION = 0.01;
const EDITOR_HEIGHT = 264;
const TOOLS = [
  ["rect", "Rectangle", "Drag a rectangle; drag inside it to move it, by its corner to resize it"],
  ["brush", "Brush", "Paint the selected region free-hand (mouse or pen)"],
  ["erase", "Eraser", "Take painted parts (and parts of the rectangle) away from the selected region"],
];
const DEFAULT_BRUSH = 5; // percent of the picture's shorter side
const MAX_HISTORY = 100; // undo steps kept per node

function linkOf(graph, id) {
  if (id == null || !graph?.links) return null;
  return typeof graph.links.get === "function" ? graph.links.get(id) : graph.links[id];
}

// The first words of the prompt a mask output feeds: output -> Regional Prompt
// -> its region_conditioning -> the text encoder's `text` widget.
function promptWords(node, slot) {
  const graph = node.graph;
  for (const id of node.outputs?.[slot]?.links ?? []) {
    const link = linkOf(graph, id);
    const target = link && graph.getNodeById(link.target_id);
    if (!target) continue;
    const input = target.inputs?.find((entry) => entry.name === "region_conditioning");
    const source = input && linkOf(graph, input.link);
    const encoder = source && graph.getNodeById(source.origin_id);
    const text = encoder?.widgets?.find((widget) => widget.name === "text")?.value;
    if (typeof text === "string" && text.trim()) {
      const words = text.trim().split(/\s+/);
      return words.slice(0, 4).join(" ") + (words.length > 4 ? "…" : "");
    }
  }
  return "";
}

const buttonStyle = (border) => ({ border, borderRadius: "4px", padding: "1px 6px", background: "transparent",
  color: "inherit", cursor: "pointer", fontSize: "11px" });

function button(className, text, title, border, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = text;
  element.title = title;
  Object.assign(element.style, buttonStyle(border));
  element.addEventListener("click", onClick);
  return element;
}

// Where typing goes to text (ComfyUI's text widgets, dialogs): the editor does not take the focus from it.
function isTextEntry(element) {
  if (!element || element === document.body) return false;
  if (element.isContentEditable || element.tagName === "TEXTAREA" || element.tagName === "SELECT") return true;
  return element.tagName === "INPUT" && !["range", "button", "checkbox", "radio"].includes(element.type);
}

class RegionEditor {
  constructor(node) {
    this.node = node;
    this.active = 0;
    this.tool = "rect";
    this.brush = DEFAULT_BRUSH;
    this.drag = null;
    this.hover = null;
    this.signature = "";
    this.store = node.widgets?.find((widget) => widget.name === "regions");
    if (this.store) {
      // The JSON is the editor's: hidden, but still saved and sent to the backend.
      this.store.hidden = true;
      this.store.computeSize = () => [0, -4];
    }
    this.regions = parseRegions(this.store?.value);
    this.current = serialiseRegions(this.regions); // the value the history's steps lead from
    this.undoStack = [];
    this.redoStack = [];
    this.buildDom();
    const widget = node.addDOMWidget("region_canvas", "ds_region_canvas", this.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => EDITOR_HEIGHT,
      getValue: () => undefined,
      setValue: () => {},
    });
    widget.serialize = false;
    this.widget = widget;
  }

  buildDom() {
    const root = document.createElement("div");
    root.className = "ds-region-editor";
    Object.assign(root.style, { display: "flex", flexDirection: "column", width: "100%", height: "100%", gap: "4px" });
    const bar = document.createElement("div");
    Object.assign(bar.style, { display: "flex", gap: "4px", flexWrap: "wrap" });
    this.buttons = REGION_COLOURS.map((colour, index) => {
      const element = button("ds-region-button", `Region ${index + 1}`,
        `Draw region ${index + 1} (output region_${index + 1})`, `2px solid ${colour}`,
        () => { this.active = index; this.render(true); });
      element.dataset.region = String(index + 1);
      return element;
    });
    const clear = button("ds-region-clear", "Clear", "Remove the selected region's rectangle and painting",
      "1px solid #888", () => { this.regions[this.active] = null; this.say(""); this.commit(); });
    this.undoButton = button("ds-region-undo", "Undo", "Undo the last edit (Ctrl+Z)", "1px solid #888",
      () => this.undo());
    this.redoButton = button("ds-region-redo", "Redo", "Redo the edit undone (Ctrl+Shift+Z or Ctrl+Y)",
      "1px solid #888", () => this.redo());
    bar.append(...this.buttons, clear, this.undoButton, this.redoButton);
    const tools = document.createElement("div");
    Object.assign(tools.style, { display: "flex", gap: "4px", flexWrap: "wrap", alignItems: "center",
      fontSize: "11px" });
    this.toolButtons = TOOLS.map(([tool, text, title]) => {
      const element = button("ds-region-tool", text, title, "1px solid #888", () => {
        this.tool = tool;
        this.render(true);
      });
      element.dataset.tool = tool;
      return element;
    });
    const size = document.createElement("input");
    Object.assign(size, { type: "range", min: "0.5", max: "50", step: "0.5", value: String(this.brush),
      className: "ds-region-size", title: "Brush and eraser size: diameter in % of the picture's shorter side" });
    Object.assign(size.style, { width: "70px" });
    const sizeLabel = document.createElement("span");
    size.addEventListener("input", () => { this.brush = Number(size.value); this.render(true); });
    // The graph must not take the slider's drag for a node drag.
    size.addEventListener("pointerdown", (event) => event.stopPropagation());
    this.status = document.createElement("span");
    this.status.className = "ds-region-status";
    Object.assign(this.status.style, { color: "#f88" });
    tools.append(...this.toolButtons, size, sizeLabel, this.status);
    this.sizeInput = size;
    this.sizeLabel = sizeLabel;
    const stage = document.createElement("div");
    Object.assign(stage.style, { flex: "1", minHeight: "0", display: "flex", alignItems: "center",
      justifyContent: "center", overflow: "hidden" });
    const canvas = document.createElement("canvas");
    canvas.className = "ds-region-canvas";
    Object.assign(canvas.style, { touchAction: "none", cursor: "crosshair", background: "#222" });
    stage.appendChild(canvas);
    // The keyboard's target while the pointer is over the editor or after a click in it (see the top).
    const keys = document.createElement("input");
    Object.assign(keys, { type: "text", readOnly: true, tabIndex: -1, className: "ds-region-keys" });
    keys.setAttribute("aria-label", "Region editor: Ctrl+Z undo, Ctrl+Shift+Z or Ctrl+Y redo");
    Object.assign(keys.style, { position: "absolute", left: "0", top: "0", width: "1px", height: "1px",
      opacity: "0", pointerEvents: "none", border: "0", padding: "0" });
    root.style.position = "relative";
    root.append(bar, tools, stage, keys);
    this.keys = keys;
    root.addEventListener("keydown", (event) => this.onKey(event));
    root.addEventListener("pointerenter", () => {
      if (!isTextEntry(document.activeElement)) this.focusKeys(false);
    });
    root.addEventListener("pointerleave", () => {
      if (this.focusByHover && document.activeElement === keys && !this.drag) keys.blur();
    });
    // A click in the editor keeps its keys until a click elsewhere; a button clicked hands the keys back.
    root.addEventListener("pointerdown", (event) => {
      if (!isTextEntry(event.target)) this.focusKeys(true);
    }, true);
    root.addEventListener("click", (event) => {
      if (event.target.closest?.("button")) this.focusKeys(true);
    });
    this.outside = (event) => {
      if (!root.contains(event.target) && document.activeElement === keys) keys.blur();
    };
    keys.addEventListener("focus", () => document.addEventListener("pointerdown", this.outside, true));
    keys.addEventListener("blur", () => document.removeEventListener("pointerdown", this.outside, true));
    canvas.addEventListener("pointerdown", (event) => this.onDown(event));
    canvas.addEventListener("pointermove", (event) => this.onMove(event));
    canvas.addEventListener("pointerup", (event) => this.onUp(event));
    canvas.addEventListener("pointercancel", (event) => this.onUp(event));
    canvas.addEventListener("pointerleave", () => { this.hover = null; this.render(); });
    this.root = root;
    this.stage = stage;
    this.canvas = canvas;
    this.layer = document.createElement("canvas"); // one region at a time, laid over half transparent
  }

  focusKeys(byClick) {
    this.focusByHover = !byClick && (document.activeElement !== this.keys || this.focusByHover);
    if (document.activeElement !== this.keys) this.keys.focus({ preventScroll: true });
  }

  // Ctrl+Z / Cmd+Z, Ctrl+Shift+Z, Ctrl+Y: handled (and kept from ComfyUI) only here; other keys go on.
  onKey(event) {
    if (!(event.ctrlKey || event.metaKey) || event.altKey) return;
    const key = event.key.toLowerCase();
    const action = key === "z" ? (event.shiftKey ? "redo" : "undo") : key === "y" && !event.shiftKey ? "redo" : null;
    if (!action) return;
    event.preventDefault();
    event.stopPropagation();
    this[action]();
  }

  canUndo() {
    return this.undoStack.length > 0 && !this.drag;
  }

  canRedo() {
    return this.redoStack.length > 0 && !this.drag;
  }

  undo() {
    if (!this.canUndo()) return;
    this.redoStack.push(this.current);
    this.restore(this.undoStack.pop());
  }

  redo() {
    if (!this.canRedo()) return;
    this.undoStack.push(this.current);
    this.restore(this.redoStack.pop());
  }

  // A value from the history into the widget (marking the graph changed for ComfyUI) and on screen.
  restore(value) {
    const canvas = app.canvas;
    canvas?.emitBeforeChange?.();
    try {
      this.current = value;
      if (this.store) {
        this.store.value = value;
        this.store.callback?.(value);
      }
      this.regions = parseRegions(value);
      this.say("");
      this.node.setDirtyCanvas?.(true, true);
      this.node.graph?.change?.();
    } finally {
      canvas?.emitAfterChange?.();
    }
    this.render(true);
  }

  updateHistoryButtons() {
    for (const [element, enabled] of [[this.undoButton, this.canUndo()], [this.redoButton, this.canRedo()]]) {
      element.disabled = !enabled;
      element.style.opacity = enabled ? "1" : "0.4";
      element.style.cursor = enabled ? "pointer" : "default";
    }
  }

  size() {
    const value = (name, fallback) => {
      const widgetValue = this.node.widgets?.find((widget) => widget.name === name)?.value;
      return Number.isFinite(widgetValue) && widgetValue > 0 ? widgetValue : fallback;
    };
    return { width: value("width", 512), height: value("height", 512) };
  }

  labels() {
    return this.regions.map((_, index) => promptWords(this.node, index));
  }

  say(message) {
    this.status.textContent = message;
  }

  // The widget's value changed (workflow loaded, user typed): take it.
  load() {
    this.regions = parseRegions(this.store?.value);
    this.current = serialiseRegions(this.regions);
    this.undoStack = [];
    this.redoStack = [];
    this.render(true);
  }

  commit() {
    if (this.store) {
      let value = serialiseRegions(this.regions);
      if (value.length > MAX_CHARS) {
        // Too much painting for one workflow: the last stroke is not kept.
        this.regions[this.active]?.strokes.pop();
        value = serialiseRegions(this.regions);
        this.say("Too much painting: clear a region and paint it with fewer strokes.");
      }
      this.store.value = value;
      this.store.callback?.(this.store.value);
      this.regions = parseRegions(this.store.value); // what is shown is exactly what is sent
      if (value !== this.current) { // one finished edit: one step; a new edit drops what was undone
        this.undoStack.push(this.current);
        if (this.undoStack.length > MAX_HISTORY) this.undoStack.shift();
        this.redoStack = [];
        this.current = value;
      }
    }
    this.node.setDirtyCanvas?.(true, true);
    this.render(true);
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: Math.min(Math.max((event.clientX - box.left) / box.width, 0), 1),
      y: Math.min(Math.max((event.clientY - box.top) / box.height, 0), 1),
      handle: HANDLE_PX / Math.max(box.width, 1),
      handleY: HANDLE_PX / Math.max(box.height, 1),
    };
  }

  onDown(event) {
    // Left button, pen tip, or a pen's eraser end (button 5), which erases whatever the tool.
    const penEraser = event.pointerType === "pen" && event.button === 5;
    if (event.button !== 0 && !penEraser) return;
    event.preventDefault();
    event.stopPropagation();
    const p = this.point(event);
    if (this.tool === "rect" && !penEraser) this.startRect(p);
    else if (!this.startStroke(p, penEraser || this.tool === "erase")) return;
    try {
      this.canvas.setPointerCapture(event.pointerId); // keep the drag when the pointer leaves the canvas
    } catch {
      // A pointer the browser no longer tracks: the drag still works while it stays on the canvas.
    }
    this.render(true);
  }

  startRect(p) {
    const rectOf = (i) => this.regions[i]?.rect;
    const inside = (r) => r && p.x >= r.x && p.x <= r.x + r.w && p.y >= r.y && p.y <= r.y + r.h;
    const nearCorner = (r) => r && Math.abs(p.x - (r.x + r.w)) <= p.handle && Math.abs(p.y - (r.y + r.h)) <= p.handleY;
    const order = [this.active, ...this.regions.keys()].filter((i, n, all) => all.indexOf(i) === n);
    const hit = order.find((i) => nearCorner(rectOf(i))) ?? order.find((i) => inside(rectOf(i)));
    if (hit !== undefined) {
      this.active = hit;
      const r = rectOf(hit);
      this.drag = nearCorner(r) ? { mode: "resize", x0: r.x, y0: r.y } : { mode: "move", dx: p.x - r.x, dy: p.y - r.y };
    } else {
      this.drag = { mode: "draw", x0: p.x, y0: p.y };
      this.regionOf(this.active).rect = { x: p.x, y: p.y, w: 0, h: 0 };
    }
  }

  regionOf(index) {
    this.regions[index] ??= { rect: null, strokes: [] };
    return this.regions[index];
  }

  // A new brush or eraser stroke on the selected region; false at the cap.
  startStroke(p, erase) {
    if (erase && !this.regions[this.active]) return false; // nothing to erase
    const region = this.regionOf(this.active);
    if (region.strokes.length >= MAX_STROKES) {
      this.say(`Region ${this.active + 1} has ${MAX_STROKES} strokes, the most it can hold: clear it to paint again.`);
      return false;
    }
    this.stroke = { points: [[p.x, p.y]], size: this.brush / 100, erase };
    region.strokes.push(this.stroke);
    this.drag = { mode: "paint" };
    return true;
  }

  // Points while painting: one per MIN_STEP of travel; a long stroke goes on as a new one.
  extendStroke(p, last = false) {
    if (!addPoint(this.stroke, p.x, p.y, last) || this.stroke.points.length < MAX_POINTS) return;
    const region = this.regions[this.active];
    if (region.strokes.length >= MAX_STROKES) {
      this.say(`Region ${this.active + 1} is full (${MAX_STROKES} strokes): clear it to paint more.`);
      this.drag = { mode: "done" };
      return;
    }
    this.stroke = { points: [[p.x, p.y]], size: this.stroke.size, erase: this.stroke.erase };
    region.strokes.push(this.stroke);
  }

  onMove(event) {
    const p = this.point(event);
    if (!this.drag) {
      this.hover = this.tool === "rect" ? null : p;
      if (this.hover) this.render();
      return;
    }
    event.preventDefault();
    event.stopPropagation();
    if (this.drag.mode === "paint") {
      // Pens and fast mice report several positions per event (none for a synthetic event).
      const samples = event.getCoalescedEvents?.() ?? [];
      for (const sample of samples.length ? samples : [event]) this.extendStroke(this.point(sample));
      this.hover = p;
      this.render(true);
      return;
    }
    const r = this.regions[this.active]?.rect;
    if (!r || this.drag.mode === "done") return;
    if (this.drag.mode === "move") {
      r.x = Math.min(Math.max(p.x - this.drag.dx, 0), 1 - r.w);
      r.y = Math.min(Math.max(p.y - this.drag.dy, 0), 1 - r.h);
    } else {
      const { x0, y0 } = this.drag;
      r.x = Math.min(x0, p.x);
      r.y = Math.min(y0, p.y);
      r.w = Math.abs(p.x - x0);
      r.h = Math.abs(p.y - y0);
    }
    this.render(true);
  }

  onUp(event) {
    if (!this.drag) return;
    event.stopPropagation();
    if (this.canvas.hasPointerCapture?.(event.pointerId)) this.canvas.releasePointerCapture(event.pointerId);
    const region = this.regions[this.active];
    if (this.drag.mode === "paint") this.extendStroke(this.point(event), true); // ends where the pointer lifts
    else if (region?.rect && (region.rect.w < MIN_FRACTION || region.rect.h < MIN_FRACTION)) {
      region.rect = null; // a click, not a drag
    }
    if (region && !region.rect && !region.strokes.length) this.regions[this.active] = null;
    this.drag = null;
    this.stroke = null;
    this.commit();
  }

  // Called on every frame the node is drawn; repaints only when something changed.
  render(force = false) {
    const { width, height } = this.size();
    const labels = this.labels();
    const availW = this.stage.clientWidth;
    const availH = this.stage.clientHeight;
    const signature = JSON.stringify([this.regions, this.active, this.tool, this.brush, this.hover, width, height,
      labels, availW, availH]);
    if (!force && signature === this.signature) return;
    this.signature = signature;
    this.buttons.forEach((element, index) => {
      element.style.background = index === this.active ? REGION_COLOURS[index] : "transparent";
      element.style.color = index === this.active ? "#fff" : "inherit";
      element.textContent = labels[index] ? `${index + 1}: ${labels[index]}` : `Region ${index + 1}`;
    });
    this.toolButtons.forEach((element) => {
      const on = element.dataset.tool === this.tool;
      element.style.background = on ? "#666" : "transparent";
      element.style.color = on ? "#fff" : "inherit";
    });
    this.sizeLabel.textContent = `${this.brush}%`;
    this.updateHistoryButtons();
    if (availW < 2 || availH < 2) return;
    const scale = Math.min(availW / width, availH / height);
    const cssW = Math.max(1, Math.floor(width * scale));
    const cssH = Math.max(1, Math.floor(height * scale));
    this.canvas.style.width = `${cssW}px`;
    this.canvas.style.height = `${cssH}px`;
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = this.layer.width = Math.round(cssW * dpr);
    this.canvas.height = this.layer.height = Math.round(cssH * dpr);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    ctx.fillStyle = "#222";
    ctx.fillRect(0, 0, cssW, cssH);
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "top";
    const order = [...this.regions.keys()].filter((i) => i !== this.active).concat(this.active);
    for (const index of order) {
      const region = this.regions[index];
      if (!region) continue;
      const colour = REGION_COLOURS[index];
      paintRegion(this.layer, region, cssW, cssH, dpr, colour);
      ctx.save();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.globalAlpha = 0.45;
      ctx.drawImage(this.layer, 0, 0);
      ctx.restore();
      ctx.fillStyle = ctx.strokeStyle = colour;
      const r = region.rect;
      if (r) {
        const [x, y, w, h] = [r.x * cssW, r.y * cssH, r.w * cssW, r.h * cssH];
        ctx.lineWidth = index === this.active ? 2 : 1;
        ctx.strokeRect(x, y, w, h);
        if (index === this.active && this.tool === "rect") {
          ctx.fillRect(x + w - HANDLE_PX / 2, y + h - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX);
        }
      }
      const anchor = anchorOf(region);
      if (anchor) {
        ctx.fillStyle = "#fff";
        ctx.fillText(labels[index] || `Region ${index + 1}`, anchor[0] * cssW + 3, anchor[1] * cssH + 3,
          Math.max(r ? r.w * cssW - 6 : cssW / 3, 10));
      }
    }
    if (this.hover && this.tool !== "rect") { // the brush's outline under the pointer
      ctx.beginPath();
      ctx.arc(this.hover.x * cssW, this.hover.y * cssH, (this.brush / 100) * Math.min(cssW, cssH) / 2, 0, 2 * Math.PI);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }
}

app.registerExtension({
  name: "DiffusersStudio.RegionEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.dsRegionEditor = new RegionEditor(this);
      const [w, h] = this.size ?? [0, 0];
      this.setSize?.([Math.max(w, 340), Math.max(h, EDITOR_HEIGHT + 140)]);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.dsRegionEditor?.load();
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      const keys = this.dsRegionEditor?.keys;
      if (keys && document.activeElement === keys) keys.blur(); // the keys go back to ComfyUI
      return onRemoved?.apply(this, arguments);
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      const result = onDrawForeground?.apply(this, arguments);
      this.dsRegionEditor?.render();
      return result;
    };
  },
});
