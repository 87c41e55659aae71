# One entry point for people and CI. `make run` serves the API, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch comes from pip first: these builds lie on the development machines' disk (see README).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: run test lint openapi bench demo-assets clean

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

clean:
	rm -rf $(VENV) var demo .pytest_cache
