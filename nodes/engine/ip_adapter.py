"""IP-Adapter as a sampling hook: image prompts for one run, nothing left behind.

diffusers' `load_ip_adapter` rewrites the UNet (new attention processors, an
`encoder_hid_proj`, a config change). A ComfyUI graph cannot do that to a
cached model, so here an applied adapter is a value (`IPAdapterHook` in a
DS_MODEL's patches) that, for one run:

- `begin`: projects the reference image embeddings to image tokens with the
  adapter's projection (diffusers' own modules, so the tokens are the
  pipeline's), then wraps the cross-attention processors of the targeted
  layers. Each wrapper calls the processor it found (the text attention,
  or another adapter's wrapper: several adapters stack) and adds
  `weight * softmax(q k_ip^T) v_ip` through the layer's output projection,
  which is what `IPAdapterAttnProcessor2_0` computes;
- `before_unet`: picks the tokens of each UNet batch row from
  `StepContext.row_roles` (negative rows get the unconditional image
  tokens, as diffusers' CFG batch does; rows added by a regional-prompt hook
  are positive rows) and switches the adapter off outside its step window;
- `end`: puts back the exact processor objects it replaced.

A mask limits the image prompt to a region with diffusers'
`IPAdapterMaskProcessor.downsample` rule (bicubic to each attention layer's
grid). For SDXL, `weight_mode` picks InvokeAI's/diffusers' block targets:
style = up_blocks.0.attentions.1, composition = the deepest down block's
second attention (down_blocks.2.attentions.1 on SDXL).

Flux.1 adapters (XLabs files) run through ip_adapter_flux.FluxIPAdapterHook,
SD3 / SD3.5 adapters (InstantX files) through ip_adapter_sd3.SD3IPAdapterHook;
`apply_ip_adapter` picks the hook by the adapter's target after
`check_family` has refused an adapter made for another kind of model.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import families
from . import hooks
from .components import FLUX, SD3, SDXL, ModelBundle
from .image_encoder import IMAGE_EMBEDS, ImageEmbeds, encode_images
from .ip_adapter_loading import FLUX as FLUX_TARGET
from .ip_adapter_loading import SD3 as SD3_TARGET
from .ip_adapter_loading import IPAdapter

logger = logging.getLogger(__name__)

STANDARD = "standard"
STYLE = "style"
COMPOSITION = "composition"
STYLE_AND_COMPOSITION = "style and composition"
WEIGHT_MODES = (STANDARD, STYLE, COMPOSITION, STYLE_AND_COMPOSITION)

Prepare = Callable[[list], None]


# ------------------------------------------------------------------ targets
def cross_attention_names(unet) -> list[str]:
    """Cross-attention processor names in the order the h94 files number them."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def _style_prefixes(unet) -> list[str]:
    return ["up_blocks.0.attentions.1."]


def _composition_prefixes(unet) -> list[str]:
    deepest = [i for i, block in enumerate(unet.down_blocks) if getattr(block, "attentions", None)]
    return [f"down_blocks.{deepest[-1]}.attentions.1."] if deepest else []


def layer_scales(unet, family: str, weight: float, weight_mode: str) -> dict[str, float]:
    """Scale per cross-attention processor name (0 = the adapter is not installed there)."""
    names = cross_attention_names(unet)
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"weight_mode: '{weight_mode}' is not one of {list(WEIGHT_MODES)}")
    if weight_mode == STANDARD:
        return {name: weight for name in names}
    if family != SDXL:
        raise ValueError(
            f"weight_mode: '{weight_mode}' targets SDXL's style/layout blocks, but the model is {family}: "
            "use weight_mode 'standard' with SD1.x models"
        )
    prefixes = []
    if weight_mode in (STYLE, STYLE_AND_COMPOSITION):
        prefixes += _style_prefixes(unet)
    if weight_mode in (COMPOSITION, STYLE_AND_COMPOSITION):
        prefixes += _composition_prefixes(unet)
    scales = {name: (weight if any(name.startswith(p) for p in prefixes) else 0.0) for name in names}
    if not any(scales.values()) and weight != 0:
        raise ValueError(
            f"weight_mode: '{weight_mode}' found none of its blocks ({prefixes}) in this UNet: use 'standard'"
        )
    return scales


