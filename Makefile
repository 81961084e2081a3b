# hefl: encrypted federated learning for hospitals.
# `make demo` and `make test` install everything they need on first use.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Built Pyfhel wheels are cached here, outside the checkout, so fresh clones reuse them.
WHEEL_CACHE ?= $(HOME)/.cache/hefl/wheels
STAMP := $(VENV)/.hefl-installed
PYTEST_ARGS ?=
DEMO_ARGS ?=
OUT ?= out/demo

.PHONY: help install test demo lint format clean

help:
	@echo "make demo     run the main job: 4 hospitals, 10 encrypted FedAvg rounds on Diabetes-130"
	@echo "make test     run the whole test suite"
	@echo "make install  create $(VENV) and install everything (idempotent)"
	@echo "make lint     ruff and mypy"
	@echo "make clean    remove $(VENV), caches and demo output"

install: $(STAMP)

$(STAMP): pyproject.toml tools/build_pyfhel.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	wheel=$$($(BIN)/python tools/build_pyfhel.py --wheel-dir $(WHEEL_CACHE) --python $(BIN)/python) && \
	  $(BIN)/python -m pip install --quiet "$$wheel"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/hefl simulate --out $(OUT) $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy common coordinator hospital_node hefl

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache *.egg-info
