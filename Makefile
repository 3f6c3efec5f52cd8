# Two commands do everything on a fresh machine:
#   make demo   -> create .venv if missing, install, run the training job on the built-in demo data
#   make test   -> same install, then the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.anomaflow-installed
DEMO_OUT ?= out/demo

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/anomaflow train --detector autoencoder --output $(DEMO_OUT)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf out .anomaflow mlruns mlflow.db .pytest_cache
