"""`dldc report` as a Kubeflow component: the cleaning report as a folder and as one HTML page for the UI."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report(
    manifest: dsl.Input[dsl.Dataset],
    captions: dsl.Input[dsl.Dataset],
    selection: dsl.Input[dsl.Dataset],
    folder: dsl.Output[dsl.Artifact],
    page: dsl.Output[dsl.HTML],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    profile: str,
    generations: dsl.Input[dsl.Dataset] = None,
    evaluation: dsl.Input[dsl.Dataset] = None,
):
    """Report on `selection` (made from `captions`), with ingest's rejects (`manifest`) and, when given, the
    sample grids of `generations` and the metric tables of `evaluation`.

    `folder` holds index.html and thumbs/; `page` is the same page with its thumbnails inlined (Kubeflow's
    HTML viewer shows one file).
    """
    import os

    from dldc.run import run_stage

    command = [
        "report",
        "--manifest",
        os.path.join(captions.path, "manifest.parquet"),
        "--scores",
        os.path.join(captions.path, "scores.parquet"),
        "--selection",
        selection.path,
        "--captions",
        captions.path,
        "--ingest",
        manifest.path,
        "--out",
        folder.path,
        "--single-file",
        page.path,
    ]
    # Inputs not wired in are off, not looked for at the params.yaml paths.
    for flag, artifact in (("generations", generations), ("evaluation", evaluation)):
        if artifact is not None:
            command += [f"--{flag}", artifact.path]
    unset = [f"report.{name}=null" for name, artifact in (("generations", generations), ("evaluation", evaluation))
             if artifact is None]
    metrics = run_stage(command, [*settings, *unset], metrics_from=folder.path, profile=profile)
    for name, value in metrics.items():
        summary.log_metric(name, value)
