# outbox-relay: `make test` runs the whole suite; `make demo` shows the relay at work.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test unit integration faults lint typecheck check demo bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## test: every tier (unit, integration, faults); needs PostgreSQL and RabbitMQ (see README)
test: $(STAMP)
	$(BIN)/pytest tests

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

faults: $(STAMP)
	$(BIN)/pytest tests/faults

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

## demo: orders with outbox messages, some rolled back, relayed and consumed
demo: $(STAMP)
	$(BIN)/python deploy/demo.py

## bench: the benchmark suite (see benchmarks/README.md)
bench: $(STAMP)
	$(BIN)/python -m benchmarks all

## docs: regenerate docs/cli.md, the reference of every command and option
docs: $(STAMP)
	$(BIN)/python docs/cli_reference.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
