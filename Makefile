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
	@# Where this machine's pip finds a local CPU build of torch (its find-links), install that file first:
	@# fast, and no multi-GB CUDA build. Elsewhere nothing is found and the next step takes torch from the
	@# package index as usual.
	@rm -rf $(VENV)/.torch-wheel
	@if $(PY) -m pip download -q --no-index --no-deps --only-binary=:all: -d $(VENV)/.torch-wheel \
	      "torch==2.13.0" >/dev/null 2>&1 && ls $(VENV)/.torch-wheel/torch-*+cpu-*.whl >/dev/null 2>&1; then \
	    echo "installing the local CPU build of torch"; \
	    $(PY) -m pip install -q $(VENV)/.torch-wheel/torch-*.whl; \
	fi
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
	$(PY) -m mypy dlmath derive numeric verify

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
