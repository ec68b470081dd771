"""DSLoadLoRA: a LoRA from models/loras as a patch on DS_MODEL and DS_TEXT_ENCODER.

Thin: the file is found by name (only names the listing produced), read and
matched by engine/lora.py, which returns new socket values carrying the patch;
the cached model is never changed, so chaining, removing or re-weighting
LoRAs between prompts is always exact.
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge
from .engine.lora import apply_lora, load_lora
from .types import DSModel, DSTextEncoder, category

LORA_SUFFIXES = (".safetensors", ".sft", ".pt", ".pth", ".bin", ".ckpt")
MAX_STRENGTH = 100.0


LORAS = comfy_bridge.ModelFolder("loras", "lora_name", LORA_SUFFIXES, None, "LoRA")


def lora_names() -> list[str]:
    """LoRA files in ComfyUI's models/loras folders, by name."""
    return LORAS.names()


class DSLoadLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSLoadLoRA",
            display_name="Load Diffusers LoRA",
            category=category("loaders"),
            description=(
                "Adds a LoRA from models/loras to the model and its text encoder, each with its own "
                "strength. Chain several to stack them. SD1.x/SDXL: diffusers/peft, kohya and A1111 LoRAs and "
                "LyCORIS LoCon; Flux: diffusers/peft, kohya, ComfyUI, XLabs and BFL files (converted by "
                "diffusers); SD3: diffusers/peft files. The loaded model itself is not changed, so removing "
                "the LoRA or changing its strength gives exactly the images you would get otherwise."
            ),
            inputs=[
                DSModel.Input("model", tooltip="The MODEL from Load Diffusers Model (or another LoRA node)."),
                DSTextEncoder.Input(
                    "text_encoder",
                    tooltip="The TEXT_ENCODER from Load Diffusers Model (or another LoRA node).",
                ),
                io.Combo.Input(
                    "lora_name",
                    options=lora_names(),
                    tooltip="The LoRA file in models/loras, made for the same model family "
                    "(an SD1.5 LoRA for an SD1.5 checkpoint, an SDXL LoRA for SDXL, a Flux LoRA for Flux).",
                ),
                io.Float.Input(
                    "strength_model",
                    default=1.0,
                    min=-MAX_STRENGTH,
                    max=MAX_STRENGTH,
                    step=0.01,
                    tooltip="How strongly the LoRA changes the UNet / transformer: 1 as trained, 0 off, "
                    "negative values push the other way (A1111's <lora:name:weight>).",
                ),
                io.Float.Input(
                    "strength_text_encoder",
                    default=1.0,
                    min=-MAX_STRENGTH,
                    max=MAX_STRENGTH,
                    step=0.01,
                    tooltip="How strongly the LoRA changes the text encoder(s) (CLIP; T5 where the file has "
                    "T5 layers): 1 as trained, 0 off. Only matters for LoRAs trained with a text encoder part.",
                ),
            ],
            outputs=[
                DSModel.Output(
                    display_name="MODEL", tooltip="The model with this LoRA, for DSSampler or another LoRA node."
                ),
                DSTextEncoder.Output(
                    display_name="TEXT_ENCODER",
                    tooltip="The text encoder with this LoRA, for DSTextEncode or another LoRA node.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str, strength_model: float = 1.0, strength_text_encoder: float = 1.0):
        # ComfyUI 0.3.75 does not check a V3 combo's value against its options.
        if lora_name not in lora_names():
            return LORAS.unknown_message(lora_name)
        for label, value in (("strength_model", strength_model), ("strength_text_encoder", strength_text_encoder)):
            if not isinstance(value, (int, float)) or not -MAX_STRENGTH <= value <= MAX_STRENGTH:
                return f"{label}: {value!r} is not a number between {-MAX_STRENGTH} and {MAX_STRENGTH}."
        return True

    @classmethod
    def execute(
        cls, model, text_encoder, lora_name: str, strength_model: float = 1.0, strength_text_encoder: float = 1.0
    ) -> io.NodeOutput:
        lora = load_lora(LORAS.path(lora_name), name=lora_name)
        new_model, new_text_encoder = apply_lora(model, text_encoder, lora, strength_model, strength_text_encoder)
        return io.NodeOutput(new_model, new_text_encoder)


NODES = [DSLoadLoRA]
