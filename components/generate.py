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
    profile: str,
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
    raw_adapter: dsl.Input[dsl.Model] = None,
    clean_adapter: dsl.Input[dsl.Model] = None,
    global_adapter: dsl.Input[dsl.Model] = None,
):
    """Images for the test prompts: arm `base`, plus `raw` / `clean` / `global` for the adapters given; same seeds."""
    import os

    from dldc.run import arm_args, run_stage

    chosen = base_model.path if base_model is not None else base
    adapters = {"raw": raw_adapter, "clean": clean_adapter, "global": global_adapter}
    arms = arm_args({arm: artifact.path if artifact is not None else None for arm, artifact in adapters.items()})
    args = ["generate", "--manifest", os.path.join(manifest.path, "manifest.parquet"), "--out", generations.path]
    command = [*args, *arms, *(["--base", chosen] if chosen else [])]
    metrics = run_stage(command, settings, metrics_from=generations.path, profile=profile)
    for name, value in metrics.items():
        summary.log_metric(name, value)
