"""`dldc caption` (the EGL loop) as a Kubeflow component, on a GPU node for VLM backends."""

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def caption(
    manifest: dsl.Input[dsl.Dataset],
    scores: dsl.Input[dsl.Dataset],
    scorer: dsl.Input[dsl.Model],
    captions: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    backends: list,
    rounds: int,
    settings: list,
    profile: str,
):
    """Repair low-scoring captions of `manifest` (round 0: `scores`) with `backends`, judged by the in-domain model."""
    import os

    from dldc.run import run_stage

    specs = [arg for spec in backends for arg in ("--backend", spec)]
    metrics = run_stage(
        [
            "caption",
            "--manifest",
            os.path.join(manifest.path, "manifest.parquet"),
            "--scores",
            os.path.join(scores.path, "scores.parquet"),
            "--scorer",
            f"indomain:{scorer.path}",
            "--out",
            captions.path,
            "--rounds",
            str(rounds),
            *specs,
        ],
        # The embedding store travels with the output, so a retried task reuses it.
        [*settings, f"caption.cache={os.path.join(captions.path, 'embeddings')}"],
        metrics_from=captions.path,
        profile=profile,
    )
    for name, value in metrics.items():
        summary.log_metric(name, value)