# ------------------------------------------------------------------- masks
def prepare_mask(mask: Optional[torch.Tensor], count: int, pixel_size: tuple[int, int]) -> Optional[torch.Tensor]:
    """A ComfyUI MASK as one [H, W] mask per reference image, at the image size.

    One mask serves every image of the adapter; a batch of masks gives one per
    image (diffusers' `ip_adapter_masks` for several images). Another size is
    resized (bilinear). A 0/1 mask is what diffusers' IPAdapterMaskProcessor
    makes; soft values are kept as partial weights.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a ComfyUI MASK [batch, height, width], got {shape}")
    m = mask.detach().float().cpu()
    if m.ndim == 2:
        m = m[None]
    if m.shape[0] not in (1, count):
        raise ValueError(
            f"mask has {m.shape[0]} masks for {count} reference images: give one mask, or one per image"
        )
    if tuple(m.shape[-2:]) != tuple(pixel_size):
        m = F.interpolate(m[:, None], size=tuple(pixel_size), mode="bilinear", align_corners=False)[:, 0]
    if m.shape[0] == 1 and count > 1:
        m = m.repeat(count, 1, 1)
    return m


def downsample_mask(mask: torch.Tensor, rows: int, num_queries: int, width: int) -> torch.Tensor:
    """diffusers' IPAdapterMaskProcessor.downsample: [H, W] -> [rows, queries, width]."""
    ratio = mask.shape[-1] / mask.shape[-2]
    mask_h = int(math.sqrt(num_queries / ratio))
    mask_h = int(mask_h) + int((num_queries % int(mask_h)) != 0)
    mask_w = num_queries // mask_h
    small = F.interpolate(mask[None, None], size=(mask_h, mask_w), mode="bicubic")[0]
    small = small.reshape(1, -1)
    if small.shape[1] < num_queries:
        small = F.pad(small, (0, num_queries - small.shape[1]), value=0.0)
    small = small[:, :num_queries]
    return small.reshape(1, num_queries, 1).expand(rows, num_queries, width)


# -------------------------------------------------------------- processors
class _RunState:
    """What the wrappers of one hook read during a UNet call."""

    def __init__(self, tokens_pos, tokens_neg, masks):
        self.tokens_pos = tokens_pos  # [N, T, C]
        self.tokens_neg = tokens_neg
        self.masks = masks  # None or [N, H, W]
        self.rows: Optional[torch.Tensor] = None  # [rows, N, T, C] for this call; None = off
        self._mask_cache: dict = {}

    def rows_for(self, batch: int, what: str = "transformer") -> Optional[torch.Tensor]:
        """This call's tokens (None: the adapter is off), after checking they match the denoiser's batch."""
        tokens = self.rows
        if tokens is not None and tokens.shape[0] != batch:
            raise ValueError(
                f"IP-Adapter got a {what} batch of {batch} rows but prepared {tokens.shape[0]}: a hook changed "
                "the batch after the IP-Adapter saw it"
            )
        return tokens

    def mask_for(self, image: int, rows: int, queries: int, width: int, like: torch.Tensor) -> torch.Tensor:
        key = (image, rows, queries, width)
        cached = self._mask_cache.get(key)
        if cached is None:
            cached = downsample_mask(self.masks[image], rows, queries, width).to(like.device, like.dtype)
            self._mask_cache[key] = cached
        return cached


