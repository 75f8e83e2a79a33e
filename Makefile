# Every target makes its own .venv: a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-all lint fmt lock soak bench bench-cryptofeed clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime install: pinned versions from requirements.lock, then the package itself.
$(VENV)/.run-installed: requirements.lock setup.cfg | $(BIN)/python
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Test install: the same plus the test extras (requirements-test.lock).
$(VENV)/.test-installed: requirements-test.lock setup.cfg | $(BIN)/python
	$(BIN)/pip install -q -r requirements-test.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@ $(VENV)/.run-installed

demo: $(VENV)/.run-installed
	$(BIN)/mdd demo

lint: $(VENV)/.test-installed
	$(BIN)/ruff check mdd tests
	$(BIN)/ruff format --check mdd tests
	$(BIN)/mypy mdd

fmt: $(VENV)/.test-installed
	$(BIN)/ruff format mdd tests
	$(BIN)/ruff check --fix mdd tests

# The quick suite (CI): lint, types and every test not marked slow.
test: lint
	$(BIN)/pytest -m "not slow" -q

# Everything, the slow reliability scenarios included.
test-all: lint
	$(BIN)/pytest -q

soak: $(VENV)/.run-installed
	$(BIN)/python -m mdd.chaos --duration $${SOAK_SECONDS:-600}

bench: $(VENV)/.run-installed
	$(BIN)/mdd bench

# The bar: cryptofeed (own venv, not a dependency of mdd) fed by mdd's load generator.
CF_VENV := .venv-cryptofeed
$(CF_VENV)/bin/python:
	$(PYTHON) -m venv $(CF_VENV)
	$(CF_VENV)/bin/pip install -q cryptofeed==2.4.1

bench-cryptofeed: $(VENV)/.run-installed | $(CF_VENV)/bin/python
	$(CF_VENV)/bin/python bench/cryptofeed_compare.py

# Regenerate the pinned lock files from setup.cfg (needs the registry).
lock: | $(BIN)/python
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --strip-extras --no-header --no-emit-index-url --no-emit-find-links -o requirements.lock setup.cfg
	$(BIN)/pip-compile -q --strip-extras --no-header --no-emit-index-url --no-emit-find-links --extra test -o requirements-test.lock setup.cfg

clean:
	rm -rf $(VENV) $(CF_VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
