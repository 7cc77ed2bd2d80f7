# Two commands do all the set-up: `make run` and `make test`.
# `make run` installs what running needs (the project alone); `make test` adds the `dev` and `spark`
# extras (test tools, PySpark). Both install the pins in constraints.txt with uv, which pip puts into
# the venv first (on an empty cache a sixth of pip's time, BENCHMARKS.md); `make INSTALLER=pip ...` uses pip.
SHELL := /bin/bash
PYTHON ?= python3
INSTALLER ?= uv
PORT ?= 3000
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
export OPENBLAS_NUM_THREADS := 1
export BENTOML_DO_NOT_TRACK := True
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

ifeq ($(INSTALLER),uv)
INSTALL = $(BIN)/python -m pip install --quiet -c constraints.txt uv && \
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt
else
INSTALL = $(BIN)/python -m pip install --quiet --upgrade "pip<26" && \
	$(BIN)/python -m pip install --quiet -c constraints.txt
endif

.PHONY: setup run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing crmml and what it needs to run into $(VENV) ($(INSTALLER))"
	$(INSTALL) -e .
	touch $@

# everything: a test venv also runs (its stamp refreshes the run stamp)
$(TEST_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing crmml with its test tools and Spark into $(VENV) ($(INSTALLER))"
	$(INSTALL) -e ".[dev,spark]"
	touch $@ $(RUN_STAMP)

setup: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/crmml run --serve --customers 2000 --port $(PORT)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

bench: $(TEST_STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) workspace .pytest_cache