class _IPAttention:
    """Adds one adapter's image attention to whatever processor it wraps."""

    def __init__(self, previous, state: _RunState, to_k: torch.Tensor, to_v: torch.Tensor, scale: float):
        self.previous = previous
        self.state = state
        self.to_k = to_k
        self.to_v = to_v
        self.scale = scale

    def _call(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        out = self.previous(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        tokens = self.state.rows
        if tokens is None or encoder_hidden_states is None or hidden_states.ndim != 3:
            return out
        batch = hidden_states.shape[0]
        if tokens.shape[0] != batch:
            raise ValueError(
                f"IP-Adapter got a UNet batch of {batch} rows but prepared {tokens.shape[0]}: a hook changed "
                "the batch after the IP-Adapter saw it (batch-widening hooks must use a negative order)"
            )
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("IP-Adapter: this attention layer normalises its input, which IP-Adapter does not support")
        query = attn.to_q(hidden_states)
        heads = attn.heads
        head_dim = self.to_k.shape[0] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        count = tokens.shape[1]
        if self.state.masks is None:
            ip = self._attend(query, tokens.reshape(batch, -1, tokens.shape[-1]), batch, heads, head_dim)
            added = self.scale * ip
        else:
            added = None
            for i in range(count):
                ip = self._attend(query, tokens[:, i], batch, heads, head_dim)
                ip = ip * self.state.mask_for(i, batch, ip.shape[1], ip.shape[2], ip)
                added = self.scale * ip if added is None else added + self.scale * ip
        return out + F.linear(added, attn.to_out[0].weight) / attn.rescale_output_factor

    def _attend(self, query, tokens, batch, heads, head_dim):
        key = F.linear(tokens, self.to_k).view(batch, -1, heads, head_dim).transpose(1, 2)
        value = F.linear(tokens, self.to_v).view(batch, -1, heads, head_dim).transpose(1, 2)
        ip = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
        return ip.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)


_wrapper_classes: dict = {}


def _wrapper_for(previous, *args) -> _IPAttention:
    """An _IPAttention whose call signature is the wrapped processor's.

    diffusers' Attention passes a cross_attention_kwargs entry only to a
    processor whose `__call__` names it; taking the wrapped processor's
    signature keeps the kwargs of whatever is underneath (another hook's
    processor) flowing through the wrapper.
    """
    sig = inspect.signature(previous.__call__ if not inspect.isfunction(previous) else previous)
    names = tuple(sig.parameters)
    cls = _wrapper_classes.get(names)
    if cls is None:
        def __call__(self, attn, hidden_states, *rest, **kwargs):
            if rest:  # positional encoder_hidden_states / attention_mask
                kwargs.update(zip(("encoder_hidden_states", "attention_mask"), rest))
            return self._call(attn, hidden_states, **kwargs)

        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + list(sig.parameters.values())
        __call__.__signature__ = inspect.Signature(params)
        cls = type("IPAdapterAttention", (_IPAttention,), {"__call__": __call__})
        _wrapper_classes[names] = cls
    return cls(previous, *args)


# -------------------------------------------------------------------- hook
class IPAdapterHook(hooks.SamplingHook):
    """One applied IP-Adapter (a DS_MODEL patch); see the module docstring."""

    order = 0

    def __init__(
        self,
        adapter: IPAdapter,
        embeds: ImageEmbeds,
        *,
        weight: float = 1.0,
        start_percent: float = 0.0,
        end_percent: float = 1.0,
        mask: Optional[torch.Tensor] = None,
        weight_mode: str = STANDARD,
        prepare: Optional[Prepare] = None,
    ):
        check_embeds(adapter, embeds)
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode: '{weight_mode}' is not one of {list(WEIGHT_MODES)}")
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ValueError(
                f"start_percent ({start_percent}) and end_percent ({end_percent}) must satisfy "
                "0 <= start_percent <= end_percent <= 1"
            )
        if mask is not None and not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask must be a ComfyUI MASK tensor, got {type(mask).__name__}")
        self.adapter = adapter
        self.embeds = embeds
        self.weight = float(weight)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.mask = mask
        self.weight_mode = weight_mode
        self.prepare = prepare
        self._installed: list = []
        self._state: Optional[_RunState] = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.adapter.name!r}, weight={self.weight}, "
                f"window=({self.start_percent}, {self.end_percent}), mode={self.weight_mode!r})")

    # ---- begin
    def begin(self, run: hooks.RunContext, role: str) -> None:
        model: ModelBundle = run.model
        unet = model.unet
        names = check_model(self.adapter, model)
        if self._mask_is_empty():
            return
        scales = layer_scales(unet, model.family, self.weight, self.weight_mode)
        projection, to_k, to_v, _, _ = self._run_weights(run)
        pos, neg = self._project(projection, run)
        masks = prepare_mask(self.mask, self.embeds.count, run.pixel_size)
        self._state = _RunState(pos, neg, masks)
        for index, name in enumerate(names):
            scale = scales[name]
            if scale == 0.0:
                continue
            attn = unet.get_submodule(name[: -len(".processor")])
            previous = attn.processor
            wrapper = _wrapper_for(previous, self._state, to_k[index], to_v[index], scale)
            attn.set_processor(wrapper)
            self._installed.append((attn, previous))

    def _mask_is_empty(self) -> bool:
        """An all-zero mask: the adapter does nothing this run (said with a warning)."""
        if self.mask is not None and float(self.mask.abs().max()) == 0.0:
            logger.warning(
                "IP-Adapter %s: the mask is empty (all zero), so the adapter has no effect in this run; "
                "paint the area the reference image should act on", self.adapter.name,
            )
            return True
        return False

    def _run_weights(self, run: hooks.RunContext) -> tuple:
        """(projection, to_k, to_v, k_biases, v_biases) on the run's device and dtype (biases: None per layer
        for h94 files). Copies for this run only where they differ (e.g. a float32 adapter, a float16
        model): the shared module is never changed."""
        if self.prepare is not None:
            self.prepare([self.adapter.weights])
        weights = self.adapter.weights
        n = weights.num_layers
        projection = weights.projection
        groups = [list(weights.to_k_ip), list(weights.to_v_ip),
                  list(weights.to_k_ip_bias) or [None] * n, list(weights.to_v_ip_bias) or [None] * n]
        w_param = next(weights.parameters())
        if w_param.device != run.device or w_param.dtype != run.dtype:
            import copy

            projection = copy.deepcopy(projection).to(device=run.device, dtype=run.dtype)
            groups = [[None if t is None else t.to(device=run.device, dtype=run.dtype) for t in group]
                      for group in groups]
        return (projection, *groups)

    @torch.no_grad()
    def _project(self, proj, run) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens [N, T, C] for the positive and the negative rows."""
        out = []
        for emb in (self.embeds.positive, self.embeds.negative):
            tokens = proj(emb.to(device=run.device, dtype=run.dtype))
            out.append(tokens)
        return out[0], out[1]

    # ---- per step
    def _active(self, step: hooks.StepContext, run: hooks.RunContext) -> bool:
        """diffusers' control_guidance_start/end rule on the full schedule."""
        total = max(int(run.total_steps), 1)
        i = int(round(step.progress * total))
        return not (i / total < self.start_percent or (i + 1) / total > self.end_percent)

    def before_unet(self, step: hooks.StepContext, run: hooks.RunContext, role: str) -> None:
        state = self._state
        if state is None:
            return
        if not self._active(step, run):
            state.rows = None
            return
        rows = int(step.x_in.shape[0])
        roles = list(step.row_roles)
        if len(roles) != rows:
            raise ValueError(
                f"IP-Adapter: the UNet batch has {rows} rows but row_roles lists {len(roles)}: "
                "a hook widened the batch without describing its rows"
            )
        pos, neg = state.tokens_pos, state.tokens_neg
        state.rows = torch.stack([neg if r == hooks.NEGATIVE else pos for r in roles])

    def end(self) -> None:
        for attn, previous in reversed(self._installed):
            attn.set_processor(previous)
        self._installed = []
        self._state = None


