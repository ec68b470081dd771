"""Write the tiny random-weight demo models into a ComfyUI models folder.

No weights can be downloaded by this project, yet the shipped workflows name
real checkpoints. The demo models are the tests' tiny SD1.5 and SDXL models
saved under the real file names in the pack's demo folder
(`diffusers_studio_demo/checkpoints/v1-5-pruned-emaonly.safetensors`,
`.../sd_xl_base_1.0.safetensors`, `diffusers_studio_demo/diffusers/tiny-sd15/`,
the ControlNets, IP-Adapters and LoRAs), so every shipped workflow runs end to
end in seconds, on a CPU. They draw noise: the weights are random. Only the
pack's loaders list that folder (ComfyUI's native loaders cannot read these
files); a real checkpoint of the same name in `checkpoints/` is used instead.

Nothing is written when the folder already holds a checkpoint or a diffusers
model (use --force to write anyway). Needs COMFYUI_PATH (the CLIP tokenizer
and the LDM key layout come from ComfyUI); `make run` sets it.

    python scripts/make_demo_models.py ~/.cache/diffusers-studio/comfyui-base/models
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"

log = logging.getLogger("make_demo_models")


def harness_models():
    # The writer lives with the tests (tests/harness/models.py), which reuse
    # tests/tiny_models.py and tests/ldm_export.py: one definition of the models.
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    from harness import models

    return models


def make_demo_models(models_dir: Path, force: bool = False) -> list[Path]:
    """Write the demo models into `models_dir` unless it already holds a model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    models = harness_models()
    models_dir = Path(models_dir).expanduser()
    if not force and models.has_any_model(models_dir):
        log.info("%s already holds a model: nothing written", models_dir)
        return []
    log.warning(
        "Writing tiny RANDOM-WEIGHT demo models into %s (for the pack's loaders only). They run every shipped "
        "workflow but draw noise; put real checkpoints in %s for real pictures.",
        models.demo_dir(models_dir),
        models_dir / "checkpoints",
    )
    written = models.write_tiny_models(models_dir)
    if not models.ldm_export_available():
        log.warning("tests/ldm_export.py is missing: only the diffusers folder was written")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dir", type=Path, help="a ComfyUI models folder (it gets checkpoints/ and diffusers/)")
    parser.add_argument("--force", action="store_true", help="write even if the folder already holds a model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not os.environ.get("COMFYUI_PATH"):
        log.error("COMFYUI_PATH is not set: point it at a ComfyUI tree (make run sets it)")
        return 2
    make_demo_models(args.models_dir, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
