# modelyard — every target sets up what it needs, from a bare machine with Python 3.11.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PROTO_SOURCES := $(shell find protos -name '*.proto')
PROTO_STAMP := modelyard/.generated
# Node.js tools (buf, Redocly CLI) and the Node.js example client, from the npm registry
# with their committed package-lock.json files.
NPM_CI := npm ci --no-audit --no-fund --loglevel=error
NODE_TOOLS := tools/node_modules/.installed
NODE_EXAMPLE := examples/node/node_modules/.installed
BUF := tools/node_modules/.bin/buf

.PHONY: install protos node node-check test test-fast lint format demo up down bench bench-env clean

install: $(VENV)/.installed $(PROTO_STAMP) $(NODE_TOOLS) $(NODE_EXAMPLE)

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

# Generated code is not committed: protoc writes modelyard/<area>/v1/*_pb2.py(i).
protos: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTO_SOURCES) $(VENV)/.installed devstack/protos.py
	$(PY) -m devstack.protos
	@touch $@

# Node.js and npm come with the machine; where they do not, from Debian's packages.
node-check:
	@command -v npm >/dev/null || { echo "installing Node.js and npm (Debian packages)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

node: $(NODE_TOOLS) $(NODE_EXAMPLE)

$(NODE_TOOLS): tools/package.json tools/package-lock.json | node-check
	cd tools && $(NPM_CI)
	@touch $@

# The Node.js example client (tests/e2e/test_e2e_node_client.py runs it).
$(NODE_EXAMPLE): examples/node/package.json examples/node/package-lock.json | node-check
	cd examples/node && $(NPM_CI)
	@touch $@

# The suite on two pytest-xdist workers (most tests wait on processes, timers and the
# network, not the CPU; tests/parallel_groups.py says how tests are grouped): 7-11 min
# on two cores, depending on how busy the host is, where one process takes 15-17.
# `make test TEST_WORKERS=0` runs it in this one process. PYTEST_ARGS adds options.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow and not fault" $(PYTEST_ARGS)

lint: install
	$(BUF) lint protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy runtime services gateway modelyard_client devstack tests bench

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: install
	$(PY) -m devstack demo

up: install
	$(PY) -m devstack up

down:
	@test -x $(PY) && $(PY) -m devstack down || true

bench: install bench-env
	$(PY) -m bench.ingest
	$(PY) -m bench.dispatch
	$(PY) -m bench.train
	$(PY) -m bench.quality
	$(PY) -m bench.search
	$(PY) -m bench.score
	$(PY) -m bench.score_online

# The benchmark-only dependencies (pyproject's `bench` group: FLAML, AutoGluon) in an
# environment of their own: AutoGluon needs an older pandas than the platform's, and no
# service ever imports them (bench/search_rivals.py runs there, in a subprocess).
BENCH_VENV := .venv-bench
bench-env: $(BENCH_VENV)/.installed

$(BENCH_VENV)/.installed: pyproject.toml | $(VENV)/.installed
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	# One requirement a line through xargs: a specifier's `<` must reach pip, not the shell.
	$(PY) -c "import tomllib; \
		print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))" \
		| xargs -d '\n' $(BENCH_VENV)/bin/python -m pip install --quiet
	# FLAML's core (numpy only) in the platform's environment too, for bench/search_optimisers.py.
	$(PY) -m pip install --quiet 'flaml>=2.3,<3'
	@touch $@

clean:
	rm -rf $(VENV) $(BENCH_VENV) modelyard .modelyard tools/node_modules examples/node/node_modules .mypy_cache .ruff_cache .pytest_cache
