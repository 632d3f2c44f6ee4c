# One-command entry points. Each creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TF_EXTRA ?= cpu

.PHONY: demo test lint bench bench-quick server clean-venv constraints

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[$(TF_EXTRA),dev]'
	$(PY) -m pip check
	touch $(STAMP)

## demo: the main job on embedded defaults (synthetic data, local stores, local Beam runner)
demo: $(STAMP)
	$(VENV)/bin/nowcast demo

## server: a local Prefect server (SQLite, http://127.0.0.1:4200) serving every deployment over runs/demo
server: $(STAMP)
	$(VENV)/bin/nowcast server --workdir runs/demo

## test: the whole test suite
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

## bench: full-size benchmarks (slow); bench-quick: the smoke sizes CI runs
bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean-venv:
	rm -rf $(VENV)

constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable > requirements/constraints.txt
