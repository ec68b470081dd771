#!/usr/bin/env bash
# Prints the folder of the development environment: a cache outside the clone,
# keyed by the hash of everything that decides its contents, so a fresh clone
# reuses a finished environment and a changed requirement builds a new one.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
key=$(cat "$here/requirements.txt" "$here/requirements-dev.txt" "$here/requirements-lock.txt" "$here/scripts/setup_env.sh" | sha256sum | cut -c1-12)
echo "${DS_ENV_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/diffusers-studio/env-$key}"
