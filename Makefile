# netk8s: `make test` sets everything up and runs the whole suite;
# `make demo` brings up the default cluster and shows a Service answering.
VENV := .venv
PY := $(VENV)/bin/python
NETK8S := $(VENV)/bin/netk8s
PYTEST_ARGS ?=

.PHONY: setup test unit integration e2e demo bench down clean

setup:
	./scripts/setup

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

unit: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit

integration: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/integration

e2e: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/e2e

demo: setup
	./scripts/demo

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

down:
	$(NETK8S) down --all

clean:
	rm -rf $(VENV) build *.egg-info
