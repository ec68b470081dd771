"""DSModelOptions: weight storage, attention implementation and regional compile for DS_MODEL.

Thin: engine/model_options.py does the work and returns a new DS_MODEL; the
loaded model is never changed (float8/int8/NF4 storage lives on a shared copy of
the UNet, attention and compile are applied for one run and undone after).
"""
from __future__ import annotations

from comfy_api.latest import io

from .engine import model_options as mo
from .types import DSModel, category


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
                "compile the UNet's transformer blocks with torch.compile. The loaded model is not changed: "
                "a stored copy is shared by every workflow asking for the same option."
            ),
            inputs=[
                DSModel.Input("model", tooltip="The MODEL from Load Diffusers Model (or a LoRA node)."),
                io.Combo.Input(
                    "weight_storage",
                    options=mo.WEIGHT_STORAGES,
                    default=mo.STORAGE_DEFAULT,
                    tooltip="How the UNet's weights are stored. default: as loaded. float8_e4m3fn / "
                    "float8_e5m2: one byte per weight, computed in the model's precision (diffusers' "
                    "layerwise casting; small quality cost, e4m3fn is the more precise). int8: Linear "
                    "layers in int8 with one scale per output channel (needs torchao). nf4: Linear layers in "
                    "4 bits, one scale per 64 weights (needs bitsandbytes; CUDA or CPU). Convolutions keep "
                    "the model's precision with int8 and nf4.",
                ),
                io.Combo.Input(
                    "attention",
                    options=mo.ATTENTIONS,
                    default=mo.ATTENTION_AS_LOADED,
                    tooltip="Attention implementation for the run. as loaded: keep the model's. sdpa: "
                    "PyTorch scaled_dot_product_attention (fast, low memory). classic (no sdpa): plain "
                    "matmul and softmax, for comparison or debugging.",
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


NODES = [DSModelOptions]
