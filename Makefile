# chatmesh: one task runner for people and CI. `make help` lists the targets.
#
# Everything a target needs is installed by the target itself, and no more: the
# Python venv (pyproject.toml; `up` installs the runtime and the harness extra,
# the developer targets the dev extra), npm packages (package-lock.json),
# Toxiproxy (built once per machine from the Go module proxy into
# ~/.cache/chatmesh), and for the production stores that `test` and `bench` run,
# FerretDB (same) and the Cassandra jars (Maven Central, same cache); Chromium
# (Debian) for the browser test.

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

.PHONY: help install install-harness up down status logs test test-fast lint fmt bench tools toxiproxy chromium clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

# Two stamps: the harness set (`make up`) and the whole dev set (everything else);
# installing the dev set satisfies the harness one too.
$(VENV)/.installed-harness: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[harness]"
	@touch $@

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@ $(VENV)/.installed-harness

install: $(VENV)/.installed $(NODE_STAMP) ## Install every Python (dev extra) and npm dependency (idempotent)

install-harness: $(VENV)/.installed-harness $(NODE_STAMP) ## Install only what `make up` runs (runtime + harness extra, npm)

toxiproxy: $(VENV)/.installed-harness ## Build Toxiproxy once per machine (the WAN links of every mesh)
	$(PY) -m mesh.harness.prepare toxiproxy

tools: $(VENV)/.installed ## Fetch/build every server once per machine (Toxiproxy, FerretDB, Cassandra jars)
	$(PY) -m mesh.harness.prepare toxiproxy ferretdb cassandra

up: install-harness toxiproxy web ## Start a two-region mesh (TOPOLOGY=dev) in the background on embedded stores
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
