"""Regional prompts on Flux: how clean does each method keep the outside of a region?

Two methods, on the tiny Flux dev of tests/tiny_dit.py (16x16 latents, the
left half a region, seed 3, 1/4/8 Euler steps):

- composition: the pack's RegionalHook (engine/regional.py), one extra row per
  region, velocities folded by the mask;
- masked joint attention (an experiment that lives only here): one row whose
  text is [base tokens, region tokens]; an attention mask lets the region's
  image tokens see only the region's text, the others only the base text,
  each prompt's text only its own tokens and its area's image tokens, every
  image token every image token. Installed as a wrapping attention processor
  for the run, restored after.

Metric (lower is cleaner): mean |method - base-only run| over the outside,
divided by mean |region-alone run - base-only run| there; and the same
closeness to the region-alone run inside. Printed (make bench, -s), never
asserted. Random tiny weights couple tokens weakly: the figures compare the
methods on the same model, they do not predict real checkpoints.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.bench

LATENT = 16


def _masked_attention_hook(region_cond, token_in_region):
    """A SamplingHook running one row with [base, region] text under the attention mask."""
    import torch

    from diffusers_studio.nodes.engine import hooks
    from diffusers_studio.nodes.engine.components import FLUX

    class Masked:
        def __init__(self, inner, mask):
            self.inner, self.mask = inner, mask

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None):
            return self.inner(attn, hidden_states, encoder_hidden_states, self.mask, image_rotary_emb)

    class Hook(hooks.SamplingHook):
        serves_families = (FLUX,)

        def begin(self, run, role):
            self.transformer = run.model.unet
            self.saved = dict(self.transformer.attn_processors)

        def before_unet(self, step, run, role):
            base = step.encoder_hidden_states
            region = region_cond.embeds.to(base).expand(base.shape[0], -1, -1)
            lb, lr, n = int(base.shape[1]), int(region.shape[1]), int(token_in_region.numel())
            inside = token_in_region.reshape(-1)
            size = lb + lr + n
            mask = torch.zeros(size, size, dtype=torch.bool)
            img = slice(lb + lr, size)
            mask[:lb, :lb] = True
            mask[lb:lb + lr, lb:lb + lr] = True
            mask[:lb, img] = ~inside[None, :]
            mask[lb:lb + lr, img] = inside[None, :]
            mask[img, img] = True
            mask[img, :lb] = ~inside[:, None]
            mask[img, lb:lb + lr] = inside[:, None]
            self.transformer.set_attn_processor(
                {name: Masked(proc, mask[None, None]) for name, proc in self.saved.items()}
            )
            step.encoder_hidden_states = torch.cat([base, region], dim=1)
            added = dict(step.added_cond_kwargs)
            added["txt_ids"] = torch.zeros(lb + lr, 3, dtype=added["txt_ids"].dtype, device=added["txt_ids"].device)
            step.added_cond_kwargs = added

        def end(self):
            self.transformer.set_attn_processor(self.saved)

    return Hook()


def test_outside_of_a_region_composition_vs_masked_attention(tmp_path):
    from dataclasses import replace

    import torch

    import tiny_dit
    import tiny_models
    from diffusers_studio.nodes.engine.loading import load_checkpoint
    from diffusers_studio.nodes.engine.regional import add_region
    from diffusers_studio.nodes.engine.sampling import sample
    from diffusers_studio.nodes.engine.text_encoding import encode_prompt

    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(tmp_path / "flux"), safe_serialization=True)
    model, text, _ = load_checkpoint(tmp_path / "flux", dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())
    base, car = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car")
    mask = torch.zeros(1, LATENT, LATENT)
    mask[..., : LATENT // 2] = 1.0
    tokens = torch.zeros(LATENT // 2, LATENT // 2, dtype=torch.bool)  # packed 2x2 tokens, row-major
    tokens[:, : LATENT // 4] = True
    half = LATENT // 2
    print("\nFlux dev (tiny), left half a region: outside drift / inside gap (fractions of region - base)")
    for steps in (1, 4, 8):
        def run(positive):
            latent = {"samples": torch.zeros(1, 16, LATENT, LATENT)}
            return sample(model, positive, None, latent, seed=3, steps=steps, cfg=1.0, sampler_name="Euler")["samples"]

        plain, alone = run(base), run(car)
        # The masked-attention row keeps the base's pooled CLIP prompt (a global AdaLN input), so
        # its inside is also compared with the region's text under the base's pooled prompt.
        alone_text = run(replace(car, pooled=base.pooled))
        scale_out = (alone - plain)[..., half:].abs().mean()
        for label, positive in (("composition", add_region(base, mask, car)),
                                ("masked attention", base.with_extra(_masked_attention_hook(car, tokens)))):
            got = run(positive)
            out = float((got - plain)[..., half:].abs().mean() / scale_out)
            inside = []
            for ref in (alone, alone_text):
                inside.append(float((got - ref)[..., :half].abs().mean() / (ref - plain)[..., :half].abs().mean()))
            print(f"  {steps} steps  {label:17s} outside {out:.4f}  inside {inside[0]:.4f} "
                  f"(vs region text with the base's pooled prompt {inside[1]:.4f})")
