"""IP-Adapter nodes: load an adapter with its image encoder, encode, apply (stackable)."""
from __future__ import annotations

import os

from comfy_api.latest import io

from . import comfy_bridge, weights_dtype
from .engine.image_encoder import load_image_encoder
from .engine.ip_adapter import WEIGHT_MODES, apply_ip_adapter
from .engine.ip_adapter_loading import load_ip_adapter
from .engine.loading import resolve_dtype
from .types import DSImageEmbeds, DSIPAdapter, DSModel, category

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".bin")
ENCODER_SUFFIXES = (".safetensors", ".sft")


def _is_transformers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


IP_ADAPTERS = comfy_bridge.ModelFolder("ipadapter", "ipadapter_file", WEIGHT_SUFFIXES, None, "IP-Adapter")
IMAGE_ENCODERS = comfy_bridge.ModelFolder(
    "clip_vision", "clip_vision", ENCODER_SUFFIXES, _is_transformers_folder, "CLIP or SigLIP vision image encoder"
)
IP_ADAPTERS.register()  # ComfyUI 0.3.75 has no models/ipadapter entry (IPAdapter_plus adds the same)


def ipadapter_names() -> list[str]:
    return IP_ADAPTERS.names()


def clip_vision_names() -> list[str]:
    return IMAGE_ENCODERS.names()


def resolve_ipadapter_path(name: str) -> str:
    return IP_ADAPTERS.path(name)


