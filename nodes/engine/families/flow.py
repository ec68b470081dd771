"""What the flow-matching transformer families (SD3 / SD3.5, Flux.1) share.

Both predict a velocity with a diffusion transformer, sample with
FlowMatchEulerDiscreteScheduler, keep 16-channel latents with a shift factor
and condition on a T5 sequence plus a pooled CLIP embedding. This module
holds the parts the loop needs to stay family-blind:

* `FlowScheduler`: the flow scheduler behind the loop's scheduler contract
  (`set_timesteps(steps)` sets the pipeline's sigmas and shift,
  `add_noise` is `scale_noise`, `scale_model_input` is the identity,
  `init_noise_sigma` is 1), so img2img, partial runs and denoise work as for
  the UNets;
* `FlowFamily`: sampler names, img2img rounding, adapter refusals, the
  one-window prompt rule and the CLIP / T5 calls as diffusers' pipelines
  make them.

Prompt syntax: the pipelines give CLIP its first 77 tokens and T5
`max_sequence_length` tokens, one window each (window_prompt.py): (word:1.2)
emphasis weights tokens inside the window, BREAK is removed with a warning
(there are no chunks), a prompt longer than a window is cut with a warning,
as diffusers does.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..components import Conditioning, ModelBundle
from ..window_prompt import WindowPrompt, prompt_ids
from .base import CONTROLNET, IP_ADAPTER, LORA, REGIONAL, Family

logger = logging.getLogger(__name__)

ADAPTER_WORDS = {
    CONTROLNET: "ControlNet", IP_ADAPTER: "IP-Adapter", REGIONAL: "a regional prompt", LORA: "LoRA",
}
EULER = "Euler"
FLOW_SAMPLERS = (EULER,)
FLOW_SCHEDULES = ("normal", "karras", "exponential", "beta")
_SIGMA_FLAGS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas", "beta": "use_beta_sigmas"}


def calculate_shift(image_seq_len: int, config: dict, default_max_shift: float) -> float:
    """diffusers' calculate_shift: mu grows linearly with the number of image tokens."""
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base_shift = config.get("base_shift", 0.5)
    max_shift = config.get("max_shift", default_max_shift)
    m = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * m + (base_shift - m * base_len)


class FlowScheduler:
    """FlowMatchEulerDiscreteScheduler under the contract the sampling loop uses.

    `sigmas(steps)` gives the pipeline's explicit sigmas (Flux: a linspace
    from 1 to 1/steps) or None (SD3: the scheduler's own); `mu` is the
    resolution-dependent shift, used by the scheduler when its config has
    use_dynamic_shifting.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, inner, sigmas=None, mu: Optional[float] = None):
        self.inner = inner
        self._sigmas = sigmas
        self._mu = mu

    @property
    def config(self):
        return self.inner.config

    @property
    def timesteps(self) -> torch.Tensor:
        return self.inner.timesteps

    def set_timesteps(self, steps: int, device=None) -> None:
        kwargs = {} if self._mu is None else {"mu": self._mu}
        sigmas = self._sigmas(steps) if self._sigmas is not None else None
        if sigmas is None:
            self.inner.set_timesteps(steps, device=device, **kwargs)
        else:  # as retrieve_timesteps(sigmas=...): the count comes from the sigmas
            self.inner.set_timesteps(sigmas=sigmas, device=device, **kwargs)

    def set_begin_index(self, index: int) -> None:
        self.inner.set_begin_index(index)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        return sample

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Flow matching mixes linearly: sigma * noise + (1 - sigma) * x (scale_noise)."""
        return self.inner.scale_noise(original, timesteps, noise)

    def step(self, model_output, timestep, sample, **kwargs):
        return self.inner.step(model_output, timestep, sample, **kwargs)


