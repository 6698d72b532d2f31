# One set-up command: `make setup`. Everything else runs inside .venv.
PYTHON ?= python3.11
VENV ?= .venv

# Images (docker/README.md): `make image` builds, `make image-test` runs the in-image smoke test.
# IMAGE_BASE=local builds the base with mmdebstrap (no registry needed); empty = the Dockerfile's
# digest-pinned python:3.11-slim-bookworm. TORCH_INDEX_URL empty = the Dockerfile's default.
IMAGE_VARIANT ?= cpu
IMAGE_TAG ?=
IMAGE_BASE ?=
TORCH_INDEX_URL ?=
IMAGE_OPTS = --variant $(IMAGE_VARIANT) $(if $(IMAGE_TAG),--tag $(IMAGE_TAG))

.PHONY: setup test lint repro quick image image-test image-lock image-clean
setup:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'

# Two workers, one test file each at a time: the long end-to-end files (dvc, kfp.local) run side by side.
test:
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n 2 --dist loadfile --durations=15

lint:
	$(VENV)/bin/ruff check dldc components pipelines tests benchmarks docker
	$(VENV)/bin/hadolint docker/Dockerfile.cpu docker/Dockerfile.cuda

repro:
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

# A first look in about half a minute on 2 idle cores (the `quick` profile): SynthRS -> ingest -> in-domain
# scorer -> scores -> per-scene ratios (proxy) -> the cleaned dataset and its report, in build/quick/.
QUICK_STAGES = synth ingest train-scorer score select export-dataset report
quick:
	mkdir -p build/quick
	$(VENV)/bin/dldc config init --profile quick --out build/quick/params.yaml --force
	cd build/quick && for stage in $(QUICK_STAGES); do \
		HF_HUB_OFFLINE=1 $(CURDIR)/$(VENV)/bin/dldc -S tracking.enabled=false $$stage || exit 1; done
	@echo "open build/quick/data/report/index.html; the cleaned dataset is in build/quick/data/cleaned/"

# docker build where a Docker engine answers, else buildah (root; store in $DLDC_BUILDAH_ROOT).
image:
	$(PYTHON) docker/image.py build $(IMAGE_OPTS) $(if $(IMAGE_BASE),--base $(IMAGE_BASE)) \
		$(if $(TORCH_INDEX_URL),--torch-index-url $(TORCH_INDEX_URL))

# Needs the venv (the pipeline is compiled from this checkout for the image).
image-test:
	HF_HUB_OFFLINE=1 $(VENV)/bin/python docker/image.py test $(IMAGE_OPTS)

# Regenerate docker/constraints.txt and docker/requirements*.txt after changing pyproject.toml's dependencies.
image-lock:
	$(VENV)/bin/python docker/lock.py

# Remove the buildah store (every image, container and cache mount of it).
image-clean:
	$(PYTHON) docker/image.py clean
