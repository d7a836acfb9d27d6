# Two entry points for a fresh machine: `make demo` (set up + run the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev,litemini,emojishift]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python pipeline/train.py

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check dive pipeline tests benchmarks
