# rtmpmate — `make run` starts the server with etc/rtmpmate.toml; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit clean browser-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rtmpmate --config etc/rtmpmate.toml

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -m 'not interop'

# The browser tests' npm packages (mpegts.js, playwright-core), when Node.js is there.
BROWSER_DEPS := tests/browser/node_modules/.package-lock.json

$(BROWSER_DEPS): tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error

browser-deps:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(BROWSER_DEPS); \
	else echo "npm not found: the browser tests will not run"; fi

test: $(STAMP) lint typecheck browser-deps
	$(BIN)/python -m tests.tools
	$(BIN)/pytest -q --durations=15

clean:
	rm -rf $(VENV) run var .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The benchmark suite (docs/benchmarks.md): about 16 minutes, rewrites its "Latest results".
# BENCH_ARGS=--smoke for a quick look; BENCH_ARGS=--help for every option.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench --json var/bench/latest.json --markdown $(BENCH_ARGS)
