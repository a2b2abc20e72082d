# VESPA archive workbook. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= data/demo
KERNEL := vespa

.DEFAULT_GOAL := help
.PHONY: help install demo demo-pg rehearse-year test test-heavy test-realistic lint lab bench bench-sync chaos clean

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
	$(PY) -m vespa_lib.sandbox.demo --out $(DEMO)

demo-pg: $(STAMP)  ## the demo on a throw-away production-shaped PostgreSQL, every write planned and approved
	$(PY) -m vespa_lib.sandbox.demo_pg --out data/demo-pg

rehearse-year: $(STAMP)  ## a school year night by night on PostgreSQL; REHEARSE_ARGS="--full" for every night
	$(PY) -m vespa_lib.sandbox.rehearsal --data data/rehearsal $(REHEARSE_ARGS)

test: $(STAMP)  ## run every test (PostgreSQL tests start their own throw-away server), then each runbook as JupyterLab runs it
	$(PY) -m ruff check vespa_lib tests scripts
	$(PY) -m pytest
	test -f data/demo/production.duckdb || $(MAKE) demo DEMO=data/demo
	$(PY) -m pytest --nbval-lax notebooks/  # kernel started in notebooks/, default parameters, on the demo data

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check vespa_lib tests scripts

lab: $(STAMP)  ## open JupyterLab on notebooks/ with the project kernel
	$(VENV)/bin/jupyter lab notebooks/

test-heavy: $(STAMP)  ## the tests too long for make test: realistic-scale import, demo-pg, the two January-close rehearsal tests
	$(PY) -m pytest -m heavy

test-realistic: $(STAMP)  ## the import runbook through vespa-ops at realistic scale (plan, apply, re-plan; also in make test-heavy)
	$(PY) -m pytest -m heavy tests/test_import_realistic.py -s

bench: $(STAMP)  ## benchmark at realistic scale: library phases, then the import through vespa-ops into PostgreSQL; BENCH_ARGS="--scale 10" for 10x
	$(PY) scripts/bench.py $(BENCH_ARGS)

bench-sync: $(STAMP)  ## benchmark sync_check at realistic scale (plan + apply <= 30 s): library calls, then through vespa-ops
	$(PY) scripts/bench_sync.py $(BENCH_SYNC_ARGS)

chaos: $(STAMP)  ## SIGKILL (process + kernel) and crash-restart PostgreSQL during realistic imports; heavy, not in CI
	test -f data/chaos/realistic/truth.csv || $(PY) -m vespa_lib.sandbox.synth --out data/chaos/realistic --scale realistic
	$(PY) scripts/chaos.py --data data/chaos/realistic --out data/chaos/run $(CHAOS_ARGS)

clean:  ## remove generated data and the virtual environment (outputs/ is kept: it is evidence)
	rm -rf $(VENV) data .pytest_cache .ruff_cache
