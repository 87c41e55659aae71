# One entry point for people and CI. `make run` serves the API, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch comes from pip first: these builds lie on the development machines' disk (see README).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: run test lint openapi bench demo-assets clean wheelhouse gpu-check

$(STAMP): pyproject.toml client/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ./client
	$(PIP) install -q -e '.[test,bench,local]'
	@touch $(STAMP)

run: $(STAMP)
	@$(PY) -m service.tools.launch

test: $(STAMP)
	$(PY) -m pytest -q

# ruff (lint + format check) and mypy, configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

openapi: $(STAMP)
	$(PY) -m service.tools.openapi_snapshot

demo-assets: $(STAMP)
	$(VENV)/bin/gif demo-assets --out demo

bench: $(STAMP)
	$(PY) -m bench.run_all

# --- GPU hosts (often air-gapped; README, "On a GPU host") -------------------------------------------
# `make wheelhouse PYTHON_VERSION=3.12` here: every dependency but torch/torchvision as wheels in $(WHEELHOUSE)/
# (WHEELHOUSE_EXTRAS: the project's extras; WHEELHOUSE_EXCLUDE: distributions the host already has).
# `make gpu-check` there: a venv on the host's python3 that sees its torch, the project installed into it (from
# $(WHEELHOUSE)/ with --no-index when that folder holds wheels), then the acceptance check (bench/gpu_check.py).
PYTHON_VERSION ?= 3.12
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_EXTRAS ?= test,bench,local
WHEELHOUSE_EXCLUDE ?=
GPU_VENV ?= .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_CHECK_ARGS ?=
OFFLINE = $(if $(wildcard $(WHEELHOUSE)/*.whl),--no-index --find-links $(WHEELHOUSE))

wheelhouse:
	$(PYTHON) -m bench.wheelhouse --python-version $(PYTHON_VERSION) --extras '$(WHEELHOUSE_EXTRAS)' \
		--out $(WHEELHOUSE) $(if $(strip $(WHEELHOUSE_EXCLUDE)),--exclude $(WHEELHOUSE_EXCLUDE))

$(GPU_VENV)/.gpu-installed: pyproject.toml client/pyproject.toml
	@test -x $(GPU_PY) || $(PYTHON) -m venv --system-site-packages $(GPU_VENV) \
		|| $(PYTHON) -m venv --system-site-packages --without-pip $(GPU_VENV)
	@$(GPU_PY) -c "import torch, torchvision" || { echo "gpu-check runs on $(PYTHON)'s own torch and torchvision: install them first" >&2; exit 1; }
	$(GPU_PY) -m pip install -q $(OFFLINE) 'setuptools>=68' wheel
	$(GPU_PY) -m pip install -q $(OFFLINE) --no-build-isolation -e ./client -e '.[local]' 'pytest>=8'
	@touch $@

gpu-check: $(GPU_VENV)/.gpu-installed
	$(GPU_PY) -m bench.gpu_check $(GPU_CHECK_ARGS) \
		--command "make gpu-check$(if $(strip $(GPU_CHECK_ARGS)), GPU_CHECK_ARGS='$(strip $(GPU_CHECK_ARGS))')"

clean:
	rm -rf $(VENV) $(GPU_VENV) var demo .pytest_cache
