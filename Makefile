# One entry point for setting up, running and testing moetune.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run lint test test-fast bench scale-out-demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

setup: $(BIN)/python
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	# exact versions the suite passed with (constraints.txt); pyproject.toml keeps ranges
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'

run: setup
	$(BIN)/python train.py -m gate=topk,hash local_search=on,off

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src/moetune/report src/moetune/tracking src/moetune/config.py src/moetune/contract.py

test: lint
	$(BIN)/python -m pytest -q

test-fast: setup
	# the edit-test loop: every test but the end-to-end runs through the real command line (marked slow)
	$(BIN)/python -m pytest -q -x -m "not slow"

scale-out-demo: setup
	# PostgreSQL + mlflow server + a two-node Ray cluster on this machine, a demo sweep, then all stopped
	$(BIN)/python scripts/scale_out_demo.py

bench: setup
	$(BIN)/python bench/bench_moe_layer.py
	$(BIN)/python bench/bench_trial_throughput.py

clean:
	rm -rf $(VENV) sweeps/* mlruns/*
	touch sweeps/.gitkeep mlruns/.gitkeep
