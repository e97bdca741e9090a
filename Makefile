# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned, so that the `torch>=2.1` range in pyproject.toml is already
# met and pip never resolves it to a multi-GB CUDA build on a CPU-only machine.
# Override for another build, e.g. `make test TORCH='torch==2.13.0 --index-url ...'`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# the runtime alone for the demo; the test extras (pytest, scipy, diffusers) only for the tests
STAMP := $(VENV)/.ddpmkit-installed
TEST_STAMP := $(VENV)/.ddpmkit-test-installed

.PHONY: demo test test-all clean

demo: $(STAMP)
	$(BIN)/ddpmkit demo --out out/mnist.png

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

test-all: $(TEST_STAMP)
	$(BIN)/python -m pytest -m ""

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) out .pytest_cache
