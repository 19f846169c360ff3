# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv and install
# what they need (Python packages from PyPI, mosquitto and systemd-analyze from Debian).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-fast demo bench lint typecheck system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

system-deps:
	./scripts/install-system-deps.sh

# The whole suite, slow end-to-end tests included (what CI runs).
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -ra

# The quick loop while developing: everything but the tests marked slow.
test-fast: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP) system-deps
	$(BIN)/edge-agent demo

# Figures, not pass/fail: each script starts what it needs on loopback and prints a table.
bench: $(STAMP) system-deps
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_webhook.py
	$(BIN)/python bench/bench_http.py
	$(BIN)/python bench/bench_mqtt.py
	$(BIN)/python bench/bench_connections.py --devices 1000
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_pipeline.py --sink mqtt
	$(BIN)/python bench/bench_rooms.py
	$(BIN)/python bench/bench_rooms.py --source google
	$(BIN)/python bench/bench_fleet.py --devices 1000

typecheck: $(STAMP)
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache *.egg-info
