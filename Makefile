# VESPA archive workbook. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= data/demo
KERNEL := vespa

.DEFAULT_GOAL := help
.PHONY: help install demo test lint lab bench bench-sync clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "VESPA workbook" > /dev/null
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package, its dependencies and the project kernel

demo: $(STAMP)  ## generate the synthetic snapshot and damaged database, run the runbooks, print the summary
	$(PY) -m vespa_lib.demo --out $(DEMO)

test: $(STAMP)  ## run every test (PostgreSQL tests start their own throw-away server), then each runbook as JupyterLab runs it
	$(PY) -m ruff check vespa_lib tests scripts
	$(PY) -m pytest
	test -f data/demo/production.duckdb || $(MAKE) demo DEMO=data/demo
	$(PY) -m pytest --nbval-lax notebooks/  # kernel started in notebooks/, default parameters, on the demo data

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check vespa_lib tests scripts

lab: $(STAMP)  ## open JupyterLab on notebooks/ with the project kernel
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)  ## benchmark at realistic scale (SPEC §9); BENCH_ARGS="--scale 10" for 10x
	$(PY) scripts/bench.py $(BENCH_ARGS)

bench-sync: $(STAMP)  ## benchmark the nightly sync_check at realistic scale (issue 5: plan + apply <= 30 s)
	$(PY) scripts/bench_sync.py

clean:  ## remove generated data and the virtual environment (outputs/ is kept: it is evidence)
	rm -rf $(VENV) data .pytest_cache .ruff_cache
