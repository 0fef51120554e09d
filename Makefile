# The README's two commands are `make demo` and `make test`; CI runs `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test test-fast lint bench gpu-check

install:
	# torch first and pinned: the CPU build on disk, never a multi-GB CUDA download.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"

EVAL_DEMO := --bench runs/bench-synthetic --max-instances 10 --max-new-tokens 24 --batch-size 16

demo: install
	rm -rf runs/demo  # a fresh run: evaluation resumes from results it finds in its output
	$(PYTHON) -m optiml_engine data build recipes/bench/synthetic.yaml --out runs/bench-synthetic
	$(PYTHON) -m optiml_engine train recipes/demo.yaml
	# the trained model on the three levels, next to the same model untrained
	$(PYTHON) -m optiml_engine eval --checkpoint runs/demo/checkpoints $(EVAL_DEMO) \
		--baseline runs/demo/checkpoints/initial --history runs/demo/tb/eval_history.jsonl \
		--out runs/demo/eval

test: install
	$(PYTHON) tools/check_imports.py
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

lint: install  # ruff comes with the test extras
	$(PYTHON) -m ruff check .

bench:  # after `make install`; figures go to docs/benchmarks.md by hand, with the machine
	$(PYTHON) -m optiml_engine data build recipes/bench/synthetic.yaml --out runs/bench-synthetic
	$(PYTHON) tools/bench_packing.py
	$(PYTHON) tools/bench_train.py
	$(PYTHON) tools/bench_data.py
	$(PYTHON) tools/bench_eval.py
	$(PYTHON) tools/bench_kernels.py attention
	$(PYTHON) tools/bench_kernels.py cross-entropy
	$(PYTHON) tools/bench_kernels.py adamw
	OMP_NUM_THREADS=1 $(PYTHON) tools/bench_parallel.py

gpu-check:  # on a GPU machine after `make install`: kernel tests at real sizes, then the figures
	$(PYTHON) -m pytest -q tests/kernels tests/model
	$(PYTHON) tools/bench_kernels.py attention --out bench_out/kernels
	$(PYTHON) tools/bench_kernels.py cross-entropy --out bench_out/kernels
	$(PYTHON) tools/bench_kernels.py adamw --out bench_out/kernels
