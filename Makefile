# evolution-listener: every command a developer or operator needs, self-installing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PEER_STAMP := $(VENV)/.installed-peer
PYTEST_ARGS ?=

.PHONY: install test unit lint migrate run demo bench bench-quick bench-peer profile simulator clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(PEER_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,peer]'
	touch $(PEER_STAMP)

install: $(STAMP) ## virtualenv with the package and its dev/test tools

test: $(STAMP) ## the whole suite on a real PostgreSQL (TEST_DATABASE_URL, Docker, or embedded)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP) ## pure tests only, no database
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff and mypy (strict on listener/)
	$(BIN)/ruff check listener tests bench
	$(BIN)/mypy

migrate: $(STAMP) ## apply SQL migrations to DATABASE_URL
	$(BIN)/evolution-listener migrate

run: $(STAMP) ## run the service with the environment's configuration
	$(BIN)/evolution-listener run

demo: $(STAMP) ## embedded PostgreSQL + simulator + service + synthetic signups, then a summary
	$(BIN)/evolution-listener demo

bench: $(PEER_STAMP) ## throughput/latency figures, and vs pgqueuer -> bench/results/<date>-<host>.json
	$(BIN)/python bench/run.py

bench-quick: $(PEER_STAMP) ## a small version of every benchmark case (about a minute)
	$(BIN)/python bench/run.py --quick

bench-peer: $(PEER_STAMP) ## only the comparison with pgqueuer (about 4 minutes)
	$(BIN)/python bench/run.py --peer-only

profile: $(PEER_STAMP) ## py-spy of the service during a drain -> bench/results/profile-<label>.txt
	$(BIN)/python bench/profile_drain.py --label $(or $(LABEL),latest)

simulator: $(STAMP) ## the Evolution API simulator on 127.0.0.1:8080
	$(BIN)/evolution-listener simulator

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build *.egg-info
