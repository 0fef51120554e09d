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

# On a GPU machine, as it is (no install, no network): builds the extensions in place, runs the
# GPU tests at real sizes and measures the kernels, a training step and NCCL, under 8 minutes;
# figures in $(GPU_CHECK_OUT)/gpu_check.{json,md}. `make gpu-check GPU_CHECK_ARGS=--dry-run`: CPU.
GPU_CHECK_OUT ?= $(or $(OUT),gpu_check_out)
gpu-check:
	PYTHON=$(PYTHON) bash tools/gpu_check.sh $(GPU_CHECK_ARGS) $(GPU_CHECK_OUT)
