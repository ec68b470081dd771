// Region data and drawing for the region editor (region_editor.js), kept
// apart so that the editor file stays about the editor. ComfyUI imports every
// .js file under web/ as an extension, so this module must be harmless when
// loaded on its own: it only exports constants and functions, no side effects.
//
// A region is null (nothing drawn) or
//   { rect: {x, y, w, h} | null, strokes: [{ points: [[x, y], ...], size, erase }] }
// with x, y, w, h and points in fractions (0..1) of the picture and `size`
// the brush diameter as a fraction of its shorter side. The JSON in the
// `regions` widget is the same with the rectangle's keys on the region itself
// ({"x", "y", "w", "h", "strokes"}); the backend (nodes/region_masks.py) reads
// it and holds the same limits.

export const MAX_REGIONS = 4;
export const MAX_POINTS = 1000; // per stroke
export const MAX_STROKES = 100; // per region
export const MAX_CHARS = 256 * 1024; // of the whole JSON
// A new point is kept only this far (a fraction of the canvas) from the last
// one: a drag makes a point per pointer event, most of them pixels apart.
export const MIN_STEP = 0.005;

const finite = (value) => typeof value === "number" && Number.isFinite(value);
const clamp01 = (value) => Math.min(Math.max(value, 0), 1);
const round = (value) => Math.round(clamp01(value) * 10000) / 10000;

function parseStroke(stroke) {
  if (!stroke || !Array.isArray(stroke.points) || !finite(stroke.size) || stroke.size <= 0) return null;
  const points = stroke.points
    .filter((point) => Array.isArray(point) && point.length === 2 && point.every(finite))
    .slice(0, MAX_POINTS)
    .map(([x, y]) => [clamp01(x), clamp01(y)]);
  if (!points.length) return null;
  return { points, size: Math.min(stroke.size, 1), erase: stroke.erase === true };
}

// The widget's JSON to MAX_REGIONS regions; anything unreadable is dropped
// (the backend names the mistake when the prompt is queued).
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
    if (!region || typeof region !== "object") return;
    const rect = ["x", "y", "w", "h"].every((key) => finite(region[key]))
      ? { x: region.x, y: region.y, w: region.w, h: region.h }
      : null;
    const strokes = (Array.isArray(region.strokes) ? region.strokes : [])
      .slice(0, MAX_STROKES).map(parseStroke).filter(Boolean);
    if (rect || strokes.length) regions[index] = { rect, strokes };
  });
  return regions;
}

// Regions to the widget's JSON: 4 decimals, trailing empty regions dropped, and
// a rectangle-only region written exactly as before strokes existed.
export function serialiseRegions(regions) {
  const list = regions.map((region) => {
    if (!region || (!region.rect && !region.strokes?.length)) return null;
    const out = {};
    const r = region.rect;
    if (r) Object.assign(out, { x: round(r.x), y: round(r.y), w: round(r.w), h: round(r.h) });
    if (region.strokes?.length) {
      out.strokes = region.strokes.map((stroke) => {
        const entry = { points: stroke.points.map(([x, y]) => [round(x), round(y)]), size: round(stroke.size) };
        if (stroke.erase) entry.erase = true;
        return entry;
      });
    }
    return out;
  });
  while (list.length && list[list.length - 1] === null) list.pop();
  return JSON.stringify({ version: 1, regions: list });
}

// Appends a point to a stroke unless it is within MIN_STEP of the last one
// (`force` keeps it anyway, for the point where the pointer is lifted, unless it
// is the same point). Returns whether it was added.
export function addPoint(stroke, x, y, force = false) {
  const last = stroke.points[stroke.points.length - 1];
  if (last) {
    const step = Math.hypot(x - last[0], y - last[1]);
    if (step === 0 || (!force && step < MIN_STEP)) return false;
  }
  stroke.points.push([x, y]);
  return true;
}

// A point on the canvas for a rectangle's label: its corner, else the first
// painted point.
export function anchorOf(region) {
  if (region?.rect) return [region.rect.x, region.rect.y];
  const stroke = region?.strokes?.find((entry) => !entry.erase);
  return stroke ? stroke.points[0] : null;
}

// Paints one region, opaque in its colour, on `layer` (a canvas of the same
// pixel size as the editor's, cleared here): the rectangle, then each stroke in
// order, brush strokes added and eraser strokes cut out with round caps and
// joins, as the backend makes the mask. The caller lays the layer over the
// picture half transparent.
export function paintRegion(layer, region, cssW, cssH, dpr, colour) {
  const ctx = layer.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.globalCompositeOperation = "source-over";
  ctx.clearRect(0, 0, layer.width, layer.height);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = colour;
  ctx.strokeStyle = colour;
  if (region.rect) {
    const r = region.rect;
    ctx.fillRect(r.x * cssW, r.y * cssH, r.w * cssW, r.h * cssH);
  }
  const shorter = Math.min(cssW, cssH);
  for (const stroke of region.strokes) {
    ctx.globalCompositeOperation = stroke.erase ? "destination-out" : "source-over";
    const width = stroke.size * shorter;
    const [first, ...rest] = stroke.points;
    ctx.beginPath();
    if (!rest.length) {
      ctx.arc(first[0] * cssW, first[1] * cssH, width / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.lineWidth = width;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.moveTo(first[0] * cssW, first[1] * cssH);
    for (const [x, y] of rest) ctx.lineTo(x * cssW, y * cssH);
    ctx.stroke();
  }
  ctx.globalCompositeOperation = "source-over";
}
