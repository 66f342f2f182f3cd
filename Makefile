# make demo : set up .venv (Python >= 3.12, pinned dependencies) and run the workflow on the demo PPDB export
# make test : set up .venv and run the test suite
VENV  ?= .venv
CORES ?= 2
PY    := $(VENV)/bin/python
SMK   := $(VENV)/bin/snakemake --cores $(CORES)
DEMO_START := $(shell sed -n 's/^ *start: *"\{0,1\}\([0-9-]*\)"\{0,1\}.*/\1/p' config/config.yaml)

.PHONY: setup demo test lint clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml tools/find-python.sh
	@test -x $(PY) || "$$(tools/find-python.sh)" -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

demo: setup
	$(SMK) demo
	@test -e demo/dia_object_collection || $(SMK) bootstrap --config until=$(DEMO_START)
	$(SMK) daily
	$(SMK) weekly
	$(PY) -m ppdb_lc.cli summary demo/dia_object_collection

test: setup
	$(PY) -m pytest -q

lint: setup
	$(SMK) --lint

clean-demo:
	rm -rf demo .snakemake
