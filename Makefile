PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-record test test-slow lint bench install

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mvcoding demo

# the demo, also writing experiments/results/demo.json: the numbers the README quotes (tests/test_demo.py)
demo-record: install
	$(BIN)/mvcoding demo --record

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python tools/bench/loader.py
