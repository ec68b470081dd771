"""DSSDUpscale: A1111's "SD upscale": enlarge a picture, then redraw it tile by tile with img2img.

Thin: engine/sd_upscale.py plans the tiles and runs the pass; this node picks
the model's native tile size, enlarges the picture (with an UPSCALE_MODEL
when one is connected, through ComfyUI's own upscale code), and reports
progress across all tiles with ComfyUI's progress bar; Cancel stops between
tiles and at every step.
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge
from .engine import families, hooks
from .engine import sd_upscale as engine
from .engine.inpaint import native_size
from .engine.schedulers import SAMPLER_NAMES, SCHEDULE_TYPES, canonical_name_or_none
from .sample import MAX_SEED
from .types import DSVAE, DSConditioning, DSModel, category

NATIVE = 0  # tile side 0: the model family's native size


class DSSDUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSSDUpscale",
            display_name="Diffusers SD Upscale",
            category=category("sampling"),
            description=(
                "Enlarges a picture and redraws it with the model tile by tile (A1111's SD upscale script): "
                "the picture is upscaled by `scale`, cut into overlapping tiles of the model's native size, "
                "each tile goes through image-to-image at `denoise`, and the tiles are blended back with "
                "soft seams. Adds detail at sizes the model cannot draw in one piece."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The picture to enlarge (Load Image, or a decoded result)."),
                DSModel.Input("model", tooltip="The MODEL from Load Diffusers Model (LoRAs and other patches apply)."),
                DSConditioning.Input("positive", tooltip="What the tiles should show (Diffusers Text Encode); "
                                     "describe the whole picture's style rather than its layout."),
                DSConditioning.Input("negative", tooltip="What the tiles should avoid (Diffusers Text Encode)."),
                DSVAE.Input("vae", tooltip="The VAE from Load Diffusers Model: encodes and decodes each tile."),
                io.Float.Input("scale", default=2.0, min=0.25, max=engine.MAX_SCALE, step=0.05,
                               tooltip="How much larger the result is than the input (2 doubles each side); "
                               "sides are rounded to multiples of 8."),
                io.Combo.Input("upscale_method", options=list(engine.RESIZE_METHODS), default="lanczos",
                               tooltip="The filter that enlarges the picture before redrawing (A1111's "
                               "Lanczos by default); with an upscale model connected, the filter that brings "
                               "the model's result to the exact size."),
                io.Int.Input("tile_width", default=NATIVE, min=0, max=4096, step=8,
                             tooltip="Tile width in pixels; 0 uses the model's training size (512 SD1.x, 1024 SDXL)."),
                io.Int.Input("tile_height", default=NATIVE, min=0, max=4096, step=8,
                             tooltip="Tile height in pixels; 0 uses the model's training size (512 SD1.x, 1024 SDXL)."),
                io.Int.Input("overlap", default=64, min=0, max=2048, step=8,
                             tooltip="Least overlap between neighbouring tiles in pixels, blended with a linear "
                             "feather (A1111's Tile overlap). Under half the tile."),
                io.Float.Input("denoise", default=0.35, min=0.0, max=1.0, step=0.01,
                               tooltip="How much each tile is redrawn: 0.2-0.4 adds detail and keeps the "
                               "picture; higher values invent new content per tile."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="The noise seed of the first tile; tile i uses seed + i (as A1111)."),
                io.Int.Input("steps", default=20, min=1, max=10000,
                             tooltip="Denoising steps of the schedule; a tile runs steps x denoise of them."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale: how strongly to follow the prompt."),
                io.Combo.Input("sampler_name", options=SAMPLER_NAMES, default="Euler a",
                               tooltip="The sampler, by its A1111 name, as in Diffusers Sampler."),
                io.Combo.Input("schedule", options=SCHEDULE_TYPES, default="normal",
                               tooltip="Noise schedule: normal, karras or exponential, where the sampler supports it."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="Optional: an upscale model (Load Upscale Model: ESRGAN, SwinIR, ...) "
                                      "that enlarges the picture before redrawing, instead of the filter alone."),
            ],
            outputs=[io.Image.Output(tooltip="The enlarged, redrawn picture, for Save Image or Preview Image.")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str = "Euler a", schedule: str = "normal",
                        upscale_method: str = "lanczos", overlap: int = 64, tile_width: int = NATIVE,
                        tile_height: int = NATIVE) -> bool | str:
        if canonical_name_or_none(sampler_name) is None:
            return f"sampler_name: '{sampler_name}' is not one of {SAMPLER_NAMES}."
        if schedule not in SCHEDULE_TYPES:
            return f"schedule: '{schedule}' is not one of {SCHEDULE_TYPES}."
        if upscale_method not in engine.RESIZE_METHODS:
            return f"upscale_method: '{upscale_method}' is not one of {list(engine.RESIZE_METHODS)}."
        for name, side in (("tile_width", tile_width), ("tile_height", tile_height)):
            if side != NATIVE and (side < 64 or side % 8):
                return f"{name}: {side} is not 0 (the model's native size) or a multiple of 8 of at least 64."
        return True

    @classmethod
    def execute(cls, image, model, positive, negative, vae, scale: float = 2.0, upscale_method: str = "lanczos",
                tile_width: int = NATIVE, tile_height: int = NATIVE, overlap: int = 64, denoise: float = 0.35,
                seed: int = 0, steps: int = 20, cfg: float = 7.0, sampler_name: str = "Euler a",
                schedule: str = "normal", upscale_model=None) -> io.NodeOutput:
        native = native_size(model)
        tile_w, tile_h = tile_width or native, tile_height or native
        width, height = engine.upscaled_size(int(image.shape[2]), int(image.shape[1]), scale)
        engine.check_tiling(tile_w, tile_h, overlap)
        if upscale_model is not None:
            image = comfy_bridge.upscale_with_model(upscale_model, image)
        enlarged = engine.resize(image, width, height, upscale_method)

        extra = hooks.modules_of(hooks.collect(model, positive, negative, {}))
        comfy_bridge.load_to_compute_device([model.unet, vae.vae, *extra])
        device = comfy_bridge.module_device(model.unet)
        reporter = comfy_bridge.step_reporter(steps, families.of(model).latent_format.preview, device)
        result = engine.redraw_tiles(
            model, vae, positive, negative, enlarged, tile_width=tile_w, tile_height=tile_h, overlap=overlap,
            denoise=denoise, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name, schedule=schedule,
            device=device, on_step=reporter, should_stop=comfy_bridge.raise_if_interrupted,
        )
        return io.NodeOutput(result)


NODES = [DSSDUpscale]
