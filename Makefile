# Install into a local virtual environment and run the demo or the tests.
#   make demo   install, then run the whole pipeline offline at toy scale (config/demo.yaml)
#   make test   install, then lint (ruff, snakefmt, snakemake --lint) and run the test suite
#   make unit   the fast tests only; make lint: the linters only
#   make faults the fault tests only, rewriting the tracked fault report docs/faults.md

VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
CORES ?= all
export PATH := $(BIN):$(PATH)

.PHONY: install demo test unit lint faults bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --rerun-incomplete

# the fault report of a full run goes to results/faults.md (untracked)
test: lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint
	$(BIN)/snakemake --lint --configfile config/demo.yaml

unit: install
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

faults: install
	AOT_FAULT_REPORT=docs/faults.md $(BIN)/python -m pytest -q --fault-tests

bench: install
	$(BIN)/python bench/run.py

clean-demo:
	rm -rf results/demo logs/demo benchmarks/demo
