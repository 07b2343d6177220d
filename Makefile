# The two commands a fresh machine needs: `make dev` runs the whole stack on the embedded
# default (chDB + a bundled valkey-server); `make test` runs lint and the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint layers bench bench-quick clean browser screenshot

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[chdb,speed,dev]'
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/botpulse dev

# The tests run TEST_WORKERS files side by side (pytest-xdist; a file's tests stay together, so
# a module's servers start once): most of a test's time is spent waiting on real servers and
# processes, not on the cores. TEST_WORKERS=0 runs them one after another in this process.
TEST_WORKERS ?= 3
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory layers
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# The dashboard's browser tests drive Debian's chromium through Playwright (never a downloaded
# browser). Installed here when missing: as root with apt-get, otherwise the command to run is
# printed and the build stops, so the tests never run without it (they fail, never skip).
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's chromium for the browser tests"; \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-dejavu-core; \
		else \
			echo "The browser tests need Debian's chromium at $(CHROMIUM). Install it with:" >&2; \
			echo "  sudo apt-get update && sudo apt-get install -y chromium fonts-dejavu-core" >&2; \
			exit 1; \
		fi; \
	fi

# Regenerates docs/dashboard-bot-page.png (the screenshot docs/dashboard.md shows) from the
# bot-page browser test's seeded stack.
screenshot: $(STAMP) browser
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/dashboard-bot-page.png $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_dashboard_browser.py -k charts_match

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
