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

# The console (/console) signs in with the admin token: `make run` makes one for this run when
# GATEWAY_ADMIN_TOKEN is not set, and prints it (a local development convenience).
run: setup
	@token="$${GATEWAY_ADMIN_TOKEN:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(16))')}"; \
	echo "console: http://127.0.0.1:8080/console  (admin token for this run: $$token)"; \
	GATEWAY_ADMIN_TOKEN="$$token" exec $(BIN)/gateway serve --bootstrap-key demo

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

# `make bench` runs the ingest benchmark; BENCH names another script of bench/ (goals,
# instructions, compare, ingest, bench_store, mapping, delivery, aws, saas, scale, ordering,
# soak: see bench/README.md), BENCH_ARGS its flags, e.g.
# `make bench BENCH=mapping BENCH_ARGS='--rounds 1'`.
BENCH ?= ingest
BENCH_ARGS ?=

bench: setup
	$(BIN)/python bench/$(BENCH).py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