# --------------------------------------------------------------- checks
def check_embeds(adapter: IPAdapter, embeds: ImageEmbeds) -> None:
    if not isinstance(embeds, ImageEmbeds):
        raise ValueError(f"image_embeds must be DS_IMAGE_EMBEDS (Encode IP-Adapter Image), got {type(embeds).__name__}")
    if embeds.kind != adapter.kind or embeds.width != adapter.image_embed_dim:
        what = "projected image embeddings" if adapter.kind == IMAGE_EMBEDS else "hidden states"
        raise ValueError(
            f"image_embeds were made by '{embeds.encoder_name}' for another kind of adapter "
            f"({embeds.kind}, {embeds.width} wide); '{adapter.name}' ({adapter.variant}) reads {what} "
            f"{adapter.image_embed_dim} wide: encode the image with this IP-Adapter"
        )
    made_for = ("a Flux.1" if embeds.negative_picture else "an SD3.5" if getattr(embeds, "zero_negative", False)
                else "an SD1.x/SDXL")
    if (getattr(embeds, "negative_picture", False) != adapter.negative_picture
            or getattr(embeds, "zero_negative", False) != adapter.zero_negative):
        raise ValueError(
            f"image_embeds were encoded for {made_for} IP-Adapter, but '{adapter.name}' is "
            f"{_adapter_kind(adapter)}: their unconditional (negative) encodings differ; encode the image with "
            "this IP-Adapter"
        )


