# evolution-listener: every command a developer or operator needs, self-installing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: install test unit lint migrate run demo bench bench-quick simulator clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## virtualenv with the package and its dev/test tools

test: $(STAMP) ## the whole suite on a real PostgreSQL (TEST_DATABASE_URL, Docker, or embedded)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP) ## pure tests only, no database
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, mypy (strict on listener/) and the import contracts
	$(BIN)/ruff check listener tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

migrate: $(STAMP) ## apply SQL migrations to DATABASE_URL
	$(BIN)/evolution-listener migrate

run: $(STAMP) ## run the service with the environment's configuration
	$(BIN)/evolution-listener run

demo: $(STAMP) ## embedded PostgreSQL + simulator + service + synthetic signups, then a summary
	$(BIN)/evolution-listener demo

bench: $(STAMP) ## throughput/latency figures -> bench/results/<date>-<host>.json
	$(BIN)/python bench/run.py

bench-quick: $(STAMP) ## a small version of every benchmark case (under a minute)
	$(BIN)/python bench/run.py --quick

simulator: $(STAMP) ## the Evolution API simulator on 127.0.0.1:8080
	$(BIN)/evolution-listener simulator

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build *.egg-info
