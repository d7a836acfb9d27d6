# Two entry points for a fresh machine: `make demo` (set up + run the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev,litemini,emojishift,server]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python pipeline/train.py

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check dive pipeline tests benchmarks

# What CI runs before the tests: lint, formatting, and types of the method library (settings: pyproject.toml).
check: lint
	$(BIN)/ruff format --check dive pipeline tests benchmarks
	$(BIN)/mypy dive
