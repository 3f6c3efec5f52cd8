# Two commands do everything on a fresh machine:
#   make demo   -> create .venv if missing, install, run the training job on the built-in demo data
#   make test   -> same install, then lint (ruff check + format --check) and the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.anomaflow-installed
DEMO_OUT ?= out/demo

.PHONY: install demo lint test clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/anomaflow train --detector autoencoder --output $(DEMO_OUT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	$(PY) -m pytest -q

clean:
	rm -rf out .anomaflow mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache
