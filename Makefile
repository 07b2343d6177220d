# The two commands a fresh machine needs: `make dev` runs the whole stack on the embedded
# default (chDB + a bundled valkey-server); `make test` runs lint and the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[chdb,speed,dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/botpulse dev

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/botpulse bench

bench-quick: $(STAMP)
	$(BIN)/botpulse bench --quick

clean:
	rm -rf $(VENV) .botpulse
