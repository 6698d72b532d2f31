"""Container images the components run in (set at pipeline compile time)."""

import os

CPU_IMAGE = os.environ.get("DLDC_IMAGE", "dldc:0.1.0-cpu")
GPU_IMAGE = os.environ.get("DLDC_GPU_IMAGE", "dldc:0.1.0-cuda")