# -------------------------------------------------------------------- nodes
class DSLoadIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSLoadIPAdapter",
            display_name="Load IP-Adapter",
            category=category("ip_adapter"),
            description=(
                "Loads IP-Adapter weights from models/ipadapter together with the vision encoder they were "
                "trained with, from models/clip_vision: h94 releases (base, plus, plus-face, full-face) for "
                "SD1.5 and SDXL, XLabs' Flux.1 IP-Adapter (with CLIP ViT-L/14) and InstantX's SD3.5-Large "
                "IP-Adapter (with SigLIP so400m-patch14-384). The variant and the model family are read from the "
                "file. Offline."
            ),
            inputs=[
                io.Combo.Input(
                    "ipadapter_file",
                    options=ipadapter_names(),
                    tooltip="The adapter file in models/ipadapter, e.g. ip-adapter_sd15.safetensors, "
                    "ip-adapter-plus_sd15.safetensors, ip-adapter-plus-face_sd15.safetensors, "
                    "ip-adapter_sdxl.safetensors, XLabs' Flux.1 ip_adapter.safetensors (renamed e.g. "
                    "flux-ip-adapter.safetensors) or InstantX's SD3.5-Large ip-adapter.bin (renamed e.g. "
                    "sd35-large-ip-adapter.bin). .bin files load only if they hold nothing but tensors.",
                ),
                io.Combo.Input(
                    "clip_vision",
                    options=clip_vision_names(),
                    tooltip="The image encoder in models/clip_vision: CLIP-ViT-H-14 for the SD1.5 and *_vit-h "
                    "adapters, CLIP-ViT-bigG-14 for ip-adapter_sdxl, CLIP ViT-L/14 (clip-vit-large-patch14) for the "
                    "Flux.1 adapter, SigLIP (google/siglip-so400m-patch14-384) for the SD3.5 adapter. A single "
                    ".safetensors or a transformers folder.",
                ),
                weights_dtype.dtype_input(),
            ],
            outputs=[
                DSIPAdapter.Output(
                    display_name="IP_ADAPTER",
                    tooltip="The adapter and its image encoder, for Apply IP-Adapter and Encode IP-Adapter Image.",
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, ipadapter_file: str, clip_vision: str, dtype: str) -> bool | str:
        if ipadapter_file not in ipadapter_names():
            return IP_ADAPTERS.unknown_message(ipadapter_file)
        if clip_vision not in clip_vision_names():
            return IMAGE_ENCODERS.unknown_message(clip_vision)
        return weights_dtype.check_dtype(dtype)

    @classmethod
    def execute(cls, ipadapter_file: str, clip_vision: str, dtype: str = "auto") -> io.NodeOutput:
        torch_dtype = resolve_dtype(weights_dtype.resolve(dtype), comfy_bridge.compute_device())
        encoder = load_image_encoder(IMAGE_ENCODERS.path(clip_vision), name=clip_vision, dtype=torch_dtype)
        adapter = load_ip_adapter(resolve_ipadapter_path(ipadapter_file), encoder, name=ipadapter_file,
                                  dtype=torch_dtype)
        return io.NodeOutput(adapter)


def _window_inputs() -> list:
    return [
        io.Float.Input(
            "weight", default=1.0, min=-1.0, max=3.0, step=0.05,
            tooltip="How strongly the reference image steers the result (diffusers' IP-Adapter scale). "
            "0.5-0.8 keeps more of the prompt; 1 follows the image closely.",
        ),
        io.Float.Input(
            "start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
            tooltip="Fraction of the schedule at which the image prompt starts acting (0 = from the first step).",
        ),
        io.Float.Input(
            "end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
            tooltip="Fraction of the schedule after which it stops (1 = to the last step). Ending early "
            "keeps the layout from the image and leaves details to the prompt.",
        ),
        io.Combo.Input(
            "weight_mode", options=list(WEIGHT_MODES), default="standard",
            tooltip="SDXL only: standard acts on every layer; style only on the style block "
            "(up_blocks.0.attentions.1), composition only on the layout block (down_blocks.2.attentions.1), "
            "as InvokeAI's and IPAdapter_plus's modes. SD1.x, Flux.1 and SD3 models take standard.",
        ),
        io.Mask.Input(
            "mask", optional=True,
            tooltip="Where the image prompt acts (white = here): a regional reference image. Resized to the "
            "image (on Flux.1 / SD3, to the transformer's token grid); an empty mask turns the adapter off (with a "
            "warning). Leave unconnected for the whole image.",
        ),
    ]


def _check_apply_inputs(weight_mode: str, start_percent: float, end_percent: float) -> bool | str:
    """validate_inputs of both Apply nodes (images or embeds)."""
    if weight_mode not in WEIGHT_MODES:
        return f"weight_mode: '{weight_mode}' is not one of {list(WEIGHT_MODES)}."
    return _check_window(start_percent, end_percent)


def _check_window(start_percent: float, end_percent: float) -> bool | str:
    if start_percent > end_percent:
        return (f"start_percent ({start_percent}) must not be above end_percent ({end_percent}): "
                "the image prompt acts from start_percent to end_percent of the schedule.")
    return True


class DSApplyIPAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSApplyIPAdapter",
            display_name="Apply IP-Adapter",
            category=category("ip_adapter"),
            description=(
                "Adds an image prompt to the model: the sampler then follows the reference image's style or "
                "subject as well as the text. Returns a new model (the input is unchanged); chain several to "
                "stack adapters. SD1.x, SDXL, Flux.1 (XLabs adapter) and SD3.5 (InstantX adapter). Equals "
                "diffusers' load_ip_adapter + set_ip_adapter_scale (FluxPipeline's / StableDiffusion3Pipeline's "
                "on Flux.1 / SD3)."
            ),
            inputs=[
                DSModel.Input("model", tooltip="The MODEL from Load Diffusers Model (or another Apply node)."),
                DSIPAdapter.Input("ip_adapter", tooltip="The adapter from Load IP-Adapter, for the model's family."),
                io.Image.Input(
                    "image",
                    tooltip="The reference picture(s). A batch of several acts as one prompt made of all of "
                    "them. Encoding the same picture again is cached.",
                ),
                *_window_inputs(),
                io.Image.Input(
                    "negative_image", optional=True,
                    tooltip="What the negative prompt's side of CFG sees instead of the default (no image for "
                    "SD1.x/SDXL/SD3, a black picture on Flux.1, as diffusers): diffusers' negative_ip_adapter_image. "
                    "Acts only when CFG runs the negative prompt (Flux.1: cfg above 1). One picture, or one per "
                    "reference picture.",
                ),
            ],
            outputs=[DSModel.Output(display_name="MODEL", tooltip="The model with the image prompt, for DSSampler.")],
        )

    @classmethod
    def validate_inputs(cls, weight_mode: str, start_percent: float, end_percent: float) -> bool | str:
        return _check_apply_inputs(weight_mode, start_percent, end_percent)

    @classmethod
    def execute(cls, model, ip_adapter, image, weight: float = 1.0, start_percent: float = 0.0,
                end_percent: float = 1.0, weight_mode: str = "standard", mask=None,
                negative_image=None) -> io.NodeOutput:
        patched = apply_ip_adapter(
            model, ip_adapter, images=image, weight=weight, start_percent=start_percent, end_percent=end_percent,
            mask=mask, weight_mode=weight_mode, prepare=comfy_bridge.load_to_compute_device,
            negative_images=negative_image,
        )
        return io.NodeOutput(patched)


class DSEncodeIPAdapterImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSEncodeIPAdapterImage",
            display_name="Encode IP-Adapter Image",
            category=category("ip_adapter"),
            description=(
                "Encodes reference pictures once into image embeddings for an IP-Adapter, so a face or a "
                "style can be reused in many workflows (Apply IP-Adapter Embeds) without the pictures."
            ),
            inputs=[
                DSIPAdapter.Input("ip_adapter", tooltip="The adapter whose image encoder and variant to encode for."),
                io.Image.Input("image", tooltip="The reference picture(s); a batch encodes all of them."),
            ],
            outputs=[
                DSImageEmbeds.Output(
                    display_name="IMAGE_EMBEDS",
                    tooltip="The encoded pictures (and the unconditional encoding CFG needs), for Apply "
                    "IP-Adapter Embeds with an adapter of the same kind.",
                )
            ],
        )

    @classmethod
    def execute(cls, ip_adapter, image) -> io.NodeOutput:
        from .engine.image_encoder import encode_images

        embeds = encode_images(ip_adapter.encoder, image, ip_adapter.kind,
                               prepare=comfy_bridge.load_to_compute_device,
                               negative_picture=ip_adapter.negative_picture,
                               zero_negative=ip_adapter.zero_negative)
        return io.NodeOutput(embeds)


class DSApplyIPAdapterEmbeds(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSApplyIPAdapterEmbeds",
            display_name="Apply IP-Adapter Embeds",
            category=category("ip_adapter"),
            description=(
                "Apply IP-Adapter from image embeddings made by Encode IP-Adapter Image instead of pictures. "
                "Returns a new model; chain several to stack adapters."
            ),
            inputs=[
                DSModel.Input("model", tooltip="The MODEL from Load Diffusers Model (or another Apply node)."),
                DSIPAdapter.Input("ip_adapter", tooltip="The adapter from Load IP-Adapter, for the model's family."),
                DSImageEmbeds.Input(
                    "image_embeds",
                    tooltip="Embeddings from Encode IP-Adapter Image, made with an adapter of the same kind "
                    "(base embeds for base adapters, plus/face embeds for plus and face adapters).",
                ),
                *_window_inputs(),
            ],
            outputs=[DSModel.Output(display_name="MODEL", tooltip="The model with the image prompt, for DSSampler.")],
        )

    @classmethod
    def validate_inputs(cls, weight_mode: str, start_percent: float, end_percent: float) -> bool | str:
        return _check_apply_inputs(weight_mode, start_percent, end_percent)

    @classmethod
    def execute(cls, model, ip_adapter, image_embeds, weight: float = 1.0, start_percent: float = 0.0,
                end_percent: float = 1.0, weight_mode: str = "standard", mask=None) -> io.NodeOutput:
        patched = apply_ip_adapter(
            model, ip_adapter, embeds=image_embeds, weight=weight, start_percent=start_percent,
            end_percent=end_percent, mask=mask, weight_mode=weight_mode, prepare=comfy_bridge.load_to_compute_device,
        )
        return io.NodeOutput(patched)


NODES = [DSLoadIPAdapter, DSApplyIPAdapter, DSEncodeIPAdapterImage, DSApplyIPAdapterEmbeds]
