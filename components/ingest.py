"""`dldc ingest` as a Kubeflow component."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    dataset: dsl.Input[dsl.Dataset],
    manifest: dsl.Output[dsl.Dataset],
    counts: dsl.Output[dsl.Metrics],
    dataset_format: str,
    settings: list,
    run_group: str,
):
    """Check every pair of `dataset`; write manifest.parquet, rejects.parquet, ingest.json into `manifest`."""
    import json
    import os

    from dldc.cli import run_cli

    run_cli(["ingest", "--format", dataset_format, "--root", dataset.path, "--out", manifest.path], settings, run_group)
    with open(os.path.join(manifest.path, "ingest.json"), encoding="utf-8") as report:
        numbers = json.load(report)["counts"]
    for name in ("input_pairs", "kept_pairs", "rejected_pairs", "kept_images", "scenes"):
        counts.log_metric(name, numbers[name])
