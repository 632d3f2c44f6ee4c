# One-command entry points. Each creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TF_EXTRA ?= cpu

.PHONY: catalogue demo test test-fast lint typecheck bench bench-quick server stack stack-down clean-venv constraints

# uv installs what pip would, from the same constraints, in a fraction of pip's time (CI: pip took
# about 6.5 minutes of a 30-minute budget); pip stays in the environment for `pip check`, `pip wheel`
# (tests/test_packaging.py) and `make constraints`. --compile-bytecode: unlike pip, uv writes no .pyc
# files, and where PYTHONDONTWRITEBYTECODE is set (as on this machine) no import writes them either, so
# every process compiled TensorFlow, Beam and Prefect from source: `nowcast ingest` of 8 frames took
# 10.5 s, 3.3 s compiled (the compile costs ~30 s once, at install).
UV_VERSION ?= 0.13.9
$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -c requirements/constraints.txt \
		-e '.[$(TF_EXTRA),dev]'
	$(PY) -m pip check
	touch $(STAMP)

## demo: the main job on embedded defaults (synthetic data, local stores, local Beam runner)
demo: $(STAMP)
	$(VENV)/bin/nowcast demo

## server: a local Prefect server (SQLite, http://127.0.0.1:4200) serving every deployment over runs/demo
server: $(STAMP)
	$(VENV)/bin/nowcast server --workdir runs/demo

## stack: the deployment on this machine (PostgreSQL-backed Prefect server, process worker, S3, dask)
stack: $(STAMP)
	$(VENV)/bin/nowcast stack up --folder runs/stack

stack-down: $(STAMP)
	$(VENV)/bin/nowcast stack down --folder runs/stack

## test: lint, type check and the whole test suite on TEST_WORKERS processes (pytest-xdist; a module with a
## module fixture runs on one worker); test-fast: the tests not marked slow
TEST_WORKERS ?= 2
test: lint typecheck
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: lint typecheck
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

## typecheck: mypy over the installed namespace; a link tree maps nowcast.* onto the repository's folders
typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/nowcast
	for f in nowcast/*.py; do ln -s ../../$$f .typecheck/nowcast/; done
	for d in flows model pipelines; do ln -s ../../$$d .typecheck/nowcast/$$d; done
	cd .typecheck && ../$(PY) -m mypy -p nowcast --config-file ../pyproject.toml

## bench: full-size benchmarks (slow); bench-quick: the smoke sizes CI runs
bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean-venv:
	rm -rf $(VENV)

constraints: $(STAMP)
	$(PY) -m pip freeze --exclude-editable > requirements/constraints.txt

## catalogue: regenerate docs/operations.md's fault catalogue from the tests marked `fault`
catalogue: $(STAMP)
	$(PY) -m tests.catalogue
