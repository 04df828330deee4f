# gymlab's two everyday commands (see README.md, Quick start):
#   make train   set up what is missing, then train the default agent (tabular Q on FrozenLake-v1)
#   make test    set up what is missing, then lint, type-check and run the whole test suite
# Setup is a virtual environment in .venv with torch 2.13.0 installed *first*: that exact release is the
# local CPU build; asking pip for plain `torch` or another release downloads a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gymlab-installed
TORCH  := torch==2.13.0

.PHONY: setup train test lint xvfb bench-loop

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

train: $(STAMP)
	$(BIN)/gymlab train tabular_q FrozenLake-v1

# Xvfb lets the window test open a real window; without it that one test skips with a reason.
xvfb:
	@command -v Xvfb >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq xvfb) >/dev/null 2>&1; } || true

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) xvfb lint
	$(BIN)/python -m pytest -n 2 --durations=15

bench-loop: $(STAMP)
	$(BIN)/python benchmarks/loop_overhead.py
