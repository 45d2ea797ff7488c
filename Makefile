# Two commands a fresh machine with Python 3.11 needs:  make demo  and  make test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
SPEC   ?= examples/tortoise-and-hare.yaml
# The repository root is the Dagster instance directory: its dagster.yaml keeps storage under data/.
export DAGSTER_HOME := $(CURDIR)

.PHONY: setup demo test dev bench clean-data

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,cluster]'
	touch $@

## Render a real spec end to end with the offline local provider.
demo: setup
	$(BIN)/pipeline render $(SPEC)

## Run the whole test suite: two pytest-xdist workers (the suite is CPU-bound on 2 cores; BENCHMARKS.md
## section 12); a module marked xdist_group runs on one worker, so its module-scoped Dagster stack starts once.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup

## The Dagster UI and daemon (sensors, schedules, backfills) on http://127.0.0.1:3000
dev: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## Every benchmark table (see BENCHMARKS.md).
bench: setup
	$(BIN)/python benchmarks/run_all.py

## Delete runtime output (media, cache, manifests, Dagster storage) but keep data/README.md.
clean-data:
	find data -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
