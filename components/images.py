"""Container images and GPU placement for the components (read at pipeline compile time)."""

import os

CPU_IMAGE = os.environ.get("DLDC_IMAGE", "dldc:0.1.0-cpu")
GPU_IMAGE = os.environ.get("DLDC_GPU_IMAGE", "dldc:0.1.0-cuda")
# Kubernetes resource name of the GPU and an optional `key=value` node selector for GPU stages.
GPU_RESOURCE = os.environ.get("DLDC_GPU_RESOURCE", "nvidia.com/gpu")
GPU_NODE_SELECTOR = os.environ.get("DLDC_GPU_NODE_SELECTOR", "")
