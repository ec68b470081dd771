// Diffusers Studio frontend extension. It only touches the pack's own nodes
// (DS* types in the "Diffusers Studio/" categories); the editor experience
// (region editor, colours) grows here.
//
// The file is served at /extensions/<pack folder>/js/diffusers_studio.js, so
// the frontend's scripts are three levels up.
import { app } from "../../../scripts/app.js";

const CATEGORY_PREFIX = "Diffusers Studio/";

// One colour pair per node family, so a graph reads at a glance: title bar
// (color) and body (bgcolor), dark enough for the light and the dark theme.
export const FAMILY_COLOURS = {
  loaders: { color: "#2a4858", bgcolor: "#355f73" },
  conditioning: { color: "#4a3b5c", bgcolor: "#5e4b75" },
  sampling: { color: "#5c3b3b", bgcolor: "#754b4b" },
  latent: { color: "#3b5c45", bgcolor: "#4b7558" },
  adapters: { color: "#5c513b", bgcolor: "#75684b" },
};

// The concept part of a node's category ("Diffusers Studio/<concept>") to its
// family. A concept not listed here keeps ComfyUI's default colours.
const CONCEPT_FAMILY = {
  loaders: "loaders",
  conditioning: "conditioning",
  regional: "conditioning",
  sampling: "sampling",
  latent: "latent",
  inpaint: "latent",
  image: "latent", // pictures after the decode (Restore Faces) sit with the VAE nodes
  controlnet: "adapters",
  ip_adapter: "adapters",
  ipadapter: "adapters",
  lora: "adapters",
  adapters: "adapters",
};

export function familyOf(comfyClass, category) {
  if (typeof comfyClass !== "string" || !comfyClass.startsWith("DS")) return null;
  if (typeof category !== "string" || !category.startsWith(CATEGORY_PREFIX)) return null;
  const concept = category.slice(CATEGORY_PREFIX.length).split("/")[0].toLowerCase();
  return CONCEPT_FAMILY[concept] ?? null;
}

app.registerExtension({
  name: "DiffusersStudio.NodeColours",
  async nodeCreated(node) {
    const family = familyOf(node.comfyClass, node.constructor?.category);
    const colours = family ? FAMILY_COLOURS[family] : null;
    // A colour the user picked (saved in the workflow) is applied after this
    // hook when a workflow loads, so it wins; new nodes get the family colour.
    if (colours && !node.color && !node.bgcolor) {
      node.color = colours.color;
      node.bgcolor = colours.bgcolor;
    }
  },
});
