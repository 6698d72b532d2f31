"""`dldc score --part` and `dldc gather-scores` as Kubeflow components (fan-out, then fuse)."""

from kfp import dsl

from components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_parts(count: int) -> list[str]:
    """The `I/N` slices that `score_part` fans out over."""
    if count < 1:
        raise ValueError(f"score_parts must be >= 1, got {count}")
    return [f"{index}/{count}" for index in range(count)]


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def score_part(
    manifest: dsl.Input[dsl.Dataset],
    scorer: dsl.Input[dsl.Model],
    exported: dsl.Input[dsl.Model],
    scores: dsl.Output[dsl.Dataset],
    part: str,
    extra_scorers: list,
    settings: list,
    profile: str,
):
    """Score one slice of the manifest with the in-domain scorer (+ `extra_scorers` specs): raw scores.

    When `exported` holds an ONNX export of the scorer (`export_scorer` ran), it scores with
    `onnx:<exported>` instead of the torch model: same column names, gated parity.
    """
    import os

    from dldc.run import run_stage

    own = f"onnx:{exported.path}" if os.path.isfile(os.path.join(exported.path, "export.json")) else None
    specs = [arg for spec in [own or f"indomain:{scorer.path}", *extra_scorers] for arg in ("--scorer", spec)]
    run_stage(
        [
            "score",
            "--manifest",
            os.path.join(manifest.path, "manifest.parquet"),
            "--out",
            scores.path,
            "--part",
            part,
            *specs,
        ],
        settings,
        profile=profile,
    )


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gather_scores(
    parts: dsl.Input[list[dsl.Dataset]],
    scores: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    settings: list,
    profile: str,
):
    """Fuse the parts' raw scores per scene into one scores.parquet."""
    from dldc.run import run_stage

    command = ["gather-scores", *[p.path for p in parts], "--out", scores.path]
    metrics = run_stage(command, settings, metrics_from=scores.path, profile=profile)
    for name, value in metrics.items():
        summary.log_metric(name, value)
