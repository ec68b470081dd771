// Region editor for Diffusers Region Canvas (DSRegionCanvas): a canvas on the
// node where the user draws, moves and resizes one rectangle per region. Each
// region has its own colour and shows the first words of the prompt its mask
// feeds (through Diffusers Regional Prompt). The rectangles live in the node's
// `regions` STRING widget as JSON (fractions of the picture), so they are
// saved in the workflow, restored on load and sent to the backend, which turns
// them into MASKs (nodes/region_masks.py).
//
// Public frontend API only: app.registerExtension, beforeRegisterNodeDef,
// node.addDOMWidget, the graph's nodes and links. Only DSRegionCanvas is touched.
import { app } from "../../../scripts/app.js";

const NODE_TYPE = "DSRegionCanvas";
const MAX_REGIONS = 4;
export const REGION_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231"];
const HANDLE_PX = 10; // corner handle, in screen pixels
const MIN_FRACTION = 0.01;
const EDITOR_HEIGHT = 240;

export function parseRegions(text) {
  const regions = new Array(MAX_REGIONS).fill(null);
  let data;
  try {
    data = JSON.parse(text || "{}");
  } catch {
    return regions;
  }
  const list = Array.isArray(data?.regions) ? data.regions : [];
  list.slice(0, MAX_REGIONS).forEach((region, index) => {
    if (region && ["x", "y", "w", "h"].every((key) => Number.isFinite(region[key]))) {
      regions[index] = { x: region.x, y: region.y, w: region.w, h: region.h };
    }
  });
  return regions;
}

const round = (value) => Math.round(Math.min(Math.max(value, 0), 1) * 10000) / 10000;

export function serialiseRegions(regions) {
  const list = regions.map((r) => (r ? { x: round(r.x), y: round(r.y), w: round(r.w), h: round(r.h) } : null));
  while (list.length && list[list.length - 1] === null) list.pop();
  return JSON.stringify({ version: 1, regions: list });
}

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

