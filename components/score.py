"""`dldc score --part` and `dldc gather-scores` as Kubeflow components (fan-out, then fuse)."""

from kfp import dsl

from components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_parts(counts: dsl.Input[dsl.Metrics], count: int, part_pairs: int, max_parts: int) -> list[str]:
    """The `I/N` slices that `score_part` fans out over: `count` of them, or (`count` 0) one per
    `part_pairs` pairs of the manifest (ingest's `kept_pairs`), at most `max_parts` either way."""
    import math

    pairs = int(counts.metadata["kept_pairs"])
    if count < 0 or part_pairs < 1 or max_parts < 1:
        raise ValueError(f"need score_parts >= 0, score_part_pairs >= 1, max_parts >= 1; got {count}, {part_pairs}, "
                         f"{max_parts}")  # fmt: skip
    wanted = count or math.ceil(pairs / part_pairs)
    if wanted > max_parts:
        print(f"{wanted} score parts asked for; using {max_parts} (resources.json fan_out.max_parts)")
    parts = max(1, min(wanted, max_parts, pairs))
    return [f"{index}/{parts}" for index in range(parts)]


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
