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
    run_group: str,
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
    manifest_file: str = "manifest.parquet",
):
    """LoRA fine-tune the base (`base_model` artifact, else the hub id `base`) on `manifest` into `adapter`.

    `manifest_file` is the manifest's path inside the `manifest` artifact (`select` writes
    `cleaned_manifest.parquet` and `global/cleaned_manifest.parquet`).
    """
    import json
    import os

    from dldc.cli import run_cli

    chosen = base_model.path if base_model is not None else base
    args = ["finetune", "--manifest", os.path.join(manifest.path, manifest_file), "--out", adapter.path]
    run_cli([*args, *(["--base", chosen] if chosen else [])], settings, run_group)
    with open(os.path.join(adapter.path, "finetune.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    summary.log_metric("final_loss", report["final_loss"])
    summary.log_metric("images_per_s", report["throughput"]["images_per_s"] or 0.0)
