# The README's two commands: `make run` (set up, then the whole default experiment) and
# `make test` (set up, then the test suite). `make setup` installs what a run needs; the test suite
# also needs a one-node Slurm and a headless browser (`make test-tools`).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SLURM := /usr/sbin/slurmctld
# A headless browser for tests/test_browser.py: chromium-driver brings chromium with it.
BROWSER := /usr/bin/chromedriver
CORES ?= all

# The GPU check kit (gpu/, docs/gpu.md): `make gpu-kit` packs into .gpukit/ what it needs on a bare GPU
# machine (wheels for Python 3.12, a Fashion-MNIST subset, the commit); `make gpu-check` runs gpu/check.py
# here, with the venv's Python if there is one (a GPU machine's own python3 otherwise): OUT=folder,
# GPU_CHECK=--cpu for the tiny CPU run.
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
OUT ?= data/gpu-check

.PHONY: setup test-tools run test quick lint clean gpu-kit gpu-check

setup: $(VENV)/.installed $(FMNIST)

test-tools: $(BROWSER) $(SLURM)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[workflow,test]'
	touch $@

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Slurm and munge for tests/test_slurm.py, which starts its own one-node cluster (no daemon, nothing in /etc).
$(SLURM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge

$(BROWSER):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-dejavu-core

# PARAMS=workflow/params/<profile>.yaml runs a profile instead (DVC's record is params.yaml's alone).
run: setup
ifdef PARAMS
	snakemake --configfile $(PARAMS) --cores $(CORES)
	@echo "report: reports/index.html ($(PARAMS))"
else
	snakemake --cores $(CORES)
	dvc commit --force --quiet
	@echo "report: reports/index.html (dvc status: $$(dvc status -q && echo clean || echo changed))"
endif

test: setup test-tools
	pytest

# The inner loop while editing code: every test but the end-to-end ones marked slow.
quick: setup test-tools
	pytest -q -m "not slow"

gpu-kit: setup $(FMNIST)
	$(PY) gpu/pack.py

gpu-check:
	$(GPU_PY) gpu/check.py --out $(OUT) $(GPU_CHECK)

lint: setup
	ruff check src tests benchmarks gpu
	snakemake --lint

clean:
	rm -rf data/prepared data/splits data/runs data/checkpoints data/logs data/benchmarks reports/* .snakemake
