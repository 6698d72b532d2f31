"""Kubeflow Pipelines components: one thin `@dsl.component` per dldc stage.

Each body only calls the `dldc` CLI inside the project's image, so a stage runs the same
code under Kubeflow, DVC and the shell. The image is chosen at compile time with the
`DLDC_IMAGE` (CPU stages) and `DLDC_GPU_IMAGE` (GPU stages) environment variables.
"""
