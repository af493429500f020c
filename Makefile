# Two commands for a newcomer: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3.12 ...'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[labelstudio,onnx,sam3,dev]'
	touch $(STAMP)

# Chromium for the browser tests (Debian's package; Playwright drives it, no browser download).
# redis-server for the shared embedding cache tests (Debian's package; each test starts its own).
setup: $(STAMP)
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
		|| echo "note: apt-get could not install chromium: browser tests will be skipped"; \
	else echo "note: /usr/bin/chromium missing and cannot apt-get install it (need root): browser tests will be skipped"; fi
	@if command -v redis-server >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; } \
		|| echo "note: apt-get could not install redis-server: shared-cache tests will be skipped"; \
	else echo "note: redis-server missing and cannot apt-get install it (need root): shared-cache tests will be skipped"; fi

# Label Studio + the backend on scikit-image demo photos, ready to label (Ctrl+C stops both).
run: setup
	$(BIN)/label-anything up --demo

test: setup
	$(BIN)/ruff check label_anything tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check label_anything tests bench
	$(BIN)/lint-imports
	$(BIN)/ruff format --check label_anything tests bench

bench: $(STAMP)
	$(BIN)/label-anything bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
