"""`dldc generate` as a Kubeflow component (GPU): base and adapters on the test prompts, same seeds.

The base is the `base_model` artifact when given, else the hub id `base` (empty = `generate.base`).
"""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def generate(
    manifest: dsl.Input[dsl.Dataset],
    generations: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    run_group: str,
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
    raw_adapter: dsl.Input[dsl.Model] = None,
    clean_adapter: dsl.Input[dsl.Model] = None,
    global_adapter: dsl.Input[dsl.Model] = None,
):
    """Images for the test prompts: arm `base`, plus `raw` / `clean` / `global` for the adapters given; same seeds."""
    import json
    import os

    from dldc.cli import arm_flags, run_cli

    chosen = base_model.path if base_model is not None else base
    arms = arm_flags({"raw": raw_adapter, "clean": clean_adapter, "global": global_adapter})
    args = ["generate", "--manifest", os.path.join(manifest.path, "manifest.parquet"), "--out", generations.path]
    run_cli([*args, *arms, *(["--base", chosen] if chosen else [])], settings, run_group)
    with open(os.path.join(generations.path, "generate.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    summary.log_metric("images", report["images"])
