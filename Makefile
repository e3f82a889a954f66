# rtmpmate — `make run` starts the server with etc/rtmpmate.toml; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit clean

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

test: $(STAMP) lint typecheck
	$(BIN)/python -m tests.tools
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) run var .mypy_cache .ruff_cache .pytest_cache .hypothesis
