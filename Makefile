# LLM4MSR: offline/online LLM-enhanced multi-scenario recommendation.
# `make demo` runs the main job end to end; `make test` runs the test suite. Both set up first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# cpu (default) or gpu: which requirements set `make setup` installs.
TARGET ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
REQS := requirements/$(TARGET).txt
STAMP := $(VENV)/.setup-$(TARGET)
PYTEST_ARGS ?=

.PHONY: setup demo test lint format bench train clean help

help:
	@echo "make setup   virtualenv with pinned deps ($(REQS)) + redis-server if missing"
	@echo "make demo    main job end to end on the embedded defaults"
	@echo "make test    the test suite (real redis, vLLM, onnxruntime, Prefect)"
	@echo "make lint    ruff check + format check"
	@echo "make bench   benchmarks (results under docs/benchmarks/)"
	@echo "make train   train the default model (STAR + LLM4MSR) on the default data"

setup: $(STAMP)

$(STAMP): requirements/base.txt requirements/nodeps.txt $(REQS) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -r $(REQS)
	$(BIN)/pip install --no-deps -r requirements/nodeps.txt
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	command -v redis-server >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }
	touch $@

demo: setup
	$(BIN)/llm4msr demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/llm4msr bench all

train: setup
	$(BIN)/llm4msr train --out artifacts/runs/default

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
