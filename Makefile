# chatmesh: one task runner for people and CI. `make help` lists the targets.
#
# Everything a target needs is installed by the target itself: the Python venv
# (pyproject.toml), npm packages (package-lock.json), Toxiproxy and FerretDB
# (built once per machine from the Go module proxy into ~/.cache/chatmesh),
# Cassandra jars (Maven Central, same cache) and Chromium (Debian) for the
# browser test.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

TOPOLOGY ?= dev
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

include mk/gen.mk
include mk/web.mk

.PHONY: help install up down status logs test test-fast lint fmt bench tools chromium clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed $(NODE_STAMP) ## Install Python and npm dependencies (idempotent)

tools: $(VENV)/.installed ## Fetch/build the servers once per machine (Toxiproxy, FerretDB, Cassandra jars)
	$(PY) -c "from mesh.harness.servers.gotools import TOXIPROXY; print(TOXIPROXY.ensure())"
	$(PY) -m mesh.harness.servers.ferretdb build
	$(PY) -c "from mesh.harness.servers.cassandra import ensure_jars; print(ensure_jars())"

up: install tools web ## Start a two-region mesh (TOPOLOGY=dev) in the background on embedded stores
	$(BIN)/chatmesh up --topology $(TOPOLOGY)

down: ## Stop the mesh started by `make up`
	@test -x $(BIN)/chatmesh && $(BIN)/chatmesh down || true

status: ## Show the running mesh's endpoints
	$(BIN)/chatmesh status

logs: ## Follow the running mesh's logs
	tail -F .run/logs/*.log

chromium: ## Install Debian's Chromium for the browser tests (needs root)
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: install tools web chromium ## Run the whole test suite against real servers (browser included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## Unit tests only (no servers)
	$(PY) -m pytest -m "not mesh and not services and not cassandra and not mongo and not browser" $(PYTEST_ARGS)

lint: install lint-proto web-typecheck ## buf lint + breaking, ruff, mypy --strict, the import contract, tsc --noEmit
	$(BIN)/ruff check mesh services tools tests
	$(BIN)/ruff format --check mesh services tools tests
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install ## Format the Python code
	$(BIN)/ruff format mesh services tools tests
	$(BIN)/ruff check --fix mesh services tools tests

bench: install tools ## Measure the ADR targets (writes bench-results/, not part of `make test`)
	$(PY) -m tools.bench $(BENCH_ARGS)

.PHONY: chaos
chaos: install tools ## Fault suite on its own mesh (TOPOLOGY=dev|ha, CHAOS_ARGS="--schedule short --stores production --seed N"); writes chaos-results/, not part of `make test`
	$(PY) -m tools.chaos --topology $(TOPOLOGY) $(CHAOS_ARGS)

clean: down ## Remove build outputs and the run directory (keeps the venv and caches)
	rm -rf build .run bench-results test-results .pytest_cache .mypy_cache .ruff_cache

compose-config: $(VENV)/.installed ## Generate docker-compose files, deploy/$(TOPOLOGY)/ and git-ignored secrets
	$(PY) -m mesh.deploy.compose generate --topology $(TOPOLOGY)
	$(PY) -m mesh.deploy.compose secrets --topology $(TOPOLOGY)

compose-check: $(VENV)/.installed ## Fail if the committed compose/Envoy/NATS files are stale
	$(PY) -m mesh.deploy.compose generate --check
