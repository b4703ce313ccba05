# kdrun — `make help` lists the targets. Everything runs inside .venv, which `make install`
# creates from pyproject.toml; every other target depends on it.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Datasets: use the shared offline copies when they sit beside the checkout (CI, dev machines);
# otherwise kdrun falls back to its own default (./data) or whatever KDRUN_DATA_DIR says.
ifneq ($(wildcard ../shared/datasets),)
export KDRUN_DATA_DIR ?= $(abspath ../shared/datasets)
endif

help: ## Show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-26s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,sweep,timm,tensorboard,mlflow,wandb,export]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install kdrun, its dependencies, the sweep plugins, the trackers and the export tools (pyproject.toml)

# One worker per core, each with one math thread: the tests are mostly Python and small tensors,
# so two single-threaded workers finish about 1.7x sooner than one two-threaded run on 2 cores.
test: $(STAMP) ## Run the fast test suite (about 3.5 minutes on 2 CPU cores)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --maxprocesses=4

test-slow: $(STAMP) ## Run the long tests too
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m '' -n auto --maxprocesses=4

reproduce-mnist: $(STAMP) ## Hinton et al. (2015) MNIST table, with the omitted-3 experiment (~13 min on 2 CPU cores)
	$(PY) -m kdrun.reproduce outputs/reproduce-mnist --omit3

reproduce-mnist-omit3: reproduce-mnist ## The omitted-3 experiment (a section of the same report)

reproduce-mnist-quick: $(STAMP) ## The same table in ~3 min (fewer epochs)
	$(PY) -m kdrun.reproduce outputs/reproduce-mnist-quick --preset hinton_mnist_quick

reproduce-mnist-full: $(STAMP) ## Paper-length training (for a GPU: hours on a CPU)
	$(PY) -m kdrun.reproduce outputs/reproduce-mnist-full --preset hinton_mnist_paper --omit3

# The CIFAR-100 benchmark (README, "CIFAR-100 benchmark"). METHODS: kd methods with a
# configs/experiment/cifar100_<method>.yaml; SEEDS: student seeds; PAIRS: a part of the table; TEACHERS: a folder of published
# teachers (<name>_vanilla/ckpt_epoch_240.pth); PROTOCOL: validation or best_test_epoch (the papers');
# KDRUN_ARGS: kdrun overrides for every job (hydra/launcher=joblib device=cuda ...).
METHODS  ?= none,hinton,dkd
SEEDS    ?= 0
PAIRS    ?= all
PROTOCOL ?= validation
TEACHERS ?=
KDRUN_ARGS ?=
SMOKE_DIR := outputs/reproduce-cifar100-smoke

reproduce-cifar100: $(STAMP) ## CIFAR-100 KD table: 13 pairs x METHODS x SEEDS, one multirun (a GPU job)
	$(PY) -m kdrun.reproduce_cifar100 outputs/reproduce-cifar100 --methods $(METHODS) --seeds $(SEEDS) \
	  $(if $(filter-out all,$(PAIRS)),--pairs $(PAIRS)) --protocol $(PROTOCOL) $(if $(TEACHERS),--teachers $(TEACHERS)) -- $(KDRUN_ARGS)

# One process, one math thread: on a shared or busy machine, several threads per process mostly wait.
reproduce-cifar100-smoke: $(STAMP) ## The same plumbing, one epoch per job on CIFAR-shaped data (~2-7 min on 2 CPU cores)
	rm -rf $(SMOKE_DIR)
	$(PY) -c 'from pathlib import Path; from tests.datasets import write_cifar; write_cifar(Path("$(SMOKE_DIR)/data"), 100, per_batch=16)'
	OMP_NUM_THREADS=1 $(PY) -m kdrun.reproduce_cifar100 $(SMOKE_DIR) --smoke --methods $(METHODS) --seeds $(SEEDS) \
	  $(if $(filter-out all,$(PAIRS)),--pairs $(PAIRS)) \
	  -- data_dir=$(abspath $(SMOKE_DIR))/data teacher_cache=$(abspath $(SMOKE_DIR))/teachers $(KDRUN_ARGS)

# One math thread: the tree's many small operations gain nothing from a second one (1.9 vs 2.1 s an
# epoch on an idle 2-core machine) and lose much to a busy one (3.5 vs 45-70 s).
reproduce-soft-tree: $(STAMP) ## Frosst & Hinton (2017): depth-8 soft decision trees from labels vs distilled, MNIST, 3 seeds
	OMP_NUM_THREADS=1 $(PY) -m kdrun.reproduce_soft_tree outputs/reproduce-soft-tree

bench: $(STAMP) ## Images/s: MNIST MLP (student alone, live teacher, cached logits, DataLoader), a CNN pair, DDP; against a bare loop
	$(PY) -m kdrun.bench

clean: ## Remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

.PHONY: help install test test-slow reproduce-mnist reproduce-mnist-omit3 reproduce-mnist-quick reproduce-mnist-full \
        reproduce-cifar100 reproduce-cifar100-smoke reproduce-soft-tree bench clean
