# One venv, created idempotently. The CPU wheel of torch is installed first so that
# the open range in pyproject.toml never pulls a CUDA build onto a CPU machine;
# override with `make TORCH_SPEC=torch==X.Y.Z ...` where another build is wanted.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

# The main job: Titans LMM (matrix memory) vs a same-size sliding-window Transformer, language modelling and
# recall past the window, report in runs/ttmem (about 5 minutes
# on 2 CPU cores). --resume makes a second `make demo` reuse the finished runs and only rewrite the report.
demo: setup
	$(BIN)/ttmem train --resume

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV)
