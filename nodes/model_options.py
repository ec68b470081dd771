"""DSModelOptions: weight storage, attention implementation and regional compile for DS_MODEL.

Thin: engine/model_options.py does the work and returns a new DS_MODEL; the
loaded model is never changed (float8/int8/NF4 storage lives on a shared copy of
the UNet, attention and compile are applied for one run and undone after).
"""
from __future__ import annotations

from comfy_api.latest import io

from .engine import model_options as mo
from .types import DSModel, DSTextEncoder, category


class DSModelOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSModelOptions",
            display_name="Diffusers Model Options",
            category=category("loaders"),
            description=(
                "Memory and speed options for a model: store the UNet's weights in float8, int8 (torchao) or "
                "NF4 (bitsandbytes) to use less memory, choose the attention implementation, and "
                "compile the UNet's transformer blocks with torch.compile. The same options apply to SD3 and "
                "FLUX.1 transformers. The loaded model is not changed: a stored copy is shared by every workflow "
                "asking for the same option. For the text encoders (T5) use Diffusers Text Encoder Options."
            ),
            inputs=[
                DSModel.Input("model", tooltip="The MODEL from Load Diffusers Model (or a LoRA node)."),
                io.Combo.Input(
                    "weight_storage",
                    options=mo.WEIGHT_STORAGES,
                    default=mo.STORAGE_DEFAULT,
                    tooltip="How the UNet's (or SD3 / FLUX.1 transformer's) weights are stored. default: as loaded. float8_e4m3fn / "
                    "float8_e5m2: one byte per weight, computed in the model's precision (diffusers' "
                    "layerwise casting; small quality cost, e4m3fn is the more precise). int8: Linear "
                    "layers in int8 with one scale per output channel (needs torchao). nf4: Linear layers in "
                    "4 bits, one scale per 64 weights (needs bitsandbytes; CUDA or CPU). Convolutions keep "
                    "the model's precision with int8 and nf4. A LoRA can be merged into float8 weights, not into "
                    "int8 or nf4 ones (refused, naming the fix).",
                ),
                io.Combo.Input(
                    "attention",
                    options=mo.ATTENTIONS,
                    default=mo.ATTENTION_AS_LOADED,
                    tooltip="Attention implementation for the run. as loaded: keep the model's. sdpa: "
                    "PyTorch scaled_dot_product_attention (fast, low memory). classic (no sdpa): plain "
                    "matmul and softmax, for comparison or debugging. SD3 and FLUX.1 keep their own attention "
                    "processors (already sdpa); classic runs them on PyTorch's math kernel.",
                ),
                io.Boolean.Input(
                    "compile_unet",
                    default=False,
                    tooltip="Compile the UNet's repeated transformer blocks with torch.compile (regional "
                    "compilation). The first run is slower while it compiles; later runs reuse it.",
                ),
            ],
            outputs=[
                DSModel.Output(
                    display_name="MODEL",
                    tooltip="The model with these options, for DSSampler, a LoRA node or another node.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, weight_storage: str = mo.STORAGE_DEFAULT, attention: str = mo.ATTENTION_AS_LOADED,
                        compile_unet: bool = False):
        # ComfyUI 0.3.75 does not check a V3 combo's value against its options.
        if weight_storage not in mo.WEIGHT_STORAGES:
            return f"weight_storage: '{weight_storage}' is not one of {mo.WEIGHT_STORAGES}."
        if attention not in mo.ATTENTIONS:
            return f"attention: '{attention}' is not one of {mo.ATTENTIONS}."
        return True

    @classmethod
    def execute(cls, model, weight_storage: str = mo.STORAGE_DEFAULT, attention: str = mo.ATTENTION_AS_LOADED,
                compile_unet: bool = False) -> io.NodeOutput:
        return io.NodeOutput(
            mo.apply_options(model, weight_storage=weight_storage, attention=attention, compile_unet=bool(compile_unet))
        )


class DSTextEncoderOptions(io.ComfyNode):
    """Weight storage for DS_TEXT_ENCODER: T5-XXL is most of a Flux / SD3 download and of its memory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSTextEncoderOptions",
            display_name="Diffusers Text Encoder Options",
            category=category("loaders"),
            description=(
                "Store the text encoders' weights in float8, int8 (torchao) or NF4 (bitsandbytes) to use less "
                "memory: FLUX.1's and SD3's T5-XXL is 4.7 B parameters (19 GB in float32, 4.7 GB in float8). "
                "The loaded encoders are not changed: a stored copy is shared by every workflow asking for the "
                "same option."
            ),
            inputs=[
                DSTextEncoder.Input("text_encoder", tooltip="The TEXT_ENCODER from Load Diffusers Model or "
                                    "Load Diffusers Split Model."),
                io.Combo.Input(
                    "weight_storage",
                    options=mo.WEIGHT_STORAGES,
                    default=mo.STORAGE_FP8_E4M3,
                    tooltip="How the encoders' weights are stored. default: as loaded. float8_e4m3fn / "
                    "float8_e5m2: one byte per weight, computed in the encoder's precision (e4m3fn is the more "
                    "precise, as t5xxl_fp8_e4m3fn files). int8: Linear layers in int8 with one scale per output "
                    "channel (needs torchao). nf4: Linear layers in 4 bits (needs bitsandbytes). T5's "
                    "feed-forward output layers stay in the encoder's precision, as transformers keeps them.",
                ),
                io.Combo.Input(
                    "apply_to",
                    options=mo.ENCODER_CHOICES,
                    default=mo.ENCODERS_T5,
                    tooltip="T5 only: the large encoder of FLUX.1 and SD3 (the CLIP encoders are small and "
                    "stay as loaded). all text encoders: every encoder, also SD1.x / SDXL's CLIP.",
                ),
            ],
            outputs=[
                DSTextEncoder.Output(
                    display_name="TEXT_ENCODER",
                    tooltip="The text encoder with this storage, for Diffusers Text Encode.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, weight_storage: str = mo.STORAGE_FP8_E4M3, apply_to: str = mo.ENCODERS_T5):
        if weight_storage not in mo.WEIGHT_STORAGES:
            return f"weight_storage: '{weight_storage}' is not one of {mo.WEIGHT_STORAGES}."
        if apply_to not in mo.ENCODER_CHOICES:
            return f"apply_to: '{apply_to}' is not one of {mo.ENCODER_CHOICES}."
        return True

    @classmethod
    def execute(cls, text_encoder, weight_storage: str = mo.STORAGE_FP8_E4M3,
                apply_to: str = mo.ENCODERS_T5) -> io.NodeOutput:
        return io.NodeOutput(
            mo.apply_text_encoder_options(text_encoder, weight_storage=weight_storage, apply_to=apply_to)
        )


NODES = [DSModelOptions, DSTextEncoderOptions]
