# The two commands that matter (README): `make demo` and `make test`. Each creates and fills .venv
# once (again only when pyproject.toml changes), torch's CPU build first: an unpinned torch would
# pull a multi-GB CUDA build. On a GPU cluster install the torch build for your CUDA instead.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests read the real GSM8K in place (never copied into the repo) when it lies beside the checkout.
TSLOSS_GSM8K_DIR ?= $(wildcard $(abspath ../shared/data/gsm8k))
# No test reaches the network; every cache stays inside the checkout.
TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline \
	TSLOSS_CACHE=$(CURDIR)/.cache/tsloss_harness TSLOSS_GSM8K_DIR=$(TSLOSS_GSM8K_DIR)

.PHONY: setup demo test test-fast lint

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=68"  # the wheel test builds without isolation
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e ".[dev]"  # the versions the suite passed with
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tsloss demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(TEST_ENV) $(PY) -m pytest -q

test-fast: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow"
