# One set-up command: `make setup`. Everything else runs inside .venv.
PYTHON ?= python3.11
VENV ?= .venv

.PHONY: setup test lint repro
setup:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'

# Two workers, one test file each at a time: the long end-to-end files (dvc, kfp.local) run side by side.
test:
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n 2 --dist loadfile --durations=15

lint:
	$(VENV)/bin/ruff check dldc components pipelines tests benchmarks
	$(VENV)/bin/hadolint docker/Dockerfile.cpu docker/Dockerfile.cuda

repro:
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro
