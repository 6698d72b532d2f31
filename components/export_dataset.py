"""`dldc export-dataset` as a Kubeflow component: the cleaned set in its source's format, with provenance."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export_dataset(
    manifest: dsl.Input[dsl.Dataset],
    captions: dsl.Input[dsl.Dataset],
    selection: dsl.Input[dsl.Dataset],
    dataset: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    profile: str,
):
    """Write the pairs `selection` kept (EGL captions in place) in the format `manifest` was ingested from.

    `dataset` holds the annotations (Karpathy JSON or captions.jsonl), the images, `provenance.parquet`
    (every pair: original and final caption, source, scores, kept / dropped / rejected and why) and
    `export.json`.
    """
    import os

    from dldc.run import run_stage

    command = [
        "export-dataset",
        "--original", os.path.join(manifest.path, "manifest.parquet"),
        "--rejects", os.path.join(manifest.path, "rejects.parquet"),
        "--scores", os.path.join(captions.path, "scores.parquet"),
        "--captions", os.path.join(captions.path, "captions.parquet"),
        "--cleaned", os.path.join(selection.path, "cleaned_manifest.parquet"),
        "--dropped", os.path.join(selection.path, "dropped.parquet"),
        "--out", dataset.path,
    ]  # fmt: skip
    metrics = run_stage(command, settings, metrics_from=dataset.path, profile=profile)
    for name, value in metrics.items():
        summary.log_metric(name, value)
