# The browser side: the TypeScript client (@chatmesh/client, npm workspace sdk/ts)
# and the web page the regional edges serve (web/index.html + web/app.js).
# Included by the top-level Makefile after mk/gen.mk (NPM, NODE_STAMP).
# web/app.js is a build output (git-ignored by web/.gitignore): `up` and `test` need it.

WEB_BUNDLE := web/app.js
WEB_SOURCES := $(wildcard web/src/*.ts sdk/ts/src/*.ts gen/ts/chatmesh/v1/*.ts) web/tsconfig.json

.PHONY: web web-typecheck sdk-test

web: $(WEB_BUNDLE) ## Build the web page's bundle web/app.js (esbuild; git-ignored)

$(WEB_BUNDLE): $(NODE_STAMP) $(WEB_SOURCES)
	$(NPM) run --silent build:web

web-typecheck: $(NODE_STAMP) ## tsc --noEmit (strict) over gen/ts, the TS client (sdk/ts) and web/src
	$(NPM) run --silent typecheck

sdk-test: $(NODE_STAMP) ## Unit tests of the TS client (node --test; no servers)
	$(NPM) test --silent --workspace @chatmesh/client