def _adapter_kind(adapter: IPAdapter) -> str:
    if adapter.target == FLUX_TARGET:
        return "a Flux.1 IP-Adapter (XLabs layout, CLIP ViT-L/14)"
    if adapter.target == SD3_TARGET:
        return "an SD3.5 IP-Adapter (InstantX layout, SigLIP)"
    return "an SD1.x/SDXL IP-Adapter (h94 layout)"


def check_family(adapter: IPAdapter, model: ModelBundle) -> None:
    """Refuse an adapter made for another kind of model, naming both (before anything runs)."""
    family = families.of(model)
    unet_model = not isinstance(family, families.FlowFamily)
    fitting = {FLUX_TARGET: model.family == FLUX, SD3_TARGET: model.family == SD3}.get(adapter.target, unet_model)
    if fitting:
        return
    if model.family == FLUX:
        fix = ("use a Flux.1 IP-Adapter in XLabs' layout (XLabs-AI/flux-ip-adapter ip_adapter.safetensors) "
               "with the CLIP ViT-L/14 image encoder")
    elif model.family == SD3:
        fix = ("use the SD3.5 IP-Adapter in InstantX's layout (InstantX/SD3.5-Large-IP-Adapter ip-adapter.bin) "
               "with the SigLIP image encoder (siglip-so400m-patch14-384)")
    elif unet_model:
        fix = ("use an IP-Adapter of the model's family (ip-adapter_sd15* for SD1.x, ip-adapter*_sdxl* for "
               "SDXL), or sample with a model of the adapter's family")
    else:
        fix = (f"{family.adapter_refusal(families.IP_ADAPTER) or 'it takes no IP-Adapter here'}; remove the "
               "IP-Adapter nodes, or use an SD1.x / SDXL / Flux.1 model with an adapter made for it")
    raise ValueError(
        f"ip_adapter: '{adapter.name}' is {_adapter_kind(adapter)}, but the model '{model.name}' is "
        f"{family.label}: {fix}"
    )


