"""Request and response bodies of the /sdapi/v1 routes, with A1111's field names and defaults.

A1111 declares its bodies as pydantic models; clients send exactly these
names. Unknown fields are ignored (as A1111's models do), wrong types and
out-of-range values are 422 errors with pydantic's locations.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**63 - 1
MAX_SIDE = 8192


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Common(_Body):
    """The fields txt2img and img2img share (A1111's StableDiffusionProcessing)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: Optional[list[str]] = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED, description="variation seed; -1 picks a random one")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=100)
    steps: int = Field(50, ge=1, le=10000)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    # Forge's field: Flux dev's distilled guidance (DSFluxGuidance); None is the model's default (3.5).
    distilled_cfg_scale: Optional[float] = Field(None, ge=0.0, le=100.0)
    width: int = Field(512, ge=64, le=MAX_SIDE)
    height: int = Field(512, ge=64, le=MAX_SIDE)
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Optional[float] = None
    denoising_strength: Optional[float] = Field(None, ge=0.0, le=1.0)
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Optional[str] = None
    refiner_switch_at: Optional[float] = Field(None, ge=0.0, le=1.0)
    disable_extra_networks: bool = False
    firstpass_image: Optional[str] = None
    comments: Optional[dict[str, Any]] = None
    sampler_index: str = "Euler"
    script_name: Optional[str] = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: Optional[str] = None
    infotext: Optional[str] = None

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the latent is 1/8 of the image), got {value}")
        return value


class Txt2ImgRequest(_Common):
    """POST /sdapi/v1/txt2img (A1111's StableDiffusionTxt2ImgProcessingAPI)."""

    denoising_strength: Optional[float] = Field(0.75, ge=0.0, le=1.0)
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: int = Field(0, ge=0, le=10000)
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: Optional[float] = Field(None, ge=0.0, le=100.0)


class Img2ImgRequest(_Common):
    """POST /sdapi/v1/img2img (A1111's StableDiffusionImg2ImgProcessingAPI)."""

    init_images: Optional[list[str]] = None
    resize_mode: int = Field(0, ge=0, le=3)
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: Optional[int] = None
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = Field(0, ge=0)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    denoising_strength: Optional[float] = Field(0.75, ge=0.0, le=1.0)
    include_init_images: bool = False


class GenerationResponse(_Body):
    """The answer of txt2img and img2img."""

    images: Optional[list[str]] = Field(None, description="base64 images (PNG unless samples_format says otherwise)")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, prompts, sampler, size, model, infotexts")


class ProgressState(_Body):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(_Body):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: Optional[str] = None
    textinfo: Optional[str] = None
    current_task: Optional[str] = None


class SamplerItem(_Body):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(_Body):
    name: str
    label: str
    aliases: Optional[list[str]] = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(_Body):
    name: str
    model_name: Optional[str] = None
    model_path: Optional[str] = None
    model_url: Optional[str] = None
    scale: Optional[float] = None


class LatentUpscaleModeItem(_Body):
    name: str


class SDModelItem(_Body):
    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class SDVaeItem(_Body):
    model_name: str
    filename: str


class LoraItem(_Body):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(_Body):
    """A1111's answer to an application error."""

    error: str
    detail: Any = ""
    body: Any = ""
    errors: str = ""


class ValidationErrorItem(_Body):
    loc: list[Any]
    msg: str
    type: str


class ValidationErrorResponse(_Body):
    detail: list[ValidationErrorItem]
