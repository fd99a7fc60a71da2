# dlmath: `make demo` runs the main job, `make test` runs lint, types, tests and the docs build.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.dlmath-installed

.PHONY: setup demo test lint types pytest docs bench thorough clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# Take a local CPU build of torch where this machine has one (fast, no CUDA download);
	@# elsewhere this fails at once and the next line gets torch from the package index.
	-$(PY) -m pip install -q --no-index torch==2.13.0 2>/dev/null
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dlmath list
	$(VENV)/bin/dlmath backprop softmax_regression
	$(VENV)/bin/dlmath codegen softmax_regression --backend torch
	$(VENV)/bin/dlmath verify softmax_regression --examples 20

lint: $(STAMP)
	$(PY) -m ruff check .

types: $(STAMP)
	$(PY) -m mypy derive numeric verify

pytest: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest

docs: $(STAMP)
	$(PY) -m sphinx -W -q -b html docs docs/_build/html

test: lint types pytest docs

thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest

bench: $(STAMP)
	$(VENV)/bin/dlmath bench

clean:
	rm -rf $(VENV) docs/_build .mypy_cache .ruff_cache .pytest_cache .hypothesis
