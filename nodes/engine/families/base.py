"""The family interface: the one object the engine asks about a model family.

SD1.x, SDXL and the SDXL refiner differ in small ways (one or two CLIP
encoders, pooled embeddings, size and aesthetic time ids); SD3 and Flux differ
in every stage (three or two encoders including T5, a transformer instead of a
UNet, flow matching, 16-channel latents with a shift factor, Flux's 2x2
packing). So the sampling loop, the text encoder, the loader, the nodes and
the A1111 translator never branch on a family name: they take the family of a
value (`families.of(model)`) and ask it. A family answers five questions:

* load: which diffusers folders a pipeline folder must hold, which text
  encoders (folder, class, tokenizer pad token) and which denoiser class, the
  bundled full-size configs for single files, and per-family checks;
* encode: how many encoders, what one encoder gives for one token window,
  whether long prompts are chunked and emphasis applies, pooled outputs,
  which micro-conditioning the prompt may carry (size, aesthetic score);
* predict: the denoiser's extra inputs for a CFG batch (`denoiser_inputs`)
  and one evaluation (`predict`), where the adapter hooks attach, which
  adapters apply at all (`adapter_refusal`);
* schedulers: which sampler names apply and the widget defaults;
* latent format: channels, scaling and shift factors, packing, previews.

`Family` holds the answers every family shares and the abstract points; the
UNet families share `unet.UNetFamily`. docs/families.md says what SD3 and
Flux will implement differently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..components import BASE, Conditioning, ModelBundle
from . import facts

# Adapter kinds a family may refuse (`Family.adapter_refusal`).
CONTROLNET = "controlnet"
IP_ADAPTER = "ip_adapter"
LORA = "lora"
REGIONAL = "regional"
INPAINT = "inpaint"


@dataclass(frozen=True)
class LatentFormat:
    """How a family's latents look on the LATENT socket and inside the denoiser.

    LATENT sockets hold the VAE's raw latents (ComfyUI's convention); the
    denoiser works on (latents - shift_factor) * scaling_factor, and a packed
    family (Flux: "2x2") turns 2x2 latent patches into tokens after that.
    `scaling_factor` / `shift_factor` are the defaults for a VAE whose config
    does not say; the loaded VAE's own values win (ModelBundle carries them).
    """

    channels: int
    scaling_factor: float
    shift_factor: float = 0.0
    downscale: int = 8
    packing: Optional[str] = None
    preview: str = "SD15"  # the comfy.latent_formats class used for previews
    native_size: int = 512  # the side the family was trained at


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder of a family, as a diffusers folder stores it."""

    folder: str  # "text_encoder", "text_encoder_2", ... in a pipeline folder
    tokenizer_folder: str
    encoder_class: str  # the transformers class, e.g. "CLIPTextModelWithProjection"
    # Single files bring no tokenizer: the pack builds a CLIP one from its
    # vocabulary; OpenCLIP bigG pads with "!" where CLIP-L pads with its EOS.
    pad_token: Optional[str] = None
    window: int = 77  # tokens the encoder sees at once (BOS + 75 + EOS for CLIP)
    # The key of this encoder's vectors in a textual-inversion file (A1111's
    # SDXL files hold "clip_l" and "clip_g"; SD1 files one tensor, read as clip_l).
    embedding_key: str = "clip_l"
    tokenizer_class: str = "CLIPTokenizer"  # the transformers tokenizer class of its folder
    # SD3's T5 may be left out of a folder (model_index lists it as null):
    # diffusers then conditions on zeros in its place.
    optional: bool = False


@dataclass
class DenoiserInputs:
    """Everything one denoiser call gets besides the latents and the timestep.

    `embeds` is the CFG-batched text sequence ([negative x B, positive x B]
    with CFG); `added_cond_kwargs` the UNet's added conditioning (SDXL's pooled
    text and time ids) or None; `timestep_cond` a guidance embedding (LCM-style
    UNets; Flux dev's distilled guidance goes here too); `do_cfg` whether the
    batch holds a negative half.
    """

    embeds: torch.Tensor
    added_cond_kwargs: Optional[dict]
    timestep_cond: Optional[torch.Tensor]
    do_cfg: bool