class RegionEditor {
  constructor(node) {
    this.node = node;
    this.active = 0;
    this.drag = null;
    this.signature = "";
    this.store = node.widgets?.find((widget) => widget.name === "regions");
    if (this.store) {
      // The JSON is the editor's: hidden, but still saved and sent to the backend.
      this.store.hidden = true;
      this.store.computeSize = () => [0, -4];
    }
    this.regions = parseRegions(this.store?.value);
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
      const button = document.createElement("button");
      button.type = "button";
      button.className = "ds-region-button";
      button.dataset.region = String(index + 1);
      button.textContent = `Region ${index + 1}`;
      button.title = `Draw region ${index + 1} (output region_${index + 1})`;
      Object.assign(button.style, { border: `2px solid ${colour}`, borderRadius: "4px", padding: "1px 6px",
        background: "transparent", color: "inherit", cursor: "pointer", fontSize: "11px" });
      button.addEventListener("click", () => { this.active = index; this.render(true); });
      bar.appendChild(button);
      return button;
    });
    const clear = document.createElement("button");
    clear.type = "button";
    clear.className = "ds-region-clear";
    clear.textContent = "Clear";
    clear.title = "Remove the selected region's rectangle";
    Object.assign(clear.style, { border: "1px solid #888", borderRadius: "4px", padding: "1px 6px",
      background: "transparent", color: "inherit", cursor: "pointer", fontSize: "11px" });
    clear.addEventListener("click", () => { this.regions[this.active] = null; this.commit(); });
    bar.appendChild(clear);
    const stage = document.createElement("div");
    Object.assign(stage.style, { flex: "1", minHeight: "0", display: "flex", alignItems: "center",
      justifyContent: "center", overflow: "hidden" });
    const canvas = document.createElement("canvas");
    canvas.className = "ds-region-canvas";
    Object.assign(canvas.style, { touchAction: "none", cursor: "crosshair", background: "#222" });
    stage.appendChild(canvas);
    root.append(bar, stage);
    canvas.addEventListener("pointerdown", (event) => this.onDown(event));
    canvas.addEventListener("pointermove", (event) => this.onMove(event));
    canvas.addEventListener("pointerup", (event) => this.onUp(event));
    canvas.addEventListener("pointercancel", (event) => this.onUp(event));
    this.root = root;
    this.stage = stage;
    this.canvas = canvas;
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

  // The widget's value changed (workflow loaded, user typed): take it.
  load() {
    this.regions = parseRegions(this.store?.value);
    this.render(true);
  }

  commit() {
    if (this.store) {
      this.store.value = serialiseRegions(this.regions);
      this.store.callback?.(this.store.value);
      this.regions = parseRegions(this.store.value); // what is shown is exactly what is sent
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
    if (event.button !== 0) return;
    event.preventDefault();
    event.stopPropagation();
    const p = this.point(event);
    const inside = (r) => r && p.x >= r.x && p.x <= r.x + r.w && p.y >= r.y && p.y <= r.y + r.h;
    const nearCorner = (r) => r && Math.abs(p.x - (r.x + r.w)) <= p.handle && Math.abs(p.y - (r.y + r.h)) <= p.handleY;
    const order = [this.active, ...this.regions.keys()].filter((i, n, all) => all.indexOf(i) === n);
    const hit = order.find((i) => nearCorner(this.regions[i])) ?? order.find((i) => inside(this.regions[i]));
    if (hit !== undefined) {
      this.active = hit;
      const r = this.regions[hit];
      this.drag = nearCorner(r) ? { mode: "resize", x0: r.x, y0: r.y } : { mode: "move", dx: p.x - r.x, dy: p.y - r.y };
    } else {
      this.drag = { mode: "draw", x0: p.x, y0: p.y };
      this.regions[this.active] = { x: p.x, y: p.y, w: 0, h: 0 };
    }
    this.canvas.setPointerCapture?.(event.pointerId);
    this.render(true);
  }

  onMove(event) {
    if (!this.drag) return;
    event.preventDefault();
    event.stopPropagation();
    const p = this.point(event);
    const r = this.regions[this.active];
    if (!r) return;
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
    this.canvas.releasePointerCapture?.(event.pointerId);
    const r = this.regions[this.active];
    if (r && (r.w < MIN_FRACTION || r.h < MIN_FRACTION)) this.regions[this.active] = null; // a click, not a drag
    this.drag = null;
    this.commit();
  }

  // Called on every frame the node is drawn; repaints only when something changed.
  render(force = false) {
    const { width, height } = this.size();
    const labels = this.labels();
    const availW = this.stage.clientWidth;
    const availH = this.stage.clientHeight;
    const signature = JSON.stringify([this.regions, this.active, width, height, labels, availW, availH]);
    if (!force && signature === this.signature) return;
    this.signature = signature;
    this.buttons.forEach((button, index) => {
      button.style.background = index === this.active ? REGION_COLOURS[index] : "transparent";
      button.style.color = index === this.active ? "#fff" : "inherit";
      button.textContent = labels[index] ? `${index + 1}: ${labels[index]}` : `Region ${index + 1}`;
    });
    if (availW < 2 || availH < 2) return;
    const scale = Math.min(availW / width, availH / height);
    const cssW = Math.max(1, Math.floor(width * scale));
    const cssH = Math.max(1, Math.floor(height * scale));
    this.canvas.style.width = `${cssW}px`;
    this.canvas.style.height = `${cssH}px`;
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(cssW * dpr);
    this.canvas.height = Math.round(cssH * dpr);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    ctx.fillStyle = "#222";
    ctx.fillRect(0, 0, cssW, cssH);
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "top";
    const order = [...this.regions.keys()].filter((i) => i !== this.active).concat(this.active);
    for (const index of order) {
      const r = this.regions[index];
      if (!r) continue;
      const colour = REGION_COLOURS[index];
      const [x, y, w, h] = [r.x * cssW, r.y * cssH, r.w * cssW, r.h * cssH];
      ctx.globalAlpha = 0.45;
      ctx.fillStyle = colour;
      ctx.fillRect(x, y, w, h);
      ctx.globalAlpha = 1;
      ctx.strokeStyle = colour;
      ctx.lineWidth = index === this.active ? 2 : 1;
      ctx.strokeRect(x, y, w, h);
      if (index === this.active) ctx.fillRect(x + w - HANDLE_PX / 2, y + h - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX);
      ctx.fillStyle = "#fff";
      ctx.fillText(labels[index] || `Region ${index + 1}`, x + 3, y + 3, Math.max(w - 6, 10));
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
      this.setSize?.([Math.max(w, 320), Math.max(h, EDITOR_HEIGHT + 140)]);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      this.dsRegionEditor?.load();
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      const result = onDrawForeground?.apply(this, arguments);
      this.dsRegionEditor?.render();
      return result;
    };
  },
});
