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

.PHONY: env run test bench

env:
	@bash scripts/setup_env.sh

run: env
	@$(PY) scripts/run_comfyui.py

# PYTEST_ARGS replaces the default selection, e.g. PYTEST_ARGS="tests/unit -q".
test: env
	@$(PY) -m pytest $(or $(PYTEST_ARGS),tests)

bench: env
	@$(PY) -m pytest tests/benchmarks -s -p no:cacheprovider -m bench $(PYTEST_ARGS)
