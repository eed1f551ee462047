# Two commands on a fresh machine with Python 3.11+:  make up  ·  make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMTOOL ?= promtool

.PHONY: up test promtool unit integration e2e cluster e2e-cov lint bench install clean

# Coverage: lines of the four service packages (pyproject.toml [tool.coverage.run] source).
# `make test` prints the unit + integration figure over all four packages (the table's TOTAL),
# then holds a floor of COV_FLOOR % over what those two layers are meant to cover: domain,
# actors and db whole (the thin Ray actor wrappers included), and serve_app less the modules
# in COV_FLOOR_OMIT, which run only inside Ray or against a deployed service, so that only the
# e2e layer executes them: the Serve deployment and its wiring to the actors (app.py,
# wiring.py), the routes and the request helpers they share (routes/, http.py), starting Ray
# and deploying (runtime.py) and the CLI that drives those (cli.py). builder.py (the Serve
# config builder, run by the Serve controller on a cluster) is run by no layer. The unit
# tests still load parts of these (the OpenAPI document, the CLI's argument parsing); that
# counts in the TOTAL above, not in the floor.
COV_FLOOR := 85
COV_FLOOR_OMIT := serve_app/app.py,serve_app/wiring.py,serve_app/routes/*,serve_app/http.py,serve_app/runtime.py,serve_app/cli.py,serve_app/builder.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Install, then run the whole service on its embedded PostgreSQL and Redis.
up: $(STAMP)
	$(BIN)/points up

## Check the Prometheus config and rules, run their promtool unit tests, install, then run
## every test layer (unit, integration, e2e, cluster). Fails on the first step that fails,
## on a layer that collects no test (pytest's exit 5), or on unit + integration coverage
## under the floor (see COV_FLOOR above).
test: promtool $(STAMP)
	$(BIN)/python -m pytest -q --cov --cov-report=term:skip-covered tests/unit tests/integration
	@printf 'Coverage floor (unit + integration, less COV_FLOOR_OMIT; %s%% required): ' $(COV_FLOOR)
	@$(BIN)/coverage report --format=total --precision=1 --fail-under=$(COV_FLOOR) \
	  --omit='$(COV_FLOOR_OMIT)'
	$(BIN)/python -m pytest -q tests/e2e
	$(BIN)/python -m pytest -q -m cluster tests/cluster

## The monitoring files (deploy/prometheus): the scrape config and the rules it loads are
## valid, and every alert fires / stays quiet as its tests say (deploy/prometheus/tests).
## Needs promtool (Debian: apt-get install --no-install-recommends prometheus; .ci/run
## installs it), or PROMTOOL=/path/to/promtool.
promtool:
	@command -v $(PROMTOOL) >/dev/null 2>&1 || { \
	  echo "make promtool: '$(PROMTOOL)' not found. Install Prometheus's promtool" \
	    "(Debian/Ubuntu: apt-get install --no-install-recommends prometheus)" \
	    "or run make with PROMTOOL=/path/to/promtool." >&2; exit 1; }
	$(PROMTOOL) check config deploy/prometheus/prometheus.yml
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml
	$(PROMTOOL) test rules deploy/prometheus/tests/*.yml

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

## A head and two worker nodes (each its own raylet) on this machine, Points deployed on
## them: shards spread, the books exact while a worker node dies, `points up` ending when
## its cluster's head dies (tests/cluster; about 2 minutes).
cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m cluster tests/cluster

## The e2e layer with coverage, figure only (no floor). Driver side only: the service itself
## runs in Ray worker processes (Serve replicas, shard actors), and coverage saves a process's
## data at its Python exit, which those workers do not reach: they end through Ray's native
## exit paths (an actor killed, the raylet stopping; read in Ray's source, not tried).
## COVERAGE_PROCESS_START would start measurement in them (coverage's .pth hook), but nothing
## would be saved. What the driver measures: runtime (start Ray, deploy) and the db / domain
## code that the tests' setup and ledger checks call in-process.
e2e-cov: $(STAMP)
	$(BIN)/python -m pytest -q --cov --cov-report=term:skip-covered tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m loadtests.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis .coverage .coverage.*
