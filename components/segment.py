"""`dldc segment` as a Kubeflow component (GPU): real-only vs. real + synthetic segmentation arms.

The dataset is the `dataset` artifact, or its `dataset_folder` (SynthRS from `synth`, as ingest's copy in
the pipeline; set `dataset_layout` for another layout). Synthetic arms: `base` always, plus `raw` /
`clean` / `global` for the adapters given; the text-to-image base is the `base_model` artifact when
given, else the hub id `base` (empty = `segment.base`). Pipelines request a GPU for this task (`_on_gpu`).
"""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def segment(
    dataset: dsl.Input[dsl.Dataset],
    evaluation: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    profile: str,
    dataset_layout: str = "synthrs",
    dataset_folder: str = "",
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
    raw_adapter: dsl.Input[dsl.Model] = None,
    clean_adapter: dsl.Input[dsl.Model] = None,
    global_adapter: dsl.Input[dsl.Model] = None,
):
    """Train the segmenter for every arm and protocol on `dataset`; the results table goes to `evaluation`."""
    import os

    from dldc.run import arm_args, run_stage

    chosen = base_model.path if base_model is not None else base
    adapters = {"raw": raw_adapter, "clean": clean_adapter, "global": global_adapter}
    arms = arm_args({arm: artifact.path if artifact is not None else None for arm, artifact in adapters.items()})
    root = os.path.join(dataset.path, dataset_folder) if dataset_folder else dataset.path
    args = ["segment", "--dataset", dataset_layout, "--root", root, "--out", evaluation.path]
    command = [*args, *arms, *(["--base", chosen] if chosen else [])]
    metrics = run_stage(command, settings, metrics_from=evaluation.path, profile=profile)
    for name, value in metrics.items():
        summary.log_metric(name, value)
