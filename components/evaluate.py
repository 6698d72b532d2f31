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
    run_group: str,
):
    """Evaluate the arms in `generations` against the manifest's test images; the in-domain scorer is `scorer`."""
    import json
    import os

    from dldc.cli import run_cli

    # The in-domain scorer lives in this pipeline's artifact, not at the params.yaml path.
    scorer_settings = [
        f"evaluate.feature_scorers.indomain=indomain:{scorer.path}",
        f"evaluate.clip_scorers.indomain=indomain:{scorer.path}",
    ]
    run_cli(
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
        run_group,
    )
    with open(os.path.join(evaluation.path, "evaluate.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    for arm, values in report["arms"].items():
        for metric, value in values.items():
            if value is not None:
                summary.log_metric(f"{arm}.{metric}", value)
