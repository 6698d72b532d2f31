"""`dldc ingest` as a Kubeflow component."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    manifest: dsl.Output[dsl.Dataset],
    counts: dsl.Output[dsl.Metrics],
    dataset_format: str,
    settings: list,
    profile: str,
    dataset: dsl.Input[dsl.Dataset] = None,
    dataset_uri: str = "",
):
    """Check every pair of `dataset` (an artifact) or `dataset_uri` (a folder on a mounted volume, or a URL such
    as s3://bucket/rsicd); write manifest.parquet, rejects.parquet, ingest.json into `manifest`.

    The dataset is copied into `manifest` (its `dataset/` folder) and the manifest points there: later
    pods receive only this artifact, and find every image in it.
    """
    from dldc.run import run_stage

    root = dataset.path if dataset is not None else dataset_uri
    if not root:
        raise ValueError("ingest needs a dataset artifact or a dataset_uri")
    command = ["ingest", "--format", dataset_format, "--root", root, "--out", manifest.path]
    metrics = run_stage(command, [*settings, "ingest.copy_dataset=true"], metrics_from=manifest.path, profile=profile)
    for name, value in metrics.items():
        counts.log_metric(name, value)
