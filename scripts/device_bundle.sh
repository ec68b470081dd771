#!/usr/bin/env bash
# Build .device/: what the GPU machine lacks for `scripts/device_bench.sh`.
#
# Why: the lent GPU machine (see docs/benchmark.md, "GPU") has torch,
# transformers, huggingface_hub, safetensors, accelerate and peft, but no
# diffusers, no ComfyUI and no network. This bundles, under 64 MiB:
#   wheels/   diffusers (same version as here), torchsde + trampoline
#             (ComfyUI's samplers), websocket-client (the test harness),
#             pydantic and its needs (the pack's A1111 routes);
#   stubs/    `av`: ComfyUI's comfy_api imports PyAV at start-up for its
#             video types only (a 40 MB wheel); the stub gives those names.
#             `comfyui_frontend_package`: ComfyUI exits at start-up without
#             a frontend; the benchmark talks to the API only;
#   comfyui.tar.gz  this environment's ComfyUI tree without tests, caches
#             and the tokenizers of models the benchmark does not load.
# The machine's Python is 3.12 (wheels are pure Python here, so any works).
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="$(bash scripts/env_path.sh)"
COMFY="${COMFYUI_PATH:-$ENV_DIR/comfyui}"
PY="$ENV_DIR/venv/bin/python"
D=.device
rm -rf "$D" && mkdir -p "$D/wheels" "$D/stubs"

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$D/wheels" \
  "diffusers==$("$PY" -c 'import diffusers; print(diffusers.__version__)')" \
  torchsde==0.2.6 trampoline==0.1.2 websocket-client==1.9.2 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0

# PyAV stand-in: any attribute is a placeholder class (used in type hints only
# by what the benchmark runs); submodules imported by name exist.
mkdir -p "$D/stubs/av/subtitles"
STUB='"""Stand-in for PyAV on the benchmark machine (scripts/device_bundle.sh): names only."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})
'
for f in av/__init__.py av/container.py av/subtitles/__init__.py av/subtitles/stream.py; do
  printf '%s' "$STUB" > "$D/stubs/$f"
done
printf '__version__ = "0.0.0"\n' >> "$D/stubs/av/__init__.py"
mkdir -p "$D/stubs/comfyui_frontend_package/static"
printf '"""Stand-in frontend for the API-only benchmark server."""\n' > "$D/stubs/comfyui_frontend_package/__init__.py"
printf '<!doctype html><title>benchmark server</title>\n' > "$D/stubs/comfyui_frontend_package/static/index.html"

tar -C "$COMFY" -czf "$D/comfyui.tar.gz" \
  --exclude=__pycache__ --exclude=./tests --exclude=./tests-unit --exclude='./comfy/text_encoders/*_tokenizer' \
  --exclude=./models --exclude=./output --exclude=./input --exclude=./user --exclude=./custom_nodes .
du -sh "$D" "$D"/*
