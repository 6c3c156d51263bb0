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

# two test processes: most tests wait on subprocesses or one core (pytest-xdist, a dev extra)
test: install
	$(BIN)/python -m pytest -q -n 2

test-slow: install
	$(BIN)/python -m pytest -q -n 2 -m slow

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python tools/bench/loader.py
