# One command sets everything up and runs the main job; one sets everything up and runs the tests.
#   make demo   -> venv + install + `rmeeto demo` on the embedded digits (report in out/demo/)
#   make test   -> venv + install + the test suite (GPU tests skip without CUDA; FULL=1 adds the full tier)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch/torchvision pinned to the builds this workplace serves from disk; any torch >= 2.10 works (pyproject.toml).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test bench-cpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/rmeeto demo --out out/demo

# the default tier on up to 4 workers (pytest-xdist; about 10 minutes on 2 cores); FULL=1 adds the tests marked
# `full` (frozen-copy kernel comparisons, the widest interpreter sweeps), as CI runs it
test: setup
	$(if $(FULL),RMEETO_FULL_TESTS=1 )$(BIN)/python -m pytest -q -n auto --maxprocesses 4

bench-cpu: setup
	$(BIN)/python benchmarks/bench_cpu_forward.py --batch 1 --repeats 5

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