def check_model(adapter: IPAdapter, model: ModelBundle) -> list[str]:
    """The UNet's cross-attention names, after checking the adapter fits them."""
    check_family(adapter, model)
    families.of(model).refuse_adapter(families.IP_ADAPTER, f"ip_adapter {adapter.name!r}")
    if families.of(model).adapter_refusal(families.IP_ADAPTER):
        raise ValueError(
            f"ip_adapter: '{adapter.name}' cannot be applied to the model '{model.name}', which is the SDXL "
            "refiner: IP-Adapters are made for base models (SDXL ones for SDXL base's 2048-wide "
            "cross-attention; the refiner's is 1280 wide) and none exists for the refiner. Apply the "
            "IP-Adapter to the base model (the sampler before the hand-off) and connect the refiner's "
            "MODEL to its sampler directly."
        )
    unet = model.unet
    names = cross_attention_names(unet)
    cross = getattr(unet.config, "cross_attention_dim", None)
    fits = len(names) == adapter.weights.num_layers and cross == adapter.cross_attention_dim
    if fits:
        for index, name in enumerate(names):
            attn = unet.get_submodule(name[: -len(".processor")])
            if tuple(attn.to_k.weight.shape) != tuple(adapter.weights.to_k_ip[index].shape):
                fits = False
                break
    if not fits:
        raise ValueError(
            f"ip_adapter: '{adapter.name}' was made for a UNet with {adapter.weights.num_layers} cross-attention "
            f"layers and {adapter.cross_attention_dim}-wide text embeddings, but the model '{model.name}' "
            f"({model.family}) has {len(names)} layers and {cross}: use an IP-Adapter of the model's family "
            "(ip-adapter_sd15* for SD1.x, ip-adapter*_sdxl* for SDXL)"
        )
    return names


# ------------------------------------------------------------------ apply
def apply_ip_adapter(
    model: ModelBundle,
    adapter: IPAdapter,
    *,
    images: Optional[torch.Tensor] = None,
    embeds: Optional[ImageEmbeds] = None,
    weight: float = 1.0,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    weight_mode: str = STANDARD,
    prepare: Optional[Prepare] = None,
    device: Optional[torch.device] = None,
    negative_images: Optional[torch.Tensor] = None,
) -> ModelBundle:
    """A new DS_MODEL whose patches end with this adapter; `model` is untouched.

    `negative_images`: what CFG's negative rows see instead of the default
    (zeros / an all-zero picture for h94 adapters, a black picture for Flux).
    """
    if not isinstance(model, ModelBundle):
        raise ValueError(f"model must be a DS_MODEL, got {type(model).__name__}")
    if adapter.target in (FLUX_TARGET, SD3_TARGET):
        hook_class = _check_transformer(model, adapter, weight_mode)
    else:
        hook_class = IPAdapterHook
        check_model(adapter, model)
        if model.family != SDXL and weight_mode != STANDARD:
            layer_scales(model.unet, model.family, weight, weight_mode)  # raises with the message
    if (images is None) == (embeds is None):
        raise ValueError("give either image (reference pictures) or image_embeds, not both or neither")
    if negative_images is not None and embeds is not None:
        raise ValueError("negative_image goes with image (reference pictures), not with image_embeds")
    if embeds is None:
        embeds = encode_images(adapter.encoder, images, adapter.kind, device=device, prepare=prepare,
                               negative_picture=adapter.negative_picture, negative_images=negative_images,
                               zero_negative=adapter.zero_negative)
    hook = hook_class(
        adapter, embeds, weight=weight, start_percent=start_percent, end_percent=end_percent,
        mask=mask, weight_mode=weight_mode, prepare=prepare,
    )
    return model.with_patch(hook)


def _check_transformer(model: ModelBundle, adapter: IPAdapter, weight_mode: str) -> type:
    """A Flux.1 or SD3 adapter's checks before anything runs; the hook class that applies it."""
    check_family(adapter, model)
    families.of(model).refuse_adapter(families.IP_ADAPTER, f"ip_adapter {adapter.name!r}")
    if adapter.target == SD3_TARGET:
        from .ip_adapter_sd3 import SD3IPAdapterHook, check_sd3_fit

        check_sd3_fit(adapter, model)
        hook, where = SD3IPAdapterHook, "the SD3.5 IP-Adapter acts on every attention layer"
    else:
        from .ip_adapter_flux import FluxIPAdapterHook, check_flux_fit

        check_flux_fit(adapter, model)
        hook, where = FluxIPAdapterHook, "the Flux.1 IP-Adapter acts on every double-stream block"
    if weight_mode != STANDARD:
        raise ValueError(
            f"weight_mode: '{weight_mode}' targets SDXL's style/layout blocks; {where}: use weight_mode 'standard'"
        )
    return hook