class Family:
    """The interface. One instance per family/variant, registered in `families`."""

    # ---- identity
    key: str = ""  # registry key: "sd1", "sdxl", "sdxl_refiner" (later "sd3", "flux")
    family: str = ""  # the `family` field of the socket values
    variant: str = BASE  # the `variant` field (REFINER for the SDXL refiner)
    label: str = ""  # long name, for messages: "Stable Diffusion XL refiner"
    short_label: str = ""  # "SD1.x", "SDXL", "SDXL refiner"
    log_name: str = ""  # lower-case name in logs and model labels: "sdxl refiner"

    # ---- load
    pipeline_classes: tuple = ()  # diffusers pipeline `_class_name`s of its folders
    denoiser_folder: str = "unet"
    denoiser_class: str = "UNet2DConditionModel"
    text_encoders: tuple = ()  # EncoderSlot per encoder, in encoding order

    @property
    def folder_components(self) -> tuple:
        """The component folders a diffusers pipeline folder of this family must hold."""
        names = [self.denoiser_folder, "vae"]
        for slot in self.text_encoders:
            if not slot.optional:
                names += [slot.folder, slot.tokenizer_folder]
        return tuple(names)

    def bundled_config(self, component: str) -> dict:
        """A fresh copy of the family's full-size config (configs/), for single files."""
        return facts.bundled_config(self.family, component, self.variant)

    def scheduler_config(self) -> dict:
        """The reference scheduler config, for a checkpoint that brings none."""
        return facts.scheduler_config(self.family)

    def keep_vae_float32(self, vae, dtype: torch.dtype) -> bool:
        """Whether the VAE stays float32 whatever the load dtype (SDXL's overflows in float16)."""
        return False

    def check_folder_denoiser(self, path: str, denoiser, text_encoders) -> None:
        """Refuse a folder whose denoiser does not fit the family's conditioning."""

    # ---- encode
    pooled: bool = False  # the conditioning carries a pooled embedding
    chunked: bool = True  # long prompts are cut into windows and concatenated (CLIP)
    emphasis: bool = True  # (word:1.2) weights apply
    size_conditioning: bool = False  # takes DSSDXLSizeConditioning's original size / crop
    target_size: bool = False  # ... and the target size
    aesthetic_score: bool = False  # takes an aesthetic score on the prompt (the SDXL refiner)
    guidance_embedding: bool = False  # takes a distilled guidance value on the prompt (Flux dev, DSFluxGuidance)
    prompt_syntax: str = ""  # one sentence for tooltips and docs

    # ---- regional prompts (engine/regional.py widens the denoiser batch with region rows)
    pooled_key: str = "text_embeds"  # the added_cond_kwargs entry holding each row's pooled prompt (SDXL)
    shared_cond_keys: tuple = ()  # added_cond_kwargs entries shared by all rows, not widened (Flux txt_ids)
    stretch_region_masks: bool = True  # a mask of another aspect ratio is stretched; False: refused

    def encode_prompt(self, bundle, text: str, *, clip_skip: int = 1, embeddings=None, **options):
        """The family's own prompt encoder, or None: the CLIP-window encoder (text_encoding) applies.

        The UNet families answer None; the transformer families (T5 sequences,
        joint CLIP + T5 embeddings) encode here.
        """
        return None

    def encoder_output(self, index: int, encoder, ids: torch.Tensor, clip_skip: int):
        """One encoder on one token window: (hidden states [1, window, D], pooled or None)."""
        raise NotImplementedError

    def check_conditioning(self, model: ModelBundle, cond: Conditioning, which: str, model_label: str) -> None:
        """Refuse a prompt whose tensors do not fit this model (family and variant already match)."""

    # ---- predict
    def check_latent(self, model: ModelBundle, latent: dict, samples: torch.Tensor, model_label: str) -> None:
        """Refuse a LATENT of the wrong shape for this model (channels, packing)."""
        raise NotImplementedError

    def denoiser_inputs(
        self, model: ModelBundle, positive: Conditioning, negative: Optional[Conditioning], cfg: float,
        batch: int, pixel_size: tuple[int, int], device: torch.device, **options,
    ) -> DenoiserInputs:
        """The text (and added) conditioning of one run, batched for CFG."""
        raise NotImplementedError

    def predict(self, model: ModelBundle, step) -> torch.Tensor:
        """One denoiser evaluation of a hooks.StepContext: the raw prediction, CFG batch and all."""
        raise NotImplementedError

    # Variants of the same family whose text encoders are this one's (FLUX.1 Fill takes dev's prompts).
    shared_text_variants: tuple = ()

    def adapter_refusal(self, kind: str) -> Optional[str]:
        """None when adapters of `kind` (CONTROLNET, IP_ADAPTER, ...) apply, else why not."""
        return None

    def refuse_adapter(self, kind: str, what: str) -> None:
        """Raise the family's own ValueError when `what` (an adapter input) does not apply to it at all.

        The SDXL refiner's refusals keep their adapter-specific wording at
        the adapters; a family whose whole model type has no adapter support
        yet (SD3, Flux) raises here, before any shape is looked at.
        """

    def from_noise_warning(self) -> Optional[str]:
        """A warning for a run that starts from pure noise, for families not made for it."""
        return None

    # ---- schedulers
    sampler_names: tuple = ()
    default_sampler: str = ""
    default_schedule: str = "normal"
    default_steps: int = 20
    default_cfg: float = 7.0

    def make_scheduler(self, model: ModelBundle, sampler_name: str, schedule: str, latent_size=None):
        """A fresh scheduler for one run (a flow family may shift by `latent_size`)."""
        raise NotImplementedError

    def img2img_start(self, steps: int, denoise: float) -> int:
        """The first step of an image-to-image run of `steps` at strength `denoise`.

        diffusers' UNet img2img pipelines keep int(steps * strength) steps;
        its flow-matching ones skip int(steps - steps * strength), which
        rounds the other way when steps * strength is not whole.
        """
        init_timestep = min(int(steps * denoise), steps)
        return max(steps - init_timestep, 0)

    # ---- latent format
    latent_format: LatentFormat = LatentFormat(channels=4, scaling_factor=0.18215)
    empty_latent_node: str = "EmptyLatentImage"  # ComfyUI's node making an empty latent of this family

    def to_model_space(self, model: ModelBundle, samples: torch.Tensor, device, dtype) -> torch.Tensor:
        """LATENT samples (raw VAE latents) -> the denoiser's space."""
        x = samples.to(device=device, dtype=dtype)
        shift = float(getattr(model, "latent_shift_factor", 0.0) or 0.0)
        if shift:
            x = x - shift
        return x * float(model.latent_scaling_factor)

    def from_model_space(self, model: ModelBundle, latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's latents -> LATENT samples (float32, CPU)."""
        out = latents / float(model.latent_scaling_factor)
        shift = float(getattr(model, "latent_shift_factor", 0.0) or 0.0)
        if shift:
            out = out + shift
        return out.to(device="cpu", dtype=torch.float32)

    def __repr__(self) -> str:
        return f"<family {self.key}>"
