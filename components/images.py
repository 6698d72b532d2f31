"""Container images and GPU placement for the components (read at pipeline compile time).

The images are ``<DLDC_IMAGE_REPO>:<DLDC_IMAGE_TAG>-cpu`` and ``-cuda``, the tags ``make image`` builds
(docker/README.md); set the repository (``registry.example.com/team/dldc``) and the tag once for both.
``DLDC_IMAGE`` / ``DLDC_GPU_IMAGE`` name either image in full instead.
"""

import os

IMAGE_REPO = os.environ.get("DLDC_IMAGE_REPO", "dldc")
IMAGE_TAG = os.environ.get("DLDC_IMAGE_TAG", "0.1.0")
CPU_IMAGE = os.environ.get("DLDC_IMAGE", f"{IMAGE_REPO}:{IMAGE_TAG}-cpu")
GPU_IMAGE = os.environ.get("DLDC_GPU_IMAGE", f"{IMAGE_REPO}:{IMAGE_TAG}-cuda")
# Kubernetes resource name of the GPU and an optional `key=value` node selector for GPU stages
# (override pipelines/resources.json's "gpu" entry).
GPU_RESOURCE = os.environ.get("DLDC_GPU_RESOURCE", "")
GPU_NODE_SELECTOR = os.environ.get("DLDC_GPU_NODE_SELECTOR", "")
