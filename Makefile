# Diffusers Studio: one-command setup, run, test and benchmark.
# The environment lives outside the clone (scripts/env_path.sh), keyed by the
# requirement files' hash; the first run builds it (a few minutes).

SHELL := /bin/bash
ENV_DIR := $(shell bash scripts/env_path.sh)
PY := $(ENV_DIR)/venv/bin/python
COMFYUI_PATH ?= $(ENV_DIR)/comfyui
export COMFYUI_PATH
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: env lock run test bench chromium redis cluster thumbnails

env:
	@bash scripts/setup_env.sh

# Resolve the requirement ranges afresh and rewrite requirements-lock.txt
# (on purpose, then `make test` and commit; `make env` installs the lock).
lock:
	@DS_LOCK=1 bash scripts/setup_env.sh

run: env
	@$(PY) scripts/run_comfyui.py

# Debian's Chromium for the browser tests (they skip, saying why, without it).
chromium:
	@bash scripts/ensure_chromium.sh

# Debian's redis-server for the cluster tests and `make cluster` (they skip, saying why, without it).
redis:
	@bash scripts/ensure_redis.sh

# Scale-out on this machine: redis-server, two CPU ComfyUI workers with the demo
# models, their Celery workers and the gateway on http://127.0.0.1:$${DS_CLUSTER_PORT:-8190}
# (docs/scale-out.md). Ctrl-C stops everything.
cluster: env redis
	@$(PY) scripts/run_cluster.py

# PYTEST_ARGS replaces the default selection, e.g. PYTEST_ARGS="tests/unit -q".
test: env chromium redis
	@$(PY) -m pytest $(or $(PYTEST_ARGS),tests)

bench: env
	@$(PY) -m pytest tests/benchmarks -s -p no:cacheprovider -m bench $(PYTEST_ARGS)

# Screenshots of every example workflow in the real editor (same-name .jpg).
thumbnails: env chromium
	@$(PY) scripts/make_thumbnails.py --screenshot txt2img_sd15
