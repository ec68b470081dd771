"""ControlNet nodes: load, apply (chainable) and two weight-free hint preprocessors."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge, weights_dtype
from .engine import hint_preprocessors
from .engine.controlnet import apply_controlnet
from .engine.controlnet_loading import WEIGHT_SUFFIXES, is_controlnet_folder, load_controlnet
from .types import DSVAE, DSConditioning, DSControlNet, category

CONTROLNETS = comfy_bridge.ModelFolder(
    "controlnet", "control_net_name", WEIGHT_SUFFIXES, is_controlnet_folder, "ControlNet (single file or diffusers folder)"
)


def controlnet_names() -> list[str]:
    """What Load Diffusers ControlNet offers: diffusers folders, then weight files."""
    return CONTROLNETS.names()


# --------------------------------------------------------------------- nodes


class DSLoadControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSLoadControlNet",
            display_name="Load Diffusers ControlNet",
            category=category("controlnet"),
            description=(
                "Loads a ControlNet from models/controlnet, as a single file or a diffusers folder: SD1.x / "
                "SDXL (lllyasviel's control_v11* releases, diffusers weights), Flux.1 (InstantX, Union, XLabs' "
                "own flux-*-controlnet files and their -diffusers releases: FluxControlNetModel) and SD3 / "
                "SD3.5 (InstantX SD3ControlNetModel, Stability's sd3.5_large_controlnet_* files). Works "
                "offline; the family and size are read from the weights or the folder's config."
            ),
            inputs=[
                io.Combo.Input(
                    "control_net_name",
                    options=controlnet_names(),
                    tooltip="The ControlNet, from models/controlnet. Use one made for the model's family "
                    "(e.g. control_v11p_sd15_canny for SD1.5, controlnet-canny-sdxl-1.0 for SDXL, "
                    "FLUX.1-dev-Controlnet-Union for Flux, sd3.5_large_controlnet_canny for SD3.5 large); "
                    "a lone .safetensors needs no config.json.",
                ),
                weights_dtype.dtype_input(),
            ],
            outputs=[
                DSControlNet.Output(
                    display_name="CONTROL_NET", tooltip="The ControlNet, for Apply Diffusers ControlNet."
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, control_net_name: str, dtype: str) -> bool | str:
        # V3 combo values are not checked by ComfyUI 0.3.75.
        if control_net_name not in controlnet_names():
            return CONTROLNETS.unknown_message(control_net_name)
        return weights_dtype.check_dtype(dtype)

    @classmethod
    def execute(cls, control_net_name: str, dtype: str = "auto") -> io.NodeOutput:
        path = CONTROLNETS.path(control_net_name)
        bundle = load_controlnet(path, dtype=weights_dtype.resolve(dtype), device=comfy_bridge.offload_device())
        return io.NodeOutput(bundle)


class DSApplyControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSApplyControlNet",
            display_name="Apply Diffusers ControlNet",
            category=category("controlnet"),
            description=(
                "Guides the image's structure with a ControlNet and a hint image (edges, line art, depth, "
                "pose). Returns the prompts with the ControlNet attached; chain several for "
                "multi-ControlNet, each with its own image, strength and step window. Matches diffusers' "
                "StableDiffusion(XL)ControlNetPipeline, and for Flux / SD3 (connect the vae) "
                "FluxControlNetPipeline and StableDiffusion3ControlNetPipeline."
            ),
            inputs=[
                DSConditioning.Input("positive", tooltip="The positive prompt (Diffusers Text Encode)."),
                DSConditioning.Input("negative", tooltip="The negative prompt (Diffusers Text Encode)."),
                DSControlNet.Input("control_net", tooltip="The ControlNet (Load Diffusers ControlNet)."),
                io.Image.Input(
                    "image",
                    tooltip="The hint image, e.g. from Canny Edges. Resized to the generated size as "
                    "diffusers does, so any size works.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=10.0,
                    step=0.01,
                    tooltip="How strongly the ControlNet steers (diffusers' controlnet_conditioning_scale); "
                    "0 turns it off.",
                ),
                io.Float.Input(
                    "start_percent",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="Fraction of the steps after which the ControlNet starts acting "
                    "(diffusers' control_guidance_start).",
                ),
                io.Float.Input(
                    "end_percent",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="Fraction of the steps after which the ControlNet stops acting "
                    "(diffusers' control_guidance_end); lower it to let the last steps refine freely.",
                ),
                io.Boolean.Input(
                    "guess_mode",
                    default=False,
                    tooltip="Guess mode: the ControlNet sees only the positive prompt and tries to "
                    "recognise the hint even without a prompt (use with cfg 3-5).",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Optional: limits the ControlNet to the white area of the mask (resized to "
                    "the image). An all-black mask turns it off.",
                ),
                DSVAE.Input(
                    "vae",
                    optional=True,
                    tooltip="Flux / SD3 ControlNets only (required there): the model's VAE (Load Diffusers "
                    "Model), which encodes the hint to latents as diffusers' Flux/SD3 ControlNet pipelines do. "
                    "SD1.x / SDXL ControlNets take the hint as pixels and ignore it.",
                ),
                io.Int.Input(
                    "control_mode",
                    default=-1,
                    min=-1,
                    max=63,
                    optional=True,
                    tooltip="Flux Union ControlNets only: which kind of hint this is (InstantX Union: 0 canny, "
                    "1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 low quality; see the model card). "
                    "-1 (none) for every other ControlNet.",
                ),
            ],
            outputs=[
                DSConditioning.Output(
                    display_name="positive", tooltip="The positive prompt with the ControlNet attached."
                ),
                DSConditioning.Output(
                    display_name="negative", tooltip="The negative prompt with the ControlNet attached."
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        positive,
        negative,
        control_net,
        image,
        strength: float = 1.0,
        start_percent: float = 0.0,
        end_percent: float = 1.0,
        guess_mode: bool = False,
        mask=None,
        vae=None,
        control_mode: int = -1,
    ) -> io.NodeOutput:
        pos, neg = apply_controlnet(
            positive,
            negative,
            control_net,
            image,
            strength=strength,
            start_percent=start_percent,
            end_percent=end_percent,
            mask=mask,
            guess_mode=guess_mode,
            load_modules=comfy_bridge.load_to_compute_device,
            vae=vae,
            control_mode=int(control_mode),
        )
        return io.NodeOutput(pos, neg)


class DSCannyEdges(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSCannyEdges",
            display_name="Canny Edges",
            category=category("controlnet"),
            description=(
                "Turns a picture into a Canny edge map (white edges on black), the hint a canny "
                "ControlNet expects. Needs no downloaded model."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The picture to take the edges of."),
                io.Int.Input(
                    "low_threshold",
                    default=100,
                    min=0,
                    max=255,
                    tooltip="Gradient strength (0-255) above which a pixel may continue an edge.",
                ),
                io.Int.Input(
                    "high_threshold",
                    default=200,
                    min=0,
                    max=255,
                    tooltip="Gradient strength (0-255) above which a pixel starts an edge; higher "
                    "keeps fewer, stronger edges.",
                ),
            ],
            outputs=[io.Image.Output(tooltip="The edge map, for Apply ControlNet (and Preview Image).")],
        )

    @classmethod
    def validate_inputs(cls, low_threshold: int, high_threshold: int) -> bool | str:
        if low_threshold > high_threshold:
            return (
                f"low_threshold ({low_threshold}) must not be above high_threshold ({high_threshold}): "
                "swap them (typical: 100 and 200)."
            )
        return True

    @classmethod
    def execute(cls, image, low_threshold: int = 100, high_threshold: int = 200) -> io.NodeOutput:
        return io.NodeOutput(hint_preprocessors.canny_edges(image, low_threshold, high_threshold))


class DSLineArtThreshold(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSLineArtThreshold",
            display_name="Line Art Threshold",
            category=category("controlnet"),
            description=(
                "Turns a drawing or scan into clean white lines on black, the hint a lineart or "
                "scribble ControlNet expects, by a brightness threshold. Needs no downloaded model."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The drawing (e.g. pencil on paper)."),
                io.Float.Input(
                    "threshold",
                    default=0.5,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Brightness (0-1) that separates lines from the background.",
                ),
                io.Boolean.Input(
                    "lines_are_dark",
                    default=True,
                    tooltip="On: dark lines on a light ground (pixels darker than the threshold are "
                    "lines). Off: light lines on a dark ground.",
                ),
            ],
            outputs=[io.Image.Output(tooltip="The line art, for Apply ControlNet (and Preview Image).")],
        )

    @classmethod
    def execute(cls, image, threshold: float = 0.5, lines_are_dark: bool = True) -> io.NodeOutput:
        return io.NodeOutput(hint_preprocessors.line_art_threshold(image, threshold, lines_are_dark))


NODES = [DSLoadControlNet, DSApplyControlNet, DSCannyEdges, DSLineArtThreshold]
