# The two commands a fresh machine needs: `make dev` runs the whole stack on the embedded
# default (chDB + a bundled valkey-server); `make test` runs lint and the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint layers bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[chdb,speed,dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/botpulse dev

test: $(STAMP)
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory layers
	$(BIN)/python -m pytest -q -p no:cacheprovider

# import-linter reads a package from its directory, and the repository keeps botpulse's
# subpackages at the top (pyproject's package-dir), so the contracts are checked against the
# package as it installs.
layers: $(STAMP)
	rm -rf $(VENV)/layers
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --target $(VENV)/layers . 2>/dev/null
	cd $(VENV)/layers && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/botpulse bench

bench-quick: $(STAMP)
	$(BIN)/botpulse bench --quick

clean:
	rm -rf $(VENV) .botpulse
