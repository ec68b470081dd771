// Diffusers Studio frontend extension. It only touches the pack's own nodes
// (DS* types); the editor experience (region editor, colours) grows here.
import { app } from "../../scripts/app.js";

const FAMILY_COLOURS = {
  loaders: { color: "#2a4858", bgcolor: "#355f73" },
  conditioning: { color: "#4a3b5c", bgcolor: "#5e4b75" },
  sampling: { color: "#5c3b3b", bgcolor: "#754b4b" },
  latent: { color: "#3b5c45", bgcolor: "#4b7558" },
};

app.registerExtension({
  name: "DiffusersStudio.NodeColours",
  async nodeCreated(node) {
    const category = node.constructor?.category ?? "";
    if (!node.comfyClass?.startsWith("DS") || !category.startsWith("Diffusers Studio/")) return;
    const family = category.split("/")[1];
    const colours = FAMILY_COLOURS[family];
    if (colours && !node.color) {
      node.color = colours.color;
      node.bgcolor = colours.bgcolor;
    }
  },
});
