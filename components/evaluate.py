"""`dldc evaluate` as a Kubeflow component (GPU: Inception and ViT-L scorers on the paper profile)."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(
    generations: dsl.Input[dsl.Dataset],
    manifest: dsl.Input[dsl.Dataset],
    scorer: dsl.Input[dsl.Model],
    evaluation: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    profile: str,
):
    """Evaluate the arms in `generations` against the manifest's test images; the in-domain scorer is `scorer`."""
    import os

    from dldc.run import run_stage

    # The in-domain scorer lives in this pipeline's artifact, not at the params.yaml path.
    scorer_settings = [
        f"evaluate.feature_scorers.indomain=indomain:{scorer.path}",
        f"evaluate.clip_scorers.indomain=indomain:{scorer.path}",
    ]
    metrics = run_stage(
        [
            "evaluate",
            "--generations",
            generations.path,
            "--manifest",
            os.path.join(manifest.path, "manifest.parquet"),
            "--out",
            evaluation.path,
        ],
        [*settings, *scorer_settings],
        metrics_from=evaluation.path,
        profile=profile,
    )
    for name, value in metrics.items():
        summary.log_metric(name, value)
