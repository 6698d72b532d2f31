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
):
    """Check every pair of `dataset`; write manifest.parquet, rejects.parquet, ingest.json into `manifest`."""
    from dldc.run import run_stage

    command = ["ingest", "--format", dataset_format, "--root", dataset.path, "--out", manifest.path]
    metrics = run_stage(command, settings, metrics_from=manifest.path)
    for name, value in metrics.items():
        counts.log_metric(name, value)
