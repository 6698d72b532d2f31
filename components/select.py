"""`dldc select-trial` (GPU, fanned out over the ratio grid) and `dldc select` (gather) as Kubeflow components."""

from kfp import dsl

from components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def select_trial(
    captions: dsl.Input[dsl.Dataset],
    scorer: dsl.Input[dsl.Model],
    trial: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    ratio: float,
    settings: list,
    run_group: str,
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
):
    """One dual-loop trial: `captions` (EGL output) cleaned at `ratio` in every scene, short LoRA, held-out eval."""
    import json
    import os

    from dldc.cli import run_cli

    chosen = base_model.path if base_model is not None else base
    scorer_settings = [
        f"evaluate.feature_scorers.indomain=indomain:{scorer.path}",
        f"evaluate.clip_scorers.indomain=indomain:{scorer.path}",
    ]
    args = [
        "select-trial",
        "--ratio",
        str(ratio),
        "--scores",
        os.path.join(captions.path, "scores.parquet"),
        "--manifest",
        os.path.join(captions.path, "manifest.parquet"),
        "--out",
        trial.path,
    ]
    run_cli([*args, *(["--base", chosen] if chosen else [])], [*settings, *scorer_settings], run_group)
    with open(os.path.join(trial.path, "trial.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    summary.log_metric("ratio", report["ratio"])
    summary.log_metric("kept_pairs", report["kept_pairs"])
    for metric, value in report["metrics"].get("all", {}).items():
        if value == value:  # NaN is not a loggable metric
            summary.log_metric(metric, value)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select(
    captions: dsl.Input[dsl.Dataset],
    trials: dsl.Input[list[dsl.Dataset]],
    selection: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    ratios: list,
    settings: list,
    run_group: str,
):
    """r* per scene from the `trials` (one per ratio in `ratios`); writes the cleaned manifests into `selection`.

    `selection` holds `cleaned_manifest.parquet` (per-scene r*), `global/cleaned_manifest.parquet`,
    `dropped.parquet`, `selection.json`, `results.md` and `plots/`.
    """
    import json
    import os
    import tempfile

    from dldc.cli import run_cli

    # `dldc select` reads <trials>/*/trial.json: link each trial artifact into one folder.
    gathered = tempfile.mkdtemp(prefix="trials-")
    for index, artifact in enumerate(trials):
        os.symlink(artifact.path, os.path.join(gathered, f"trial-{index}"))
    run_cli(
        [
            "select",
            "--mode",
            "loop",
            "--scores",
            os.path.join(captions.path, "scores.parquet"),
            "--manifest",
            os.path.join(captions.path, "manifest.parquet"),
            "--trials",
            gathered,
            "--out",
            selection.path,
        ],
        [*settings, f"select.grid={json.dumps([float(r) for r in ratios])}"],
        run_group,
    )
    with open(os.path.join(selection.path, "selection.json"), encoding="utf-8") as handle:
        chosen = json.load(handle)
    summary.log_metric("global_ratio", chosen["global_ratio"])
    summary.log_metric("kept_pairs", chosen["pairs"]["kept"])
    summary.log_metric("fallbacks", len(chosen["fallbacks"]))
    for scene, ratio in chosen["ratios"].items():
        summary.log_metric(f"ratio.{scene}", ratio)
