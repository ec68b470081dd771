// The first screen of `make run`: the pack's text-to-image workflow instead
// of ComfyUI's stock default graph.
//
// The stock graph's Load Checkpoint picks the first file of
// models/checkpoints, and with the pack's demo models that is a file only the
// pack's own loader reads: a newcomer's first Run failed. When the server
// names a first workflow (GET /diffusers_studio/first_workflow, set by
// `make run` through DS_FIRST_WORKFLOW; a user's own ComfyUI answers null)
// and this browser holds no saved workflow, the graph ComfyUI is about to
// open at start-up is replaced by that workflow, once, and only when it is
// the stock default graph. A workflow the user saved (the editor's
// localStorage/sessionStorage copy, open tabs) always wins.
//
// Order of the editor's start (frontend 1.32.9): extensions' setup(), then
// the initial workflow load: the saved one if any, else the default graph
// (or, for a user who never finished the tutorial, a blank canvas and the
// template browser; with a first workflow to show, the tutorial is marked
// done so the default-graph path runs and is replaced).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

export const FIRST_WORKFLOW_ROUTE = "/diffusers_studio/first_workflow";

// ComfyUI's stock default graph, by node type (used when the frontend does
// not expose its own copy as comfyAPI.defaultGraph).
const STOCK_DEFAULT_TYPES = [
  "CLIPTextEncode", "CLIPTextEncode", "CheckpointLoaderSimple", "EmptyLatentImage", "KSampler", "SaveImage", "VAEDecode",
];

function typesOf(graphData) {
  return (graphData?.nodes ?? []).map((node) => node.type).sort();
}

function sameList(a, b) {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

// Whether `graphData` is ComfyUI's untouched default graph: the same node
// types, and where the frontend exposes its default graph, the same widget
// values (so a default graph a user changed and saved is never matched).
export function isStockDefaultGraph(graphData, stock = window.comfyAPI?.defaultGraph?.defaultGraph) {
  if (stock?.nodes) {
    if (!sameList(typesOf(graphData), typesOf(stock))) return false;
    const values = (data) => JSON.stringify([...data.nodes].sort((a, b) => a.id - b.id).map((n) => n.widgets_values ?? null));
    return values(graphData) === values(stock);
  }
  return sameList(typesOf(graphData), STOCK_DEFAULT_TYPES);
}

// Whether the browser holds a workflow the editor would restore at start-up.
export function hasSavedWorkflow(local = window.localStorage, session = window.sessionStorage) {
  if (local.getItem("workflow")) return true;
  const openPaths = JSON.parse(local.getItem("Comfy.OpenWorkflowsPaths") || session.getItem("Comfy.OpenWorkflowsPaths") || "[]");
  if (Array.isArray(openPaths) && openPaths.length) return true;
  for (let i = 0; i < session.length; i++) {
    const key = session.key(i);
    if (key && key.startsWith("workflow:") && session.getItem(key)) return true;
  }
  return false;
}

let pending = null; // { name, workflow } until the start-up load has been seen

app.registerExtension({
  name: "DiffusersStudio.FirstScreen",

  async setup() {
    if (hasSavedWorkflow()) return;
    let answer = null;
    try {
      const response = await api.fetchApi(FIRST_WORKFLOW_ROUTE);
      if (response.ok) answer = await response.json();
    } catch (error) {
      console.warn("Diffusers Studio: no first workflow", error);
    }
    if (!answer?.workflow) return;
    pending = answer;
    const settings = app.extensionManager?.setting;
    if (settings && !settings.get("Comfy.TutorialCompleted")) {
      await settings.set("Comfy.TutorialCompleted", true);
    }
  },

  // The start-up load is the first graph configured after setup(): replace
  // its data in place when it is the stock default graph.
  async beforeConfigureGraph(graphData) {
    const first = pending;
    pending = null;
    if (!first || !graphData || !isStockDefaultGraph(graphData)) return;
    for (const key of Object.keys(graphData)) delete graphData[key];
    Object.assign(graphData, structuredClone(first.workflow));
    console.info(`Diffusers Studio: first start, showing the ${first.name} workflow instead of the default graph`);
  },
});
