# evolution-listener: every command a developer or operator needs, self-installing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PEER_STAMP := $(VENV)/.installed-peer
PYTEST_ARGS ?=

.PHONY: install test unit lint lint-rules dist migrate run demo bench bench-quick bench-peer profile simulator clean

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

lint: $(STAMP) lint-rules ## ruff, mypy (strict on listener/), the import contracts, promtool on the alert rules
	$(BIN)/ruff check listener tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

RULES := deploy/prometheus/evolution-listener.rules.yml
RULE_TESTS := deploy/prometheus/evolution-listener.rules.test.yml

# promtool comes with Debian/Ubuntu's `prometheus` package: installed here when missing (as
# root, or through sudo); skipped with a message where there is no apt-get.
lint-rules: ## promtool check rules + promtool test rules (installs promtool with apt if missing)
	@if ! command -v promtool >/dev/null 2>&1; then \
	    if command -v apt-get >/dev/null 2>&1; then \
	        SUDO=; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	        echo "promtool missing: installing Debian's prometheus package"; \
	        $$SUDO apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	    else \
	        echo "SKIPPED: promtool not found and no apt-get here; install prometheus (promtool) to lint the alert rules"; \
	        exit 0; \
	    fi; \
	fi; \
	promtool check rules $(RULES) && promtool test rules $(RULE_TESTS)

dist: $(STAMP) ## wheel + sdist in dist/ (the wheel is built from the sdist; it carries sql/ and deploy/)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	@ls -l dist

migrate: $(STAMP) ## apply SQL migrations to DATABASE_URL
	$(BIN)/evolution-listener migrate

run: $(STAMP) ## run the service with the environment's configuration
	$(BIN)/evolution-listener run

demo: $(STAMP) ## embedded PostgreSQL + simulator + service + synthetic signups, then a summary
	$(BIN)/evolution-listener demo --servers 2

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
