"""DSSampler: the one denoising loop, with ComfyUI's progress, previews and Cancel."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge
from .engine import families, hooks
from .engine.sampling import sample
from .engine.schedulers import SAMPLER_NAMES, SCHEDULE_TYPES, canonical_name_or_none
from .types import DSConditioning, DSModel, category

BATCH_SEED_MODES = ["increment", "fixed"]
MAX_SEED = 0xFFFFFFFFFFFFFFFF
END_AT_LAST_STEP = 10000


class DSSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSSampler",
            display_name="Diffusers Sampler",
            category=category("sampling"),
            description=(
                "Denoises a latent with the model, guided by the positive and negative prompts. "
                "An empty latent (Empty Latent Image) gives text-to-image; an encoded image with "
                "denoise below 1 gives image-to-image. Reproduces diffusers' pipelines for the "
                "same components, seed, sampler and steps."
            ),
            inputs=[
                DSModel.Input("model", tooltip="The MODEL output of Load Diffusers Model."),
                DSConditioning.Input("positive", tooltip="What the image should show (Diffusers Text Encode)."),
                DSConditioning.Input("negative", tooltip="What the image should avoid (Diffusers Text Encode)."),
                io.Latent.Input(
                    "latent_image",
                    tooltip="The starting latent: Empty Latent Image for text-to-image, or Diffusers VAE "
                    "Encode of a picture for image-to-image. Its batch size sets how many images are made.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                    tooltip="The noise seed. Image i of a batch uses seed + i (see batch_seed_mode).",
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Number of denoising steps."),
                io.Float.Input(
                    "cfg",
                    default=7.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale: how strongly to follow the prompt. "
                    "1 disables the negative prompt (and halves the work). Flux: keep 1 (its guidance is "
                    "Diffusers Flux Guidance); above 1 runs the negative prompt too (true CFG).",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=SAMPLER_NAMES,
                    default="Euler a",
                    tooltip="The sampler, by its A1111 name, mapped to the matching diffusers scheduler "
                    "(PLMS is diffusers' PNDM). SD3 and Flux are flow-matching models: only Euler "
                    "(FlowMatchEulerDiscrete) applies, other names are refused.",
                ),
                io.Combo.Input(
                    "schedule",
                    options=SCHEDULE_TYPES,
                    default="normal",
                    tooltip="Noise schedule: normal (the scheduler's own), karras, or exponential, "
                    "where the chosen sampler supports it.",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Image-to-image strength: 1 redraws fully, 0.5 keeps the composition, "
                    "0 returns the input latent unchanged.",
                ),
                io.Int.Input(
                    "start_step",
                    default=0,
                    min=0,
                    max=END_AT_LAST_STEP,
                    tooltip="First step to run. Above 0 the input latent is taken as already noised "
                    "(the second half of a base + refiner pair).",
                ),
                io.Int.Input(
                    "end_step",
                    default=END_AT_LAST_STEP,
                    min=1,
                    max=END_AT_LAST_STEP,
                    tooltip="Stop before this step and return the latent with its leftover noise "
                    "(for a refiner); 10000 runs to the end.",
                ),
                io.Int.Input(
                    "variation_seed",
                    default=0,
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                    tooltip="A1111's variation seed: a second noise mixed in by variation_strength.",
                ),
                io.Float.Input(
                    "variation_strength",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="How much of the variation seed's noise to mix in (0 = none, 1 = all).",
                ),
                io.Combo.Input(
                    "batch_seed_mode",
                    options=BATCH_SEED_MODES,
                    default="increment",
                    tooltip="increment: image i uses seed + i (each image reproducible on its own); "
                    "fixed: every image of the batch uses the same seed.",
                ),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent, for Diffusers VAE Decode.")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str, schedule: str, batch_seed_mode: str) -> bool | str:
        if canonical_name_or_none(sampler_name) is None:
            return f"sampler_name: '{sampler_name}' is not one of {SAMPLER_NAMES}."
        if schedule not in SCHEDULE_TYPES:
            return f"schedule: '{schedule}' is not one of {SCHEDULE_TYPES}."
        if batch_seed_mode not in BATCH_SEED_MODES:
            return f"batch_seed_mode: '{batch_seed_mode}' is not one of {BATCH_SEED_MODES}."
        return True

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent_image,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        schedule: str,
        denoise: float,
        start_step: int = 0,
        end_step: int = END_AT_LAST_STEP,
        variation_seed: int = 0,
        variation_strength: float = 0.0,
        batch_seed_mode: str = "increment",
    ) -> io.NodeOutput:
        # One request for everything the run needs (UNet, ControlNets, ...):
        # ComfyUI then makes room once instead of unloading the UNet to fit
        # a ControlNet requested later.
        extra = hooks.modules_of(hooks.collect(model, positive, negative, latent_image))
        comfy_bridge.load_to_compute_device([model.unet, *extra], per_step=True)
        device = comfy_bridge.module_device(model.unet)
        reporter = comfy_bridge.step_reporter(steps, families.of(model).latent_format.preview, device)
        result = sample(
            model,
            positive,
            negative,
            latent_image,
            seed=seed,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            schedule=schedule,
            denoise=denoise,
            start_step=start_step,
            end_step=None if end_step >= END_AT_LAST_STEP else end_step,
            variation_seed=variation_seed,
            variation_strength=variation_strength,
            batch_seed_mode=batch_seed_mode,
            device=device,
            on_step=reporter,
            should_stop=comfy_bridge.raise_if_interrupted,
        )
        return io.NodeOutput(result)


NODES = [DSSampler]
