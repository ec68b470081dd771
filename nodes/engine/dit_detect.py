"""What a diffusion-transformer (Flux.1 / SD3) file is, from its tensor names and shapes.

Only the safetensors header is read (see `single_file.read_header`): no tensor
data, no hub. The facts used, all visible in the released files:

* family: Flux.1 has double/single stream blocks (`double_blocks.*`,
  `single_blocks.*`; diffusers: `single_transformer_blocks.*`); SD3/SD3.5
  has joint blocks (`joint_blocks.*`; diffusers: `transformer_blocks.*` next
  to a `pos_embed.pos_embed` grid).
* Flux variant: dev has a guidance embedder (`guidance_in.*`), schnell has
  none. The input width against the output width tells the rest: equal for
  dev/schnell, 2x for the control models (Depth/Canny: latent + control
  latent), 2x + 256 for Fill (latent + masked-image latent + the 8x8 mask
  packed 2x2: 64 + 64 + 256 = 384 for the real model). These ratios hold for
  test-scale models too, so tiny exports take the same path.
* SD3 variant: SD3.5 medium (MMDiT-X) has a second self-attention in the
  image stream of its first blocks (`x_block.attn2.*`); SD3.5 large has
  RMS qk-norm (`attn.ln_q`) and no attn2; SD3 medium has neither. The depth
  (24 / 24 / 38 joint blocks) is read from the shapes, not assumed.
* layout: BFL/Stability original names at the top level, the same under
  ComfyUI's `model.diffusion_model.` prefix (all-in-one checkpoints, which also
  carry `text_encoders.clip_l|clip_g|t5xxl.transformer.*` and a
  `first_stage_model.*` VAE), or diffusers names (a transformer folder's
  `diffusion_pytorch_model.safetensors`).
* text encoders and VAEs of the split layout: a T5 has `encoder.block.*`, a
  CLIP tower `text_model.*` (CLIP-L 768 wide, OpenCLIP bigG 1280), an
  autoencoder `encoder.conv_in` + `decoder.conv_out`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .components import BASE
from .families import ModelLoadError
from .single_file import Header, _looks_like, label

FLUX = "flux"
SD3 = "sd3"

# Flux variants
DEV = "dev"
SCHNELL = "schnell"
FILL = "fill"
CONTROL = "control"  # FLUX.1 Depth/Canny dev: latent + control latent in
# SD3 variants
SD3_MEDIUM = "sd3_medium"
SD35_MEDIUM = "sd35_medium"
SD35_LARGE = "sd35_large"

# Key layouts of a transformer
ORIGINAL = "original"  # BFL (Flux) / Stability (SD3) names at the top level
COMFYUI = "comfyui"  # the same names under model.diffusion_model.
DIFFUSERS = "diffusers"

COMFY_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
ENCODER_PREFIXES = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}

VARIANT_LABELS = {
    (FLUX, DEV): "FLUX.1 dev",
    (FLUX, SCHNELL): "FLUX.1 schnell",
    (FLUX, FILL): "FLUX.1 Fill dev",
    (FLUX, CONTROL): "FLUX.1 Depth/Canny dev",
    (SD3, SD3_MEDIUM): "Stable Diffusion 3 medium",
    (SD3, SD35_MEDIUM): "Stable Diffusion 3.5 medium",
    (SD3, SD35_LARGE): "Stable Diffusion 3.5 large",
}

# Shipped configs (nodes/engine/configs/<folder>/transformer.json, scheduler_config.json).
CONFIG_FOLDERS = {
    (FLUX, DEV): "flux_dev",
    (FLUX, SCHNELL): "flux_schnell",
    (FLUX, FILL): "flux_fill",
    (FLUX, CONTROL): "flux_dev",  # dev's config; its input width is read from the file
    (SD3, SD3_MEDIUM): "sd3_medium",
    (SD3, SD35_MEDIUM): "sd35_medium",
    (SD3, SD35_LARGE): "sd35_large",
}

DIT_SUMMARY = (
    "Supported diffusion transformers: FLUX.1 dev / schnell / Fill / Canny dev / Depth dev and SD3 medium / "
    "SD3.5 medium / "
    "SD3.5 large, as an all-in-one .safetensors checkpoint (ComfyUI layout), or as a transformer file "
    "(models/diffusion_models or models/unet; BFL, ComfyUI or diffusers key names) plus text encoders "
    "(models/text_encoders: clip_l, clip_g for SD3, t5xxl) and a VAE (models/vae: ae.safetensors)."
)


@dataclass(frozen=True)
class TransformerInfo:
    """What a transformer's weights are: family, variant, key layout, where they sit."""

    family: str
    variant: str
    layout: str
    prefix: str  # the key prefix the transformer's tensors carry ("" or model.diffusion_model.)
    depth: int  # double blocks (Flux) / joint blocks (SD3)

    @property
    def label(self) -> str:
        return VARIANT_LABELS[(self.family, self.variant)]

    @property
    def config_folder(self) -> str:
        return CONFIG_FOLDERS[(self.family, self.variant)]

    @property
    def registry_variant(self) -> str:
        """The variant the families registry knows this model by: SD3's sizes share one
        family object (BASE); Flux's variants are their own (dev, schnell, ...)."""
        return BASE if self.family == SD3 else self.variant


