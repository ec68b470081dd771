"""The SDXL refiner: family SDXL, variant REFINER.

Same VAE and latent space, scheduler, previews and float16 rules as SDXL
base, but one text encoder (OpenCLIP bigG alone: its penultimate hidden
states, 1280 wide, and its projection, as diffusers'
StableDiffusionXLImg2ImgPipeline.encode_prompt with text_encoder=None) and
five time ids: original size, crop top-left and an aesthetic score
(diffusers' requires_aesthetics_score). It is trained for the last,
low-noise steps, and no ControlNet or IP-Adapter exists for its UNet.
"""
from __future__ import annotations

from ..components import REFINER
from . import facts
from .base import CONTROLNET, IP_ADAPTER
from .sdxl import DEFAULT_AESTHETIC_SCORE, DEFAULT_NEGATIVE_AESTHETIC_SCORE, OPENCLIP_BIGG, SDXLFamily

__all__ = ["DEFAULT_AESTHETIC_SCORE", "DEFAULT_NEGATIVE_AESTHETIC_SCORE", "SDXL_REFINER_FAMILY", "SDXLRefinerFamily"]


class SDXLRefinerFamily(SDXLFamily):
    key = "sdxl_refiner"
    variant = REFINER
    label = facts.REFINER_LABEL
    short_label = "SDXL refiner"
    log_name = "sdxl refiner"

    # StableDiffusionXLImg2ImgPipeline with text_encoder=None.
    pipeline_classes = ("StableDiffusionXLImg2ImgPipeline",)
    text_encoders = (OPENCLIP_BIGG,)

    target_size = False
    aesthetic_score = True
    default_time_ids = 5  # original size + crop top-left + aesthetic score

    def check_folder_denoiser(self, path: str, denoiser, text_encoders) -> None:
        """A refiner folder's UNet must take bigG's embeddings and 5 time ids."""
        from ..single_file import label

        config = denoiser.config
        text_encoder = text_encoders[-1]
        hidden = int(text_encoder.config.hidden_size)
        pooled = int(text_encoder.config.projection_dim)
        time_dim = getattr(config, "addition_time_embed_dim", None)
        linear = getattr(getattr(denoiser, "add_embedding", None), "linear_1", None)
        problems = []
        if config.cross_attention_dim != hidden:
            problems.append(f"cross_attention_dim {config.cross_attention_dim}, text_encoder_2 gives {hidden}")
        if getattr(config, "addition_embed_type", None) != "text_time" or time_dim is None or linear is None:
            problems.append("no added size/aesthetic embedding (addition_embed_type is not 'text_time')")
        elif int(linear.in_features) != 5 * int(time_dim) + pooled:
            problems.append(
                f"its added embedding takes {int(linear.in_features)} values, not 5 time ids x {int(time_dim)} "
                f"+ {pooled} pooled"
            )
        if problems:
            raise facts.ModelLoadError(
                f"Folder {label(path)!r} has no first text encoder, as the SDXL refiner, but its UNet does not fit "
                f"the refiner's conditioning ({'; '.join(problems)}). Select an SDXL refiner folder "
                "(stable-diffusion-xl-refiner-1.0 layout) or an SDXL base folder with both text encoders."
            )

    def adapter_refusal(self, kind: str):
        if kind in (CONTROLNET, IP_ADAPTER):
            return f"no {kind} exists for the SDXL refiner's UNet (1280-wide text, other blocks)"
        return None

    def from_noise_warning(self) -> str:
        return (
            "%s starts from pure noise: the SDXL refiner is trained for the last, low-noise steps and "
            "gives poor pictures from scratch. Usual: the base model to end_step, then the refiner from "
            "the same start_step; or the refiner on a finished picture with denoise 0.2-0.3."
        )


SDXL_REFINER_FAMILY = SDXLRefinerFamily()
