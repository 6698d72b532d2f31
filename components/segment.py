"""`dldc segment` as a Kubeflow component (GPU): real-only vs. real + synthetic segmentation arms.

The dataset is the `dataset` artifact (SynthRS from `synth` in the demo; set `dataset_layout` for
another layout). Synthetic arms: `base` always, plus `raw` / `clean` / `global` for the adapters given; the
text-to-image base is the `base_model` artifact when given, else the hub id `base` (empty =
`segment.base`). Pipelines request a GPU for this task (`_on_gpu`).
"""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def segment(
    dataset: dsl.Input[dsl.Dataset],
    evaluation: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    run_group: str,
    dataset_layout: str = "synthrs",
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
    raw_adapter: dsl.Input[dsl.Model] = None,
    clean_adapter: dsl.Input[dsl.Model] = None,
    global_adapter: dsl.Input[dsl.Model] = None,
):
    """Train the segmenter for every arm and protocol on `dataset`; the results table goes to `evaluation`."""
    import json
    import os

    from dldc.cli import arm_flags, run_cli

    chosen = base_model.path if base_model is not None else base
    arms = arm_flags({"raw": raw_adapter, "clean": clean_adapter, "global": global_adapter})
    args = ["segment", "--dataset", dataset_layout, "--root", dataset.path, "--out", evaluation.path]
    run_cli([*args, *arms, *(["--base", chosen] if chosen else [])], settings, run_group)
    with open(os.path.join(evaluation.path, "segment.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    for run, values in report.items():
        for metric, value in values.items():
            if value is not None:
                summary.log_metric(f"{run}.{metric}", value)