@dataclass(frozen=True)
class CheckpointInfo:
    """An all-in-one file: its transformer, and the prefixes of what else it carries."""

    transformer: TransformerInfo
    vae_prefix: Optional[str]
    encoder_prefixes: dict = field(default_factory=dict)  # role (clip_l, clip_g, t5xxl) -> prefix


def _indices(keys, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in keys if (m := rx.match(k))}


def _describe_other(header: Header) -> str:
    """What a file that is no Flux/SD3 transformer looks like, for messages."""
    what = _looks_like(header)
    return what or "a Stable Diffusion 1.x/SDXL checkpoint (UNet, model.diffusion_model.input_blocks.*)"


def detect_transformer(header: Header, *, role: str = "transformer") -> TransformerInfo:
    """Family, variant and layout of the transformer in `header`; ModelLoadError otherwise.

    role: how messages name the file's slot ("transformer" for a split file,
    "checkpoint" for an all-in-one file).
    """
    name = label(header.path)
    shapes = header.shapes
    prefix = COMFY_PREFIX if any(k.startswith(COMFY_PREFIX) for k in shapes) else ""
    own = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    layout = COMFYUI if prefix else ORIGINAL

    if any(k.startswith(("controlnet_blocks.", "controlnet_x_embedder.", "pos_embed_input.")) for k in own):
        # ControlNets share the transformer's block names; without this they read as a damaged transformer.
        raise ModelLoadError(
            f"{role.capitalize()} file {name!r} is a Flux / SD3 ControlNet, not a {role}: put it in "
            "models/controlnet and load it with Load Diffusers ControlNet, and select a FLUX.1 / SD3 "
            f"{role} here (for example flux1-dev.safetensors or sd3.5_large.safetensors)."
        )
    if "double_blocks.0.img_attn.qkv.weight" in own or "single_blocks.0.linear1.weight" in own:
        return _flux(name, own, layout, prefix, original=True)
    if "joint_blocks.0.x_block.attn.qkv.weight" in own:
        return _sd3(name, own, layout, prefix, original=True)
    if "single_transformer_blocks.0.attn.to_q.weight" in own or "x_embedder.weight" in own:
        return _flux(name, own, DIFFUSERS, prefix, original=False)
    if "pos_embed.pos_embed" in own and "transformer_blocks.0.attn.to_q.weight" in own:
        return _sd3(name, own, DIFFUSERS, prefix, original=False)
    raise ModelLoadError(
        f"{role.capitalize()} file {name!r} is not a FLUX.1 or SD3 transformer: it looks like "
        f"{_describe_other(header)}. Select a Flux/SD3 transformer file (for example "
        "flux1-dev.safetensors or sd3.5_large.safetensors) or load an SD1.x/SDXL file with the "
        "checkpoint loader. " + DIT_SUMMARY
    )


def _need(own: dict, key: str, name: str, what: str) -> tuple:
    if key not in own:
        raise ModelLoadError(
            f"Transformer file {name!r} looks like {what} but has no {key!r}: the file is incomplete or "
            "damaged. Download or convert it again."
        )
    return own[key]


def _flux(name: str, own: dict, layout: str, prefix: str, *, original: bool) -> TransformerInfo:
    if original:
        x_in, x_out = "img_in.weight", "final_layer.linear.weight"
        guidance = "guidance_in.in_layer.weight"
        depth = len(_indices(own, r"double_blocks\.(\d+)\."))
    else:
        x_in, x_out = "x_embedder.weight", "proj_out.weight"
        guidance = "time_text_embed.guidance_embedder.linear_1.weight"
        depth = len(_indices(own, r"transformer_blocks\.(\d+)\."))
    in_width = int(_need(own, x_in, name, "a FLUX.1 transformer")[1])
    out_width = int(_need(own, x_out, name, "a FLUX.1 transformer")[0])
    if guidance not in own:
        variant = SCHNELL
    elif in_width == out_width:
        variant = DEV
    elif in_width == 2 * out_width:
        variant = CONTROL
    elif in_width == 2 * out_width + 256:
        variant = FILL
    else:
        raise ModelLoadError(
            f"Transformer file {name!r} is a FLUX.1 transformer with a {in_width}-wide input for "
            f"{out_width}-wide latents, which matches no FLUX.1 variant Diffusers Studio knows "
            "(dev/schnell: equal, Depth/Canny: 2x, Fill: 2x + 256). " + DIT_SUMMARY
        )
    if variant == SCHNELL and in_width != out_width:
        raise ModelLoadError(
            f"Transformer file {name!r} is a FLUX.1 transformer without a guidance embedder but with a "
            f"{in_width}-wide input for {out_width}-wide latents; no schnell variant has that. " + DIT_SUMMARY
        )
    return TransformerInfo(FLUX, variant, layout, prefix, depth)


