# mockehr: `make up` runs the stack, `make test` runs the tests; each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# Two workers: the machine has two cores; every test is isolated (own database, own ports).
PYTEST_WORKERS ?= 2

.PHONY: install up test test-fast fuzz lint bench soak docs clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## up: start the stack (ehr :9000, authserver :9001, fhirserver :9002/fhir, CDS example :9003, smart-example :9004)
up: install
	$(VENV)/bin/mockehr up $(ARGS)

## test: the whole suite (unit, integration, e2e) on SQLite and PostgreSQL
test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(ARGS)

## fuzz: the property-based fuzz tests (tests/fuzz) with the "long" hypothesis profile: random, many
## more examples, failures saved in .hypothesis/ and replayed first (`make test` runs the "ci" profile)
fuzz: install
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -n $(PYTEST_WORKERS) tests/fuzz $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	$(PY) -m bench $(ARGS)

## docs: regenerate docs/cli.md (typer app) and docs/configuration.md (settings classes);
## tests/unit/test_generated_docs.py fails when they are stale
docs: install
	$(PY) -m tools.docgen

## soak: 200 concurrent users for 60 s against `mockehr up --replicas 2` (HAProxy, PostgreSQL,
## Redis); fails on an undocumented 5xx, a lost write or ≥ 0.1 % errors (docs/performance.md, Soak).
## ARGS="--users 50 --seconds 20 --json soak.json" changes it. Not part of `make test`.
soak: install
	$(PY) -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) .venv-interop .mockehr .pytest_cache .mypy_cache .ruff_cache test-artifacts tests/browser/jsapp/node_modules
