# lancell: the two newcomer commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export LANCE_LOG ?= error
export PYTHONWARNINGS ?= ignore::UserWarning:anndata

.PHONY: venv demo ui test test-all test-docs docs lint format bench clean

venv: $(STAMP)

# torch first, pinned, so that nothing pulls a CUDA build; then the project with every extra.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[ml,bio,dev,platform,docs]"
	touch $(STAMP)

demo: venv
	$(PY) -m lancell_assets.demo demo_atlas

ui: venv
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.dagster_home} LANCELL_ROOT=$(CURDIR)/demo_atlas LANCELL_CREATE_ATLAS=1 $(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

test: venv
	$(PY) -m pytest -n 2 -m "not slow and not docs" -q

# every docs page's python blocks, the mkdocs site (--strict) and the notebooks, on the bundled data
test-docs: venv
	$(PY) -m pytest -n 2 -m docs -q tests/docs

docs: venv
	$(VENV)/bin/mkdocs build --strict

test-all: venv
	$(PY) -m pytest -n 2 -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	$(PIP) install --quiet -e ".[ml,bio,bench,dev,platform]"
	$(PY) benchmarks/codec.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/reader.py
	$(PY) benchmarks/query.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/scale.py

clean:
	rm -rf $(VENV) demo_atlas .dagster_home .pytest_cache .ruff_cache site
