PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean function-package bench system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/finops demo

# Azurite, the Azure Storage emulator, for the tests of the Blob upload (npm registry).
AZURITE := .cache/azurite/node_modules/.bin/azurite-blob
$(AZURITE):
	npm install --silent --no-audit --no-fund --prefix .cache/azurite azurite@3

# Microsoft's Kusto parser, which the simulator runs on every Resource Graph query (npm registry).
KUSTO := .cache/kusto/node_modules/@kusto/language-service-next/package.json
$(KUSTO):
	npm install --silent --no-audit --no-fund --prefix .cache/kusto @kusto/language-service-next@12.4.1

# PostgreSQL's server, Chromium and npm: installed as root, else one line says what to run
system-packages:
	@.ci/system-packages

# two workers: most tests wait on servers and subprocesses, not on the CPU
test: system-packages $(STAMP) $(AZURITE) $(KUSTO)
	$(BIN)/pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) finops.db reports/*.html reports/plans .finops-sim

# Azure Functions: the app folder with finops as a wheel beside it (see docs/scheduling.md).
function-package: $(STAMP)
	rm -rf jobs/azure_function/wheels
	$(BIN)/pip wheel --quiet --no-deps . -w jobs/azure_function/wheels

# the benchmark (not part of make test): 1k, 10k and 50k VMs on SQLite and PostgreSQL
bench: $(STAMP)
	$(BIN)/python bench/run.py
