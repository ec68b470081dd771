"""Tiny SD3 / Flux LoRA files built in code, in the spellings users meet.

`peft_lora` writes diffusers' own format (transformer.* / text_encoder.*
keys, lora_A / lora_B, no alpha: scale 1) for the attention and feed-forward
layers of a tiny transformer and its CLIP-L; `kohya_flux_from_peft` spells a
Flux LoRA the way kohya / sd-scripts do (fused img/txt qkv, alpha), built so
that diffusers' converter gives back the peft layers exactly.
"""
from __future__ import annotations

import torch

# Layers a LoRA trainer targets in SD3 / Flux transformers (diffusers names).
DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
          "attn.add_v_proj", "attn.to_add_out", "ff.net.2", "ff_context.net.2")
SINGLE = ("proj_out",)
TEXT = ("self_attn.q_proj", "self_attn.v_proj", "mlp.fc1")


def _pair(gen, weight, rank, magnitude, out: dict, key: str, down=None):
    down = down if down is not None else torch.randn(rank, weight.shape[1], generator=gen) * magnitude
    out[f"{key}.lora_A.weight"] = down.contiguous()
    out[f"{key}.lora_B.weight"] = (torch.randn(weight.shape[0], rank, generator=gen) * magnitude).contiguous()


def peft_lora(transformer, text_encoder=None, seed=0, rank=4, magnitude=0.3, shared_qkv=False) -> dict:
    """diffusers/peft LoRA tensors for these modules; shared_qkv: one lora_A for q, k, v (as kohya's fused qkv)."""
    gen = torch.Generator().manual_seed(seed + 900)
    out: dict = {}
    for name, module in transformer.named_modules():
        block = name.split(".")[0]
        wanted = DOUBLE if block == "transformer_blocks" else SINGLE if block == "single_transformer_blocks" else ()
        if not name.endswith(wanted) or not wanted:
            continue
        down = None
        if shared_qkv and name.endswith(("to_k", "to_v", "add_k_proj", "add_v_proj")):
            first = name.rsplit(".", 1)[0] + (".to_q" if name.endswith(("to_k", "to_v")) else ".add_q_proj")
            down = out[f"transformer.{first}.lora_A.weight"]
        _pair(gen, module.weight, rank, magnitude, out, f"transformer.{name}", down)
    if text_encoder is not None:
        for name, module in text_encoder.named_modules():
            if name.endswith(TEXT):
                _pair(gen, module.weight, rank, magnitude, out, f"text_encoder.{name}")
    return out


def kohya_flux_from_peft(peft: dict, alpha: float = 4.0) -> dict:
    """The same LoRA in kohya's Flux spelling (made by peft_lora(..., shared_qkv=True)).

    kohya fuses q, k, v into one `qkv` layer: one down matrix and the three
    up matrices stacked. Its alpha scales by alpha / rank, which diffusers'
    converter bakes into the weights: the up matrices here are divided by
    it so the converted LoRA equals `peft`.
    """
    out: dict = {}
    rank = next(v for k, v in peft.items() if k.endswith("lora_A.weight")).shape[0]
    scale = alpha / rank

    def put(key, down, up):
        out[f"{key}.lora_down.weight"] = down.contiguous()
        out[f"{key}.lora_up.weight"] = (up / scale).contiguous()
        out[f"{key}.alpha"] = torch.tensor(alpha)

    def get(module):
        return peft[f"transformer.{module}.lora_A.weight"], peft[f"transformer.{module}.lora_B.weight"]

    blocks = sorted({int(k.split(".")[2]) for k in peft if k.startswith("transformer.transformer_blocks.")})
    for i in blocks:
        base = f"transformer_blocks.{i}"
        for fused, parts in (("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
                             ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))):
            downs, ups = zip(*(get(f"{base}.{p}") for p in parts))
            put(f"lora_unet_double_blocks_{i}_{fused}", downs[0], torch.cat(ups))
        for kohya, module in (("img_attn_proj", "attn.to_out.0"), ("txt_attn_proj", "attn.to_add_out"),
                              ("img_mlp_2", "ff.net.2"), ("txt_mlp_2", "ff_context.net.2")):
            put(f"lora_unet_double_blocks_{i}_{kohya}", *get(f"{base}.{module}"))
    singles = sorted({int(k.split(".")[2]) for k in peft if k.startswith("transformer.single_transformer_blocks.")})
    for i in singles:
        put(f"lora_unet_single_blocks_{i}_linear2", *get(f"single_transformer_blocks.{i}.proj_out"))
    for key, value in peft.items():
        if key.startswith("text_encoder.") and key.endswith("lora_A.weight"):
            module = key[len("text_encoder."):-len(".lora_A.weight")]
            if module.startswith("encoder."):  # transformers 5's flattened CLIP; kohya names text_model.
                module = "text_model." + module
            put("lora_te1_" + module.replace(".", "_"), value, peft[key.replace("lora_A", "lora_B")])
    return out


