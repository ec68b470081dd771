"""DSLoadModel: a checkpoint from ComfyUI's model folders as diffusers components."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge, weights_dtype
from .engine.loading import load_checkpoint
from .types import DSVAE, DSModel, DSTextEncoder, category


class DSLoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSLoadModel",
            display_name="Load Diffusers Model",
            category=category("loaders"),
            description=(
                "Loads an SD1.x, SDXL or SDXL refiner model as diffusers components: a diffusers "
                "folder from models/diffusers or a single .safetensors checkpoint from "
                "models/checkpoints. SD3 / SD3.5 and Flux.1 (dev, schnell) load from diffusers folders and from "
                "all-in-one checkpoints (e.g. flux1-dev-fp8, sd3.5_medium incl. clips); for a transformer file "
                "with separate text encoders and VAE use Load Diffusers Split Model. "
                "Works offline; loading the same file again reuses the loaded weights."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=comfy_bridge.model_names(),
                    tooltip="The model: a diffusers folder (models/diffusers) or a single-file "
                    ".safetensors checkpoint (models/checkpoints). SD1.x, SDXL and the SDXL refiner "
                    "(sd_xl_refiner_1.0) are supported; SD3 / SD3.5 and Flux.1 dev / schnell as diffusers "
                    "folders or all-in-one checkpoints (the family is read from model_index.json or the file's "
                    "header).",
                ),
                weights_dtype.dtype_input("float32 is exact but uses twice the memory."),
            ],
            outputs=[
                DSModel.Output(
                    display_name="MODEL",
                    tooltip="The denoiser (UNet, or SD3 / Flux transformer) and its scheduler settings, for DSSampler."
                ),
                DSTextEncoder.Output(
                    display_name="TEXT_ENCODER",
                    tooltip="The tokenizer(s) and text encoder(s), for DSTextEncode (two for SDXL, one for the "
                    "SDXL refiner: encode the refiner's prompts with this one; CLIP-L, CLIP-G and T5 for SD3; "
                    "CLIP-L and T5 for Flux).",
                ),
                DSVAE.Output(
                    display_name="VAE", tooltip="The autoencoder, for DSVAEDecode and DSVAEEncode."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name: str, dtype: str) -> bool | str:
        # A V3 combo's value is not checked against its options by ComfyUI
        # 0.3.75; check here so a bad name is a 400 before anything runs.
        if model_name not in comfy_bridge.model_names():
            return comfy_bridge.unknown_model_message(model_name)
        return weights_dtype.check_dtype(dtype)

    @classmethod
    def execute(cls, model_name: str, dtype: str = "auto") -> io.NodeOutput:
        path = comfy_bridge.resolve_model_path(model_name)
        model, text_encoder, vae = load_checkpoint(
            path,
            dtype=weights_dtype.resolve(dtype),
            tokenizer_dir=comfy_bridge.tokenizer_dir(),
            t5_tokenizer_dir=comfy_bridge.t5_tokenizer_dir(),
            device=comfy_bridge.offload_device(),
        )
        return io.NodeOutput(model, text_encoder, vae)


NODES = [DSLoadModel]