def _sd3(name: str, own: dict, layout: str, prefix: str, *, original: bool) -> TransformerInfo:
    if original:
        blocks = _indices(own, r"joint_blocks\.(\d+)\.")
        attn2 = any(".x_block.attn2." in k for k in own)
        qk_norm = any(k.endswith("x_block.attn.ln_q.weight") for k in own)
    else:
        blocks = _indices(own, r"transformer_blocks\.(\d+)\.")
        attn2 = any(".attn2." in k for k in own)
        qk_norm = any(k.endswith(".attn.norm_q.weight") for k in own)
    if attn2:
        variant = SD35_MEDIUM
    elif qk_norm:
        variant = SD35_LARGE
    else:
        variant = SD3_MEDIUM
    return TransformerInfo(SD3, variant, layout, prefix, len(blocks))


def detect_checkpoint(header: Header) -> CheckpointInfo:
    """An all-in-one file: the transformer plus whichever encoders and VAE it carries."""
    transformer = detect_transformer(header, role="checkpoint")
    vae_prefix = next((p for p in VAE_PREFIXES if header.has_prefix(p + "decoder.")), None)
    encoders = {role: p for role, p in ENCODER_PREFIXES.items() if header.has_prefix(p)}
    return CheckpointInfo(transformer, vae_prefix, encoders)


# ------------------------------------------------------------ split files

CLIP_L_HIDDEN = 768
CLIP_G_HIDDEN = 1280


@dataclass(frozen=True)
class EncoderInfo:
    """One text-encoder file of the split layout."""

    path: str
    kind: str  # "clip" or "t5"
    prefix: str  # where the HF-layout keys start ("" or e.g. text_encoders.clip_l.transformer.)
    width: int  # hidden size (CLIP) / d_model (T5)


def detect_encoder(header: Header) -> EncoderInfo:
    """Whether a text-encoder file is a CLIP tower or a T5 encoder, from its keys.

    Which CLIP it is (L or bigG) depends on the other files of the set; see
    `assign_clip_roles`.
    """
    name = label(header.path)
    for prefix in ("", *ENCODER_PREFIXES.values()):
        own = header.with_prefix(prefix)
        if "encoder.block.0.layer.0.SelfAttention.q.weight" in own:
            width = own.get("shared.weight", own.get("encoder.embed_tokens.weight", (0, 0)))[1]
            return EncoderInfo(header.path, "t5", prefix, int(width))
        for token in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"):
            if token in own:
                return EncoderInfo(header.path, "clip", prefix, int(own[token][1]))
    if header.has_prefix("transformer.resblocks.") or header.has_prefix("token_embedding."):
        raise ModelLoadError(
            f"Text encoder file {name!r} is an OpenCLIP-layout text tower (transformer.resblocks.*). "
            "Diffusers Studio reads CLIP encoders in the Hugging Face layout (text_model.*), as ComfyUI's "
            "clip_l.safetensors / clip_g.safetensors ship: select one of those."
        )
    raise ModelLoadError(
        f"Text encoder file {name!r} is neither a CLIP text encoder nor a T5 encoder: it looks like "
        f"{_describe_other(header)}. Select clip_l.safetensors, clip_g.safetensors or a t5xxl file "
        "from models/text_encoders."
    )


def assign_clip_roles(clips: list[EncoderInfo]) -> dict[str, EncoderInfo]:
    """{"clip_l": ..., "clip_g": ...} from CLIP files, by width.

    The real towers are 768 (CLIP-L) and 1280 (bigG) wide. Two files: the
    narrower is CLIP-L (also at test scale). One file: bigG when 1280 wide,
    CLIP-L otherwise.
    """
    if not clips:
        return {}
    ordered = sorted(clips, key=lambda c: c.width)
    if len(ordered) == 1:
        role = "clip_g" if ordered[0].width == CLIP_G_HIDDEN else "clip_l"
        return {role: ordered[0]}
    if len(ordered) > 2 or ordered[0].width == ordered[1].width:
        names = ", ".join(repr(label(c.path)) for c in ordered)
        raise ModelLoadError(
            f"Text encoder files {names}: expected at most one CLIP-L (768 wide) and one CLIP-G (1280 wide) "
            "file, but these widths repeat. Select clip_l.safetensors and, for SD3, clip_g.safetensors once each."
        )
    return {"clip_l": ordered[0], "clip_g": ordered[1]}


def detect_vae(header: Header) -> tuple[str, bool]:
    """(key prefix, diffusers layout?) of an autoencoder file; ModelLoadError otherwise.

    The original layout (encoder.down.*, as ae.safetensors ships) and the
    diffusers one (encoder.down_blocks.*, a vae folder's
    diffusion_pytorch_model.safetensors saved under another name) both occur.
    """
    for prefix in ("", *VAE_PREFIXES):
        if header.has_prefix(prefix + "encoder.conv_in.") and header.has_prefix(prefix + "decoder.conv_out."):
            return prefix, header.has_prefix(prefix + "encoder.down_blocks.")
    name = label(header.path)
    raise ModelLoadError(
        f"VAE file {name!r} is not an autoencoder (no encoder.conv_in / decoder.conv_out weights): it looks like "
        f"{_describe_other(header)}. Select ae.safetensors (FLUX.1) or the SD3 VAE from models/vae."
    )