def xlabs_flux_from_peft(peft: dict) -> tuple[dict, dict]:
    """(the XLabs spelling, the peft layers it covers) of a peft_lora(..., shared_qkv=True) Flux LoRA.

    XLabs trains the attention only: `double_blocks.<i>.processor.qkv_lora1` (image q, k, v fused),
    `qkv_lora2` (text), `proj_lora1` / `proj_lora2` (outputs), `single_blocks.<i>.processor.proj_lora`; no alpha.
    """
    out, covered = {}, {}

    def put(key, module):
        a, b = (peft[f"transformer.{module}.lora_{x}.weight"] for x in "AB")
        out[f"{key}.down.weight"], out[f"{key}.up.weight"] = a, b
        covered[f"transformer.{module}.lora_A.weight"], covered[f"transformer.{module}.lora_B.weight"] = a, b

    blocks = sorted({int(k.split(".")[2]) for k in peft if k.startswith("transformer.transformer_blocks.")})
    for i in blocks:
        base = f"transformer_blocks.{i}"
        for fused, parts in (("qkv_lora1", ("attn.to_q", "attn.to_k", "attn.to_v")),
                             ("qkv_lora2", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))):
            for part in parts:
                put(f"unused.{part}", f"{base}.{part}")
            out[f"double_blocks.{i}.processor.{fused}.down.weight"] = peft[f"transformer.{base}.{parts[0]}.lora_A.weight"]
            out[f"double_blocks.{i}.processor.{fused}.up.weight"] = torch.cat(
                [peft[f"transformer.{base}.{p}.lora_B.weight"] for p in parts])
        put(f"double_blocks.{i}.processor.proj_lora1", f"{base}.attn.to_out.0")
        put(f"double_blocks.{i}.processor.proj_lora2", f"{base}.attn.to_add_out")
    singles = sorted({int(k.split(".")[2]) for k in peft if k.startswith("transformer.single_transformer_blocks.")})
    for i in singles:
        put(f"single_blocks.{i}.processor.proj_lora", f"single_transformer_blocks.{i}.proj_out")
    return {k: v.contiguous() for k, v in out.items() if not k.startswith("unused.")}, covered


def control_lora(transformer, seed=0, rank=4, magnitude=0.3, bias=True) -> dict:
    """A FLUX.1 control LoRA (as BFL's Canny / Depth dev LoRAs, in diffusers' names) for a dev transformer.

    The usual layers' updates, an x_embedder update taking twice the packed
    input (latents + control latents), lora_B biases on every layer (bias: as
    BFL trained them; peft gives all of a LoRA's layers a bias or none), and
    whole q/k RMSNorm weights for every block, which replace the model's.
    """
    gen = torch.Generator().manual_seed(seed + 1900)
    out = peft_lora(transformer, seed=seed, rank=rank, magnitude=magnitude)
    embedder = transformer.x_embedder.weight
    wide = torch.empty(embedder.shape[0], 2 * embedder.shape[1])
    _pair(gen, wide, rank, magnitude, out, "transformer.x_embedder")
    if bias:
        for key in [k for k in out if k.endswith("lora_B.weight")]:
            out[key[: -len("weight")] + "bias"] = torch.randn(out[key].shape[0], generator=gen) * magnitude
    for name, param in transformer.named_parameters():
        if name.rsplit(".", 2)[-2] in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            out[f"transformer.{name}"] = (1.0 + torch.randn(param.shape, generator=gen) * magnitude).contiguous()
    return out
