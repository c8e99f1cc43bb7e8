# The two commands of the README: `make run` and `make test`. Both set up everything
# they need on a fresh machine (Python 3.11+ venv, Python packages, the CDK CLI).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: run test lint bench synth clean

$(VENV)/.local-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[local]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.local-installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Run the product locally: moto-backed AWS, the API on :8080, demo data loaded.
run: $(VENV)/.local-installed
	$(VENV)/bin/cdp local --demo

## Run the whole test suite (unit, integration, infrastructure, end to end).
test: $(VENV)/.dev-installed node_modules/.installed
	$(PY) -m pytest

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check shared functions infra tests bench
	$(VENV)/bin/mypy shared/cdp infra bench
	for handler in functions/*/handler.py; do $(VENV)/bin/mypy $$handler || exit 1; done

bench: $(VENV)/.dev-installed
	$(PY) -m bench.pipeline

synth: $(VENV)/.dev-installed node_modules/.installed
	npx cdk synth --quiet

clean:
	rm -rf $(VENV) node_modules .build cdk.out
