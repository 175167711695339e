# Install into a local virtual environment and run the demo or the tests.
#   make demo   install, then run the whole pipeline offline at toy scale (config/demo.yaml)
#   make test   install, then lint (ruff, snakefmt, snakemake --lint) and run the test suite
#   make quick  the quick tier (under 3 minutes): the library's maths and the config checks
#               (tests marked `quick`), a loop to run while editing
#   make unit   the tests that are neither slow nor need Slurm; make lint: the linters only
#   make faults the fault tests only, rewriting the tracked fault report docs/faults.md
# The tests run on two workers (pytest-xdist, WORKERS=2; WORKERS=0 runs them in one process; make
# faults always does); every run ends with its ten slowest tests.

VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
CORES ?= all
WORKERS ?= 2
# a test file runs on one worker, the longest files first; the Slurm tests take the cluster in turns
# and the tiny end-to-end run is made once (tests/conftest.py)
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder
export PATH := $(BIN):$(PATH)

.PHONY: install demo test quick unit lint faults bench clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --rerun-incomplete

# the fault report of a full run goes to results/faults.md (untracked)
test: lint
	$(PYTEST)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint
	$(BIN)/snakemake --lint --configfile config/demo.yaml

quick: install
	$(PYTEST) -m "quick and not slow and not slurm"

unit: install
	$(PYTEST) -m "not slow and not slurm"

# in one process: the report quotes the first characters of each message, whose temporary paths
# are longer under pytest-xdist (.../popen-gw0/...) and would cut the tracked report differently
faults: install
	AOT_FAULT_REPORT=docs/faults.md $(BIN)/python -m pytest -q --fault-tests

bench: install
	$(BIN)/python bench/run.py

clean-demo:
	rm -rf results/demo logs/demo benchmarks/demo
