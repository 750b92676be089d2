# Every target creates and fills .venv itself when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-all lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.core: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e '.[dev,keras,ray,methods,tune,lightning,postgres]'
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(VENV)/bin/polytask run hetero

test: $(VENV)/.dev
	$(PY) -m pytest

test-all: $(VENV)/.dev
	$(PY) -m pytest -m ''

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(VENV)/.dev
	for b in trainer replicate sparse methods; do $(PY) benchmarks/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
