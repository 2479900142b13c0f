# Quick start: `make run` (set up and run the gateway on its embedded defaults) and
# `make test` (set up and run the whole test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint format setup bench clean

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/gateway

run: setup
	$(BIN)/gateway serve --bootstrap-key demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# `make bench` runs the ingest benchmark; BENCH names another script of bench/ (ingest,
# bench_store, mapping, delivery, aws, scale: see bench/README.md), BENCH_ARGS its flags, e.g.
# `make bench BENCH=mapping BENCH_ARGS='--rounds 1'`.
BENCH ?= ingest
BENCH_ARGS ?=

bench: setup
	$(BIN)/python bench/$(BENCH).py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
