PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# On a machine without an NVIDIA driver, take the (much smaller) CPU build of torch first;
# requirements.txt's range then accepts it. Override with `make install TORCH_CPU=`.
TORCH_CPU ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,torch==2.13.0)
export DS_BUILD_OPS ?= 0
# Idle OpenMP threads sleep instead of spinning: on busy shared cores spinning made CPU steps ~12x slower
# (bench/run.py measured 10-11 s against 0.9 s per default-config step).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test test-all clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(if $(TORCH_CPU),$(PYTHON) -m pip install -q "$(TORCH_CPU)" || true)
	$(PYTHON) -m pip install -q -r requirements.txt
	touch $@

demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) train.py --config configs/default.yaml

test: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m pytest -q tests

test-all: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PYTHON) -m pytest -q -m "" tests

clean:
	rm -rf runs .cache