class FlowFamily(Family):
    """A flow-matching diffusion transformer family (SD3, Flux)."""

    denoiser_folder = "transformer"
    chunked = False
    emphasis = False
    pooled = True
    sampler_names = FLOW_SAMPLERS
    default_sampler = EULER
    default_cfg = 1.0
    empty_latent_node = "EmptySD3LatentImage"  # ComfyUI's 16-channel empty latent
    default_max_shift = 1.15  # calculate_shift's default in the family's pipeline
    pooled_key = "pooled_projections"  # regional prompts give each region row its own pooled prompt
    stretch_region_masks = False  # a regional mask of another aspect ratio is refused (regional.py)
    prompt_syntax = (
        "Plain text: T5 reads natural language; (word:1.2) emphasis and BREAK are removed with a warning, "
        "CLIP sees the first 75 tokens and T5 up to max_sequence_length tokens (the rest is cut with a warning)."
    )

    # ---- load
    def folder_variant(self, path: str) -> str:
        """The variant of a diffusers folder of this family (Flux reads its transformer config)."""
        return self.variant

    # ---- encode
    def check_text_bundle(self, bundle, text, embeddings=None) -> None:
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        if embeddings is not None and embeddings.names:
            from ..embeddings import Embedding

            named = [p.name for p in embeddings.split(text) if isinstance(p, Embedding)]
            if named:
                logger.warning(
                    "%s prompts take no textual-inversion embeddings (they are CLIP vectors of SD1/SDXL): "
                    "%s read as plain words", self.short_label, ", ".join(named),
                )
        foreign = [p for p in bundle.patches if not getattr(p, "transformer_ready", False)]
        if foreign:
            raise ValueError(
                f"text_encoder: {self.label} text encoders take only LoRA patches (the text encoder carries "
                f"{', '.join(type(p).__name__ for p in foreign)}); connect the TEXT_ENCODER of Load Diffusers "
                "Model or of Load Diffusers LoRA"
            )

    def clip_skip_layer(self, clip_skip: int, encoder) -> int:
        """hidden_states index for clip_skip (1 = penultimate, as diffusers' clip_skip=None)."""
        layers = int(encoder.config.num_hidden_layers)
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip < layers:
            raise ValueError(
                f"clip_skip: got {clip_skip!r}; use an integer from 1 (the penultimate layer, "
                f"{self.short_label}'s default) to {layers - 1}"
            )
        return -(clip_skip + 1)

    @staticmethod
    def t5_sequence(tokenizer, encoder, prompt: WindowPrompt, length: int) -> torch.Tensor:
        """T5's last hidden states of the prompt padded to `length` tokens ([1, length, D]), emphasis applied."""
        from ..text_encoding import apply_emphasis, encoder_device

        ids, weights = prompt_ids(tokenizer, prompt, length, "T5")
        hidden = encoder(ids.to(encoder_device(encoder)))[0]
        return hidden if weights is None else apply_emphasis(hidden, weights)

    def check_max_sequence_length(self, value: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 512:
            raise ValueError(
                f"max_sequence_length: got {value!r}; T5 takes 1 to 512 tokens "
                f"({self.short_label} default: {self.default_max_sequence_length})"
            )
        return value

    default_max_sequence_length = 256

    # ---- predict
    def denoiser_config(self, model: ModelBundle):
        return model.denoiser.config

    def latent_multiple(self, model: ModelBundle) -> int:
        """Latent sides must be a multiple of this (SD3: the patch size, Flux: 2 for packing)."""
        return int(getattr(self.denoiser_config(model), "patch_size", 1) or 1)

    def expected_channels(self, model: ModelBundle) -> int:
        """Channels of the LATENT this model samples (unpacked, without inpainting extras)."""
        return int(self.denoiser_config(model).in_channels)

    def input_channels(self, model: ModelBundle) -> int:
        """Channels the denoiser takes per latent pixel, inpainting extras included (unpacked)."""
        return self.expected_channels(model)

    def check_latent(self, model: ModelBundle, latent: dict, samples: torch.Tensor, model_label: str) -> None:
        refusal = None
        foreign = [h for h in latent.get("ds_hooks") or () if not getattr(h, "flow_inpaint", False)]
        if foreign:
            kinds = ", ".join(sorted({type(h).__name__ for h in foreign}))
            refusal = f"a latent carrying {kinds} (made for an SD1.x / SDXL model)"
        elif any(not getattr(patch, "transformer_ready", False) for patch in model.patches):
            # LoRA patches (transformer_ready) merge into the transformer's weights and apply as they are;
            # the model options' attention and compile hooks know the flow transformers too.
            kinds = ", ".join(sorted({type(p).__name__ for p in model.patches if not getattr(p, "transformer_ready", False)}))
            refusal = f"a patched model ({kinds}: IP-Adapter)"
        if refusal:
            raise ValueError(
                f"{model_label} is {self.label}: {refusal} is not supported for it yet. "
                "Sample without it, or use an SD1.x / SDXL model for this workflow"
            )
        channels, expected = int(samples.shape[1]), self.expected_channels(model)
        if channels != expected:
            hint = " (Empty Latent Image makes 4; use EmptySD3LatentImage)" if channels == 4 else ""
            raise ValueError(
                f"latent_image has {channels} channels, {model_label} expects {expected}{hint}: encode the "
                "image with this model's VAE or make an empty 16-channel latent"
            )
        multiple = self.latent_multiple(model)
        h, w = int(samples.shape[-2]), int(samples.shape[-1])
        if h % multiple or w % multiple:
            step = multiple * model.vae_scale_factor
            raise ValueError(
                f"latent_image is {h}x{w} latent pixels; {model_label} needs multiples of {multiple} "
                f"(image sides that are multiples of {step}): resize the image or the empty latent"
            )

    def check_conditioning(self, model: ModelBundle, cond: Conditioning, which: str, model_label: str) -> None:
        # DiT ControlNets (controlnet_dit.py) and regional prompts (regional.py) say which families they serve.
        extras = [e for e in cond.extras if self.family not in getattr(e, "serves_families", ())]
        if extras:
            raise ValueError(
                f"{which} conditioning carries {len(extras)} extra(s) made for SD1.x/SDXL (a ControlNet, "
                f"an IP-Adapter): {model_label} is {self.label}, which takes none of these yet. "
                "Connect the Diffusers Text Encode output directly, or apply a ControlNet made for "
                f"{self.short_label}"
            )
        config = self.denoiser_config(model)
        width = int(config.joint_attention_dim)
        if int(cond.embeds.shape[-1]) != width:
            raise ValueError(
                f"{which} conditioning has {int(cond.embeds.shape[-1])}-wide embeddings, {model_label} "
                f"expects {width}: encode the prompt with this checkpoint's text encoders"
            )
        pooled = int(config.pooled_projection_dim)
        if cond.pooled is None or int(cond.pooled.shape[-1]) != pooled:
            got = "none" if cond.pooled is None else int(cond.pooled.shape[-1])
            raise ValueError(
                f"{which} conditioning has a pooled embedding of width {got}, {model_label} expects "
                f"{pooled}: encode the prompt with this checkpoint's text encoders"
            )

    @staticmethod
    def cfg_batch(positive, negative, do_cfg, batch, what, device, dtype) -> torch.Tensor:
        """[negative x B, positive x B] (or positive x B) of one conditioning field."""
        from .unet import per_sample

        pos = getattr(positive, what)
        if not do_cfg:
            return per_sample(pos, batch, f"positive {what}").to(device=device, dtype=dtype)
        neg = getattr(negative, what)
        if tuple(neg.shape[1:]) != tuple(pos.shape[1:]):
            raise ValueError(
                f"negative conditioning's {what} is {tuple(neg.shape[1:])}, the positive's "
                f"{tuple(pos.shape[1:])}: encode both prompts with the same text encoder and "
                "max_sequence_length"
            )
        rows = [per_sample(neg, batch, f"negative {what}"), per_sample(pos, batch, f"positive {what}")]
        return torch.cat(rows).to(device=device, dtype=dtype)

    def adapter_refusal(self, kind: str) -> Optional[str]:
        if kind == IP_ADAPTER:  # LoRA: lora_dit.py; ControlNet: controlnet_dit.py; inpaint: DSInpaint; regional.py
            return f"{ADAPTER_WORDS.get(kind, kind)} is not supported for {self.label} models yet"
        return None

    def refuse_adapter(self, kind: str, what: str) -> None:
        reason = self.adapter_refusal(kind)
        if reason:
            raise ValueError(
                f"{what}: {reason} (the pack runs {self.short_label} text-to-image, image-to-image and "
                "inpainting only). "
                "Remove the node from the graph, or use an SD1.x / SDXL model for it"
            )

    # ---- schedulers
    def sigmas(self, steps: int):
        """The pipeline's explicit sigmas for `steps` (None: the scheduler's own)."""
        return None

    def shift_mu(self, model: ModelBundle, latent_size) -> Optional[float]:
        """The resolution-dependent shift, or None where the pipeline passes none."""
        return None

    def make_scheduler(self, model: ModelBundle, sampler_name: str, schedule: str, latent_size=None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        if sampler_name not in self.sampler_names:
            raise ValueError(
                f"sampler_name {sampler_name!r} does not apply to {self.label}, a flow-matching model: "
                f"choose one of {', '.join(self.sampler_names)}"
            )
        if schedule not in FLOW_SCHEDULES:
            raise ValueError(
                f"schedule {schedule!r} does not apply to {self.label}'s {sampler_name} sampler: "
                f"choose one of {', '.join(FLOW_SCHEDULES)}"
            )
        flags = {flag: schedule == name for name, flag in _SIGMA_FLAGS.items()}
        config = {k: v for k, v in dict(model.scheduler_config).items() if k not in flags}
        inner = FlowMatchEulerDiscreteScheduler.from_config(config, **flags)
        return FlowScheduler(inner, self.sigmas, self.shift_mu(model, latent_size))

    def img2img_start(self, steps: int, denoise: float) -> int:
        # diffusers' flow img2img pipelines: int(max(steps - steps * strength, 0)).
        return int(max(steps - min(steps * denoise, steps), 0))
