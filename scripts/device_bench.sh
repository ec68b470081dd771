#!/usr/bin/env bash
# The side-by-side benchmark on the lent GPU machine (one call of the device tool).
#
#   run: bash scripts/device_bench.sh      (carry: .device; build it first
#        here with scripts/device_bundle.sh)
#
# Installs the carried wheels offline into /tmp/site (the machine's own torch,
# transformers, huggingface_hub, safetensors, accelerate, peft stay), unpacks
# ComfyUI, builds the full-size random SD1.5 and SDXL models (in parallel, on
# the machine's CPUs), then runs tests/benchmarks/test_sd15_side_by_side.py
# for SD1.5 at 512x512 and SDXL at 1024x1024 in float16 (the CUDA defaults).
# Reports (md + json), the log and the server logs land in $OUT (at most 8
# files come back). DS_DEVICE_BUDGET_S (default 540) bounds the whole script:
# SDXL gets what SD1.5 left.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
BUDGET=${DS_DEVICE_BUDGET_S:-540}
OUT=${OUT:-/tmp/ds_bench_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

PY=${PYTHON:-python3}
if [ -d .device/wheels ]; then
  # DS_DEVICE_WHEELS: a subset (the local rehearsal leaves out the cp312-only pydantic_core)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    ${DS_DEVICE_WHEELS:-.device/wheels/*.whl} || exit 1
  export PYTHONPATH="/tmp/site:$PWD/.device/stubs${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${COMFYUI_PATH:-}" ]; then
  mkdir -p /tmp/comfyui && tar -xzf .device/comfyui.tar.gz -C /tmp/comfyui || exit 1
  export COMFYUI_PATH=/tmp/comfyui
fi
export DS_BENCH_CACHE=${DS_BENCH_CACHE:-/tmp/ds_bench_cache} DS_BENCH_OUT="$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DIFFUSERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  $PY -c 'import sys, torch, diffusers, transformers, huggingface_hub, safetensors, accelerate
print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
print("diffusers", diffusers.__version__, "transformers", transformers.__version__,
      "hub", huggingface_hub.__version__, "safetensors", safetensors.__version__, "accelerate", accelerate.__version__)'
  nproc; free -g | head -2
} 2>&1 | tee "$OUT/env.txt"

echo "[device] building models ($(left) s left)"
MODELS=${DS_DEVICE_MODELS:-sd15 sdxl}
pids=()
for m in $MODELS; do
  $PY tests/benchmarks/sd15_worker.py generate "$DS_BENCH_CACHE" "$m" > "/tmp/generate_$m.txt" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for m in $MODELS; do grep -h "^RESULT" "/tmp/generate_$m.txt" | cut -c1-400 || tail -20 "/tmp/generate_$m.txt"; done
echo "[device] models built at $(( $(date +%s) - T0 )) s"

for m in $MODELS; do
  limit=$(( $(left) - 10 ))
  if [ "$limit" -lt 60 ]; then echo "[device] no time left for $m"; break; fi
  echo "[device] $m: $limit s"
  reps_var="DS_DEVICE_REPS_$m"  # e.g. DS_DEVICE_REPS_sdxl=3 (else the test's CUDA default, 5)
  [ -n "${!reps_var:-}" ] && export DS_BENCH_REPS="${!reps_var}" || unset DS_BENCH_REPS
  DS_BENCH_MODEL=$m timeout -k 5 "$limit" $PY -m pytest tests/benchmarks/test_sd15_side_by_side.py \
    -s -p no:cacheprovider -m bench -x ${DS_DEVICE_PYTEST_ARGS:-}
  echo "[device] $m exit $? at $(( $(date +%s) - T0 )) s"
done
ls -la "$OUT"
