"""`dldc finetune` as a Kubeflow component (GPU): LoRA on the base model.

The base is the `base_model` artifact of `build_base` (demo) when given, else the hub id `base`
(paper profile: Stable Diffusion 1.5 or 2.1 base; empty = `finetune.base` of the settings).
"""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune(
    manifest: dsl.Input[dsl.Dataset],
    adapter: dsl.Output[dsl.Model],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    profile: str,
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
    manifest_file: str = "manifest.parquet",
):
    """LoRA fine-tune the base (`base_model` artifact, else the hub id `base`) on `manifest` into `adapter`.

    `manifest_file` is the manifest's path inside the `manifest` artifact (`select` writes
    `cleaned_manifest.parquet` and `global/cleaned_manifest.parquet`).
    """
    import os

    from dldc.run import run_stage

    chosen = base_model.path if base_model is not None else base
    args = ["finetune", "--manifest", os.path.join(manifest.path, manifest_file), "--out", adapter.path]
    command = [*args, *(["--base", chosen] if chosen else [])]
    metrics = run_stage(command, settings, metrics_from=adapter.path, profile=profile)
    for name, value in metrics.items():
        summary.log_metric(name, value)
