# Two commands set everything up on a fresh machine:
#   make demo   create .venv if needed, install, run the whole pipeline (dvc repro) on the built-in data
#   make test   create .venv if needed, install, run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test install clean ui status

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

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

ui: $(STAMP)
	$(BIN)/relearn ui

status: $(STAMP)
	$(BIN)/relearn status

clean:
	rm -rf data/splits data/augmented models export plots reports metrics.json
