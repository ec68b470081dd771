"""DSLoadSplitModel: FLUX.1 / SD3 from separate transformer, text-encoder and VAE files.

BFL and Stability publish these models as separate files and ComfyUI's
folders hold them so (models/diffusion_models or models/unet,
models/text_encoders or models/clip, models/vae). Which encoder file is
CLIP-L, CLIP-G or T5 is read from its shapes, so the widgets may be filled in
any order; a wrong combination is refused at validation, from the headers
alone, with the file and the fix named (`single_file_dit.identify_split`).
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge, weights_dtype
from .engine.dit_loading import load_split
from .types import DSVAE, DSModel, DSTextEncoder, category

NONE = "none"
WEIGHT_SUFFIXES = (".safetensors", ".sft")
# .gguf is offered only when folder_paths lists it (a GGUF extension registers the suffix).
TRANSFORMERS = comfy_bridge.ModelFolder(
    "diffusion_models", "transformer_name", (*WEIGHT_SUFFIXES, ".gguf"), None, "diffusion model (transformer)"
)
TEXT_ENCODERS = comfy_bridge.ModelFolder("text_encoders", "text_encoder", WEIGHT_SUFFIXES, None, "text encoder")
VAES = comfy_bridge.ModelFolder("vae", "vae_name", WEIGHT_SUFFIXES, None, "VAE")
ENCODER_INPUTS = ("text_encoder_1", "text_encoder_2", "text_encoder_3")


def _register() -> None:
    for folder in (TRANSFORMERS, TEXT_ENCODERS, VAES):
        folder.register()


def _files(inputs: dict) -> tuple[str, list[str], str]:
    """Full paths of the chosen files; ValueError naming the widget for an unknown name."""
    transformer = TRANSFORMERS.path(inputs["transformer_name"])
    encoders = []
    for name in ENCODER_INPUTS:
        value = inputs.get(name, NONE)
        if value in (NONE, "", None):
            continue
        found = TEXT_ENCODERS.resolve(value)
        if found is None:
            raise ValueError(TEXT_ENCODERS.unknown_message(value).replace("text_encoder:", f"{name}:", 1))
        encoders.append(found)
    if not encoders:
        raise ValueError(
            "text_encoder_1: no text encoder selected. FLUX.1 needs clip_l and a t5xxl file, SD3 clip_l and "
            "clip_g (t5xxl optional): select them from models/text_encoders."
        )
    return transformer, encoders, VAES.path(inputs["vae_name"])


class DSLoadSplitModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        _register()
        encoder_names = TEXT_ENCODERS.names()
        return io.Schema(
            node_id="DSLoadSplitModel",
            display_name="Load Diffusers Split Model",
            category=category("loaders"),
            description=(
                "Loads FLUX.1 (dev, schnell) or SD3 / SD3.5 from separate files, as BFL and Stability publish "
                "them: the transformer from models/diffusion_models (or models/unet; fp8 and GGUF files too), "
                "one to three text encoders from models/text_encoders (clip_l and t5xxl for FLUX.1; clip_l, "
                "clip_g and optionally t5xxl for SD3, in any order) and the VAE from models/vae (ae.safetensors "
                "for FLUX.1). Gives the same MODEL, TEXT_ENCODER and VAE as Load Diffusers Model. Works offline."
            ),
            inputs=[
                io.Combo.Input(
                    "transformer_name", options=TRANSFORMERS.names(),
                    tooltip="The diffusion transformer file (models/diffusion_models or models/unet), e.g. "
                    "flux1-dev.safetensors, flux1-schnell-fp8.safetensors, sd3.5_large.safetensors or a .gguf. "
                    "Its family and variant are read from the file.",
                ),
                io.Combo.Input(
                    "text_encoder_1", options=encoder_names,
                    tooltip="A text encoder file (models/text_encoders or models/clip): clip_l.safetensors for "
                    "FLUX.1 and SD3. Which file is CLIP-L, CLIP-G or T5 is read from its shapes.",
                ),
                io.Combo.Input(
                    "text_encoder_2", options=[NONE, *encoder_names], default=NONE,
                    tooltip="The second text encoder: t5xxl_fp16 / t5xxl_fp8_e4m3fn for FLUX.1, clip_g for SD3.",
                ),
                io.Combo.Input(
                    "text_encoder_3", options=[NONE, *encoder_names], default=NONE,
                    tooltip="The third text encoder: SD3's t5xxl (optional; without it SD3 conditions on zeros "
                    "in its place, as diffusers does). none for FLUX.1.",
                ),
                io.Combo.Input(
                    "vae_name", options=VAES.names(),
                    tooltip="The VAE file (models/vae): ae.safetensors for FLUX.1, the SD3 VAE for SD3.",
                ),
                weights_dtype.dtype_input("float32 is exact but uses twice the memory. Plain fp8 weights "
                                          "stay float8 (one byte each) and compute in this precision; "
                                          "scaled fp8 files are dequantized to it."),
            ],
            outputs=[
                DSModel.Output(
                    display_name="MODEL", tooltip="The FLUX.1 / SD3 transformer and its scheduler settings, for DSSampler."
                ),
                DSTextEncoder.Output(
                    display_name="TEXT_ENCODER",
                    tooltip="The tokenizers and text encoders (CLIP-L and T5 for FLUX.1; CLIP-L, CLIP-G and T5 "
                    "for SD3), for DSTextEncode.",
                ),
                DSVAE.Output(display_name="VAE", tooltip="The autoencoder, for DSVAEDecode and DSVAEEncode."),
            ],
        )

    @classmethod
    def validate_inputs(cls, transformer_name: str, text_encoder_1: str, vae_name: str, dtype: str,
                        text_encoder_2: str = NONE, text_encoder_3: str = NONE) -> bool | str:
        # V3 combos are not checked by ComfyUI 0.3.75; the headers are read
        # here (cheap) so that a wrong combination is a 400 before any load.
        _register()
        inputs = dict(transformer_name=transformer_name, text_encoder_1=text_encoder_1,
                      text_encoder_2=text_encoder_2, text_encoder_3=text_encoder_3, vae_name=vae_name)
        try:
            transformer, encoders, vae = _files(inputs)
            from .engine.single_file_dit import identify_split

            identify_split(transformer, encoders, vae)
        except ValueError as exc:  # ModelLoadError is a ValueError
            return str(exc)
        return weights_dtype.check_dtype(dtype)

    @classmethod
    def execute(cls, transformer_name: str, text_encoder_1: str, text_encoder_2: str = NONE,
                text_encoder_3: str = NONE, vae_name: str = "", dtype: str = "auto") -> io.NodeOutput:
        _register()
        transformer, encoders, vae = _files(dict(
            transformer_name=transformer_name, text_encoder_1=text_encoder_1, text_encoder_2=text_encoder_2,
            text_encoder_3=text_encoder_3, vae_name=vae_name,
        ))
        model, text_encoder, vae_bundle = load_split(
            transformer, encoders, vae,
            dtype=weights_dtype.resolve(dtype),
            tokenizer_dirs=comfy_bridge.tokenizer_dirs(),
            device=comfy_bridge.offload_device(),
        )
        return io.NodeOutput(model, text_encoder, vae_bundle)


NODES = [DSLoadSplitModel]
