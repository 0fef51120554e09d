# The README's two commands are `make demo` and `make test`; CI runs `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test test-fast lint bench

install:
	# torch first and pinned: the CPU build on disk, never a multi-GB CUDA download.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"

demo: install
	$(PYTHON) -m optiml_engine train recipes/demo.yaml

test: install
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	ruff check .

bench:
	$(PYTHON) tools/bench_packing.py
	$(PYTHON) tools/bench_train.py
