# Code generation: contracts in proto/ -> committed code in gen/ (tools/gen.py does the work).
# Included by the top-level Makefile, which defines VENV, PY, BIN and $(VENV)/.installed.

NPM ?= npm
# Lives inside node_modules so that deleting node_modules also forgets the install.
NODE_STAMP := node_modules/.chatmesh-npm-ci.stamp

.PHONY: gen gen-check lint-proto node-deps

gen: $(VENV)/.installed $(NODE_STAMP) ## Regenerate gen/ from proto/ (buf lint, buf generate, protoc; Python, SDK, TS)
	$(PY) -m tools.gen

gen-check: $(VENV)/.installed $(NODE_STAMP) ## Fail, listing the files, if gen/ is not what `make gen` produces
	$(PY) -m tools.gen --check

lint-proto: $(VENV)/.installed ## buf lint, and buf breaking against main (skipped while main has no proto/)
	$(PY) -m tools.gen --lint

node-deps: $(NODE_STAMP) ## Install the pinned npm devDependencies (npm ci) when package-lock.json changed

$(NODE_STAMP): package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	@touch $@
