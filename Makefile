# Install into a local virtual environment and run the demo or the tests.
#   make demo   install, then run the whole pipeline offline at toy scale (config/demo.yaml)
#   make test   install, then run the test suite (unit tests, workflow dry runs, end-to-end runs)

VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
CORES ?= all
export PATH := $(BIN):$(PATH)

.PHONY: install demo test unit bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --rerun-incomplete

test: install
	AOT_FAULT_REPORT=docs/faults.md $(BIN)/python -m pytest -q

unit: install
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

bench: install
	$(BIN)/python bench/run.py

clean-demo:
	rm -rf results/demo logs/demo benchmarks/demo
