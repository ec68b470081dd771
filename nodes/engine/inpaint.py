"""Inpainting: an IMAGE and a MASK to a LATENT that DSSampler repaints inside the mask.

One LATENT serves both kinds of model; the kind is read from the UNet:

- Ordinary models (4 input channels) get diffusers' StableDiffusionInpaintPipeline
  treatment for them: a "noise_mask" in the LATENT, with which the sampler puts
  the area outside the mask back to the original, noised to the next step's
  level, after every step. Soft mask values blend gradually (ComfyUI's lerp).
- Inpainting models (9 input channels) also get `InpaintModelInputs`, a hook
  that appends the mask and the masked image's latents to the UNet input of
  every row of the batch, as the pipeline does (mask binarised at 0.5 and
  nearest-resized, masked image = image with the mask area set to grey). The
  hook runs last (order 1000) so other hooks (ControlNet) see the plain
  4-channel latents, as diffusers' ControlNet inpaint pipeline gives them.
  The noise_mask is added too unless `blend_unmasked` is off (diffusers
  leaves the outside to the model; ComfyUI, A1111 and InvokeAI blend).
- SD3 and Flux.1 ordinary models take the ordinary LATENT: their inpaint
  pipelines blend the same way, with the flow scheduler's scale_noise.
- FLUX.1 Fill (flux variant "fill") gets `FluxFillInputs` (flux_fill.py):
  the masked image's latents and the 8x8 pixel mask patches of every latent
  pixel, as FluxFillPipeline; `blend_unmasked` as for 9-channel models.

Denoising strength is DSSampler's `denoise`. At 1, diffusers' inpaint
pipelines start from pure noise (`is_strength_max`), not from the image noised
to the first timestep as image-to-image does, so nothing of the original
inside the mask leaks into the result (image-to-image's start would keep
about 7 % of it at SD's first timestep). The sampler does the same for any
LATENT with a noise_mask at denoise 1.

Parity with diffusers (tests/unit/test_posterior_parity.py): diffusers encodes
images by *sampling* the VAE posterior with the generator. With
latent_sampling "sample" (the default) the LATENT carries both posteriors
(the image's and the masked image's) and the sampler draws them with the seed
in the pipeline's order (posterior.py), so the pipeline called with PIL image
and mask gives the same picture; "mode" takes the means (ComfyUI's way).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import families
from . import masks as M
from . import posterior as P
from .components import CONTROL, ModelBundle, VAEBundle
from .hooks import RunContext, SamplingHook, StepContext
from .noise import generators_for, initial_noise

logger = logging.getLogger(__name__)

FILL_MODES = ("original", "blurred", "noise", "nothing")
# A1111's masking.fill: blur radii (pixels) and how often each is laid down.
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


# ----------------------------------------------------------------- checks


def _check_image(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or int(image.shape[-1]) not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what} must be an IMAGE [batch, height, width, channels], got {shape}")
    return image.float()


def model_kind(model: ModelBundle, vae: VAEBundle) -> str:
    """"ordinary" (denoiser in = latent channels) or "inpainting" (latent + mask + masked image).

    Channels are counted per latent pixel (Flux's packed tokens unpacked).
    """
    family = families.of(model)
    input_channels = getattr(family, "input_channels", None)
    unet_in = input_channels(model) if input_channels else model.latent_channels
    lat = vae.latent_channels
    if unet_in == lat:
        return "ordinary"
    if unet_in == 2 * lat and getattr(family, "variant", None) == CONTROL:
        return "ordinary"  # FLUX.1 Canny/Depth dev: the extra half is the control image (flux_control.py)
    if unet_in == 2 * lat + 1 and not input_channels:
        return "inpainting"
    if unet_in == 2 * lat + vae.downscale**2 and input_channels:
        return "fill"  # FLUX.1 Fill: latents, masked image latents, 8x8 pixel mask patches
    raise ValueError(
        f"model {model.name!r} takes {unet_in} input channels, which fits neither an ordinary "
        f"({lat}) nor an inpainting model for vae {vae.name!r}: connect the VAE "
        "of the same checkpoint"
    )


def prepare_mask(mask: torch.Tensor, batch: int, height: int, width: int, grow: int, blur: float) -> torch.Tensor:
    """The user's MASK at the image size and batch, grown then feathered: [B,H,W]."""
    m = M.as_mask_batch(mask)
    m = M.match_size(m, height, width)
    m = M.match_batch(m, batch)
    return M.blur(M.grow(m, grow), blur).contiguous()


# ----------------------------------------------------------------- fills


def fill_blurred(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A1111's "fill": the masked area painted with blurred colours from around it.

    Premultiplied blurs of the unmasked pixels at shrinking radii, each laid
    over the last (alpha compositing), so far-away colours fill big holes and
    near ones take over at the edges. The unmasked area is unchanged.
    """
    x = image.permute(0, 3, 1, 2)
    m = mask[:, None]
    keep = 1.0 - m
    acc_rgb = torch.zeros_like(x)
    acc_a = torch.zeros_like(keep)
    for radius, repeats in _FILL_PASSES:
        b_rgb = M.wide_blur(x * keep, radius)
        b_a = M.wide_blur(keep, radius).clamp(0, 1)
        for _ in range(repeats):
            acc_rgb = b_rgb + acc_rgb * (1 - b_a)
            acc_a = b_a + acc_a * (1 - b_a)
    colour = torch.where(acc_a > 1e-6, acc_rgb / acc_a.clamp_min(1e-6), torch.full_like(acc_rgb, 0.5))
    out = x * keep + colour.clamp(0, 1) * m
    return out.permute(0, 2, 3, 1).contiguous()


def _masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """diffusers' masked_image = image * (mask < 0.5) in [-1, 1]: grey (0.5) where masked."""
    hard = (mask >= 0.5)[..., None]
    return torch.where(hard, torch.full_like(image, 0.5), image)


# ----------------------------------------------------------------- hooks


class InpaintModelInputs(SamplingHook):
    """Appends [mask, masked image latents] to every UNet row (9-channel models).

    Row r of the UNet batch belongs to image r % batch (CFG and regional rows
    repeat the batch), so the same per-image tensors are indexed that way.
    """

    order = 1000  # last: other hooks see (and may widen) the 4-channel input
    unet_extra_channels = 5  # read by the sampler's latent check
    repaints = True  # read by the sampler: at denoise 1 start from pure noise

    def __init__(self, mask: torch.Tensor, masked_latents: torch.Tensor):
        self.mask = mask  # [B,1,h,w] 0/1
        self.masked_latents = masked_latents  # [B,C,h,w] unscaled
        self._run: Optional[tuple] = None

    def begin(self, run: RunContext, role: str) -> None:
        channels = int(self.masked_latents.shape[1])
        unet_in = int(run.model.latent_channels)
        if unet_in != 2 * channels + 1:
            raise ValueError(
                f"this latent was made by Diffusers Inpaint for an inpainting model, but model "
                f"{run.model.name!r} takes {unet_in} input channels: run Diffusers Inpaint with the "
                "model you sample with"
            )
        if tuple(self.mask.shape[-2:]) != tuple(run.latent_size):
            raise ValueError(
                f"the inpaint mask is {tuple(self.mask.shape[-2:])} latent pixels but the latent is "
                f"{tuple(run.latent_size)}: resize the image before Diffusers Inpaint, not the latent after it"
            )
        n = int(self.mask.shape[0])
        if n not in (1, run.batch):
            raise ValueError(
                f"the inpaint latent holds {n} masks but the batch has {run.batch} images: "
                "sample the latent from Diffusers Inpaint as it is"
            )
        scale = float(run.model.latent_scaling_factor)
        mask = self.mask.expand(run.batch, -1, -1, -1).to(run.device, run.dtype)
        masked = self.masked_latents
        deviation = run.masked_image_deviation
        if deviation is not None and tuple(deviation.shape) == tuple(masked.shape):
            masked = masked + deviation  # the posterior sample the pipeline's generator drew
        masked = _repeat_rows(masked * scale, run.batch).to(run.device, run.dtype)
        self._run = (mask, masked)

    def before_unet(self, step: StepContext, run: RunContext, role: str) -> None:
        step.x_in = append_per_image(step.x_in, run.batch, self._run)

    def end(self) -> None:
        self._run = None


def append_per_image(x_in: torch.Tensor, batch: int, extras: tuple) -> torch.Tensor:
    """x_in with per-image tensors ([batch, C, h, w] each, in the model's channel order) appended.

    Row r of the denoiser batch belongs to image r % batch (CFG and regional rows
    repeat the batch), so every row gets its own image's extras.
    """
    rows = int(x_in.shape[0])
    if rows % batch:
        raise RuntimeError(f"denoiser batch of {rows} rows is not a multiple of the image batch {batch}")
    idx = torch.arange(rows, device=extras[0].device) % batch
    return torch.cat([x_in, *(extra[idx].to(x_in.dtype) for extra in extras)], dim=1)


def _repeat_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[1 or batch, ...] -> [batch, ...] (diffusers repeats masked latents per sample)."""
    return x.expand(batch, -1, -1, -1) if int(x.shape[0]) == 1 else x


# ----------------------------------------------------------------- the LATENT


@dataclass(frozen=True)
class Prepared:
    latent: dict  # samples, noise_mask, ds_hooks
    mask: torch.Tensor  # [B,H,W]: the grown and feathered mask, for compositing
    kind: str  # "ordinary", "inpainting" (9-channel UNet) or "fill" (FLUX.1 Fill)


@torch.no_grad()
def prepare(
    vae: VAEBundle,
    model: ModelBundle,
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    grow: int = 0,
    blur: float = 0.0,
    fill: str = "original",
    seed: int = 0,
    blend_unmasked: bool = True,
    latent_sampling: str = P.DEFAULT_SAMPLING,
) -> Prepared:
    """The inpainting LATENT of `image` for `model`, repainting where `mask` is 1.

    SD3 and Flux.1 get the same LATENT as ordinary SD models: their
    pipelines (StableDiffusion3InpaintPipeline, FluxInpaintPipeline) blend
    the outside back after every step with `scale_noise`, which is the flow
    scheduler's `add_noise`, and draw the posteriors in the same order.

    fill: what the masked area starts from (A1111's inpainting_fill):
    "original" the picture, "blurred" colours blurred in from around the mask,
    "noise" random latents, "nothing" zero latents. It matters below denoise 1
    for ordinary models, and always for what the sampler blends towards.
    latent_sampling: "sample" lets the sampler draw the image's and the masked
    image's VAE posteriors with its seed, as diffusers' inpaint pipelines do;
    "mode" takes the means (deterministic, ComfyUI's way). See posterior.py.
    """
    families.of(model).refuse_adapter(families.INPAINT, "model")
    P.check_mode(latent_sampling)
    image = _check_image(image)
    if fill not in FILL_MODES:
        raise ValueError(f"fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
    if grow != int(grow):
        raise ValueError(f"grow must be a whole number of pixels, got {grow}")
    if blur < 0:
        raise ValueError(f"blur must be 0 or more pixels, got {blur}: 0 keeps the mask's edge as it is")
    f = vae.downscale
    b, h, w = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
    if h % f or w % f:
        raise ValueError(
            f"image is {w}x{h}, but the VAE needs width and height divisible by {f}: resize or crop "
            f"the image first (e.g. to {w // f * f}x{h // f * f}), or use Diffusers Inpaint Crop To Mask"
        )
    kind = model_kind(model, vae)
    pixel_mask = prepare_mask(mask, b, h, w, int(grow), float(blur))
    empty = not bool(pixel_mask.any())
    if empty:
        logger.info("inpaint mask is empty: nothing will be repainted, the image comes back as it was")

    rgb = image[..., :3] if image.shape[-1] >= 3 else image.repeat(1, 1, 1, 3)
    start = fill_blurred(rgb, pixel_mask) if fill == "blurred" else rgb
    sampling = latent_sampling if fill in ("original", "blurred") else "mode"
    samples, image_posterior = P.encode(vae, start, sampling, per_image=True)
    latent_mask = M.to_latent_size(pixel_mask, f).to(samples.dtype)
    if fill in ("noise", "nothing"):
        if fill == "noise":
            gens = generators_for([seed + i for i in range(b)])
            replacement = initial_noise(tuple(samples.shape), gens, device="cpu", dtype=samples.dtype)
            replacement = replacement / vae.scaling_factor  # N(0,1) in the UNet's scaled space
        else:
            replacement = torch.zeros_like(samples)
        samples = samples * (1 - latent_mask) + replacement * latent_mask

    hooks: list = []
    latent: dict = {"samples": samples}
    if image_posterior is not None:
        latent[P.KEY] = image_posterior
    if kind == "inpainting":
        masked, masked_posterior = P.encode(vae, _masked_image(rgb, pixel_mask), latent_sampling, per_image=True)
        hooks.append(InpaintModelInputs(M.binarised_latent_mask(pixel_mask, f), masked))
    elif kind == "fill":
        from .flux_fill import FluxFillInputs, mask_patches  # it subclasses InpaintModelInputs

        masked, masked_posterior = P.encode(vae, _masked_image(rgb, pixel_mask), latent_sampling, per_image=True)
        hooks.append(FluxFillInputs(mask_patches(pixel_mask, f), masked))
    elif latent_sampling == "sample":
        # The 4-channel pipeline encodes the masked image too and throws it
        # away; only its draw from the generator matters (a zero posterior).
        zeros = torch.zeros_like(samples)
        masked_posterior = P.Posterior(zeros, zeros, per_image=True)
    else:
        masked_posterior = None
    if masked_posterior is not None:
        latent[P.MASKED_KEY] = masked_posterior
    if kind == "ordinary" or blend_unmasked or empty:  # FluxFillPipeline, like the 9-channel one, does not blend
        latent["noise_mask"] = latent_mask
    latent["ds_hooks"] = hooks
    return Prepared(latent, pixel_mask, kind)


# ----------------------------------------------------------------- pixels


def composite(original: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Generated pixels inside the mask, the original's exact pixels outside it.

    out = original where mask == 0 (bit for bit), lerp(original, generated, mask)
    elsewhere. A generated image of another size is resized to the original's.
    """
    original = _check_image(original, "original")
    generated = _check_image(generated, "generated")
    b = int(original.shape[0])
    if int(generated.shape[0]) != b:
        if b == 1:
            original = original.expand(int(generated.shape[0]), -1, -1, -1)
            b = int(generated.shape[0])
        else:
            raise ValueError(
                f"generated has {int(generated.shape[0])} images but original has {b}: "
                "composite each generated image onto its own original (same batch size)"
            )
    if int(generated.shape[-1]) != int(original.shape[-1]):
        raise ValueError(
            f"generated has {int(generated.shape[-1])} colour channels, original has "
            f"{int(original.shape[-1])}: use images of the same kind (RGB)"
        )
    h, w = int(original.shape[1]), int(original.shape[2])
    if tuple(generated.shape[1:3]) != (h, w):
        logger.warning(
            "generated image is %dx%d, the original %dx%d: resizing it to the original",
            int(generated.shape[2]), int(generated.shape[1]), w, h,
        )
        generated = _resize_image(generated, h, w)
    m = M.match_batch(M.match_size(M.as_mask_batch(mask), h, w), b)[..., None]
    return torch.where(m > 0, original * (1 - m) + generated * m, original)


def _resize_image(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = image.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


# ----------------------------------------------------------------- full-resolution inpainting


@dataclass(frozen=True)
class CropPlan:
    """Where each crop came from, to paste the generated pictures back."""

    original: torch.Tensor  # [B,H,W,C]
    mask: torch.Tensor  # [B,H,W] the mask given to the crop node
    boxes: tuple  # per image (x0, y0, x1, y1) in original pixels
    size: tuple  # (width, height) of the crops


def native_size(model: ModelBundle) -> int:
    """The model's training resolution in pixels: 512 for SD1.5, 1024 for SDXL."""
    sample_size = getattr(model.unet.config, "sample_size", None)
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    if isinstance(sample_size, int) and sample_size > 0:
        return int(sample_size) * int(model.vae_scale_factor)
    return families.of(model).latent_format.native_size


def round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def _expand_to_ratio(box, ratio: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Grow the short side of `box` to width/height `ratio`, kept inside the image."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if bw / bh > ratio:
        want = min(height, int(round(bw / ratio)))
        y0, y1 = _centre_span(y0, y1, want, height)
    else:
        want = min(width, int(round(bh * ratio)))
        x0, x1 = _centre_span(x0, x1, want, width)
    return x0, y0, x1, y1


def _centre_span(a: int, b: int, want: int, limit: int) -> tuple[int, int]:
    extra = max(0, want - (b - a))
    a -= extra // 2
    b += extra - extra // 2
    if a < 0:
        b, a = b - a, 0
    if b > limit:
        a, b = max(0, a - (b - limit)), limit
    return a, b


def crop_to_mask(
    image: torch.Tensor, mask: torch.Tensor, *, padding: int, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, CropPlan]:
    """A1111's "inpaint only masked": crop around the mask, scale to width x height.

    Each image's box is the mask's bounding box plus `padding` pixels, widened
    to the target's aspect ratio and kept inside the image (an empty mask
    takes the whole image). The crops are resized to width x height (multiples
    of 8) so the model works at its native resolution.
    """
    image = _check_image(image)
    if width % 8 or height % 8 or width < 8 or height < 8:
        raise ValueError(f"crop size must be multiples of 8, got {width}x{height}")
    if padding < 0:
        raise ValueError(f"padding must be 0 or more pixels, got {padding}")
    b, h, w = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
    m = M.match_batch(M.match_size(M.as_mask_batch(mask), h, w), b)
    crops, mask_crops, boxes = [], [], []
    for i in range(b):
        box = M.bounding_box(m[i])
        if box is None:
            logger.info("image %d: the mask is empty, cropping the whole image", i)
            box = (0, 0, w, h)
        x0, y0, x1, y1 = box
        box = (max(0, x0 - padding), max(0, y0 - padding), min(w, x1 + padding), min(h, y1 + padding))
        x0, y0, x1, y1 = _expand_to_ratio(box, width / height, w, h)
        boxes.append((x0, y0, x1, y1))
        crops.append(_resize_image(image[i : i + 1, y0:y1, x0:x1], height, width))
        mc = m[i : i + 1, None, y0:y1, x0:x1]
        mask_crops.append(F.interpolate(mc, size=(height, width), mode="bilinear", align_corners=False)[:, 0])
    plan = CropPlan(image, m.contiguous(), tuple(boxes), (width, height))
    return torch.cat(crops), torch.cat(mask_crops).clamp(0, 1), plan


def paste_back(plan: CropPlan, generated: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scale each generated crop back into its box and composite it into the original.

    `mask` is the mask at crop size that the inpainting used (Diffusers
    Inpaint's MASK output, feathered); without it the crop node's own mask is
    used. Pixels outside the mask are the original's, bit for bit.
    """
    generated = _check_image(generated, "image")
    original = plan.original
    b = int(original.shape[0])
    if int(generated.shape[0]) != b:
        raise ValueError(
            f"image has {int(generated.shape[0])} pictures but the crop was made from {b}: "
            "paste back the images generated from this crop's batch"
        )
    if int(generated.shape[-1]) != int(original.shape[-1]):
        generated = generated[..., : int(original.shape[-1])]
    crop_mask = None
    if mask is not None:
        gh, gw = int(generated.shape[1]), int(generated.shape[2])
        crop_mask = M.match_batch(M.match_size(M.as_mask_batch(mask), gh, gw), b)
    out = original.clone()
    for i, (x0, y0, x1, y1) in enumerate(plan.boxes):
        bh, bw = y1 - y0, x1 - x0
        piece = _resize_image(generated[i : i + 1], bh, bw)
        if crop_mask is not None:
            region_mask = F.interpolate(crop_mask[i : i + 1, None], size=(bh, bw), mode="bilinear", align_corners=False)[:, 0]
            region_mask = region_mask.clamp(0, 1)
        else:
            region_mask = plan.mask[i : i + 1, y0:y1, x0:x1]
        out[i : i + 1, y0:y1, x0:x1] = composite(original[i : i + 1, y0:y1, x0:x1], piece, region_mask)
    return out
