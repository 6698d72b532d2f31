"""`dldc select-trial` (GPU, fanned out over the trial slots) and `dldc select` (gather) as Kubeflow components."""

from kfp import dsl

from components.images import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def select_trial(
    captions: dsl.Input[dsl.Dataset],
    scorer: dsl.Input[dsl.Model],
    trial: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    row: int,
    mode: str,
    ratios: list,
    settings: list,
    profile: str,
    base: str = "",
    base_model: dsl.Input[dsl.Model] = None,
):
    """Row `row` of `mode`'s trial plan on `captions` (EGL output): each scene cleaned at its ratio, short LoRA,
    held-out eval (`ratios`: the proxy's grid). A row past the plan finishes at once as idle."""
    import json
    import os

    from dldc.run import run_stage

    chosen = base_model.path if base_model is not None else base
    scorer_settings = [
        f"evaluate.feature_scorers.indomain=indomain:{scorer.path}",
        f"evaluate.clip_scorers.indomain=indomain:{scorer.path}",
    ]
    args = [
        "select-trial",
        "--row",
        str(row),
        "--scores",
        os.path.join(captions.path, "scores.parquet"),
        "--manifest",
        os.path.join(captions.path, "manifest.parquet"),
        "--out",
        trial.path,
    ]
    command = [*args, *(["--base", chosen] if chosen else [])]
    plan_settings = [f"select.mode={mode}", f"select.grid={json.dumps([float(r) for r in ratios])}"]
    metrics = run_stage(command, [*settings, *scorer_settings, *plan_settings], metrics_from=trial.path,
                        profile=profile)
    for name, value in metrics.items():
        summary.log_metric(name, value)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select(
    captions: dsl.Input[dsl.Dataset],
    selection: dsl.Output[dsl.Dataset],
    summary: dsl.Output[dsl.Metrics],
    ratios: list,
    settings: list,
    profile: str,
    mode: str = "calibrate",
    rows: list = [0, 1, 2, 3, 4, 5],  # noqa: B006 - a KFP default, never mutated
    trials: dsl.Input[list[dsl.Dataset]] = None,
):
    """r* per scene: from the scores alone in `proxy` mode, else with the `trials` of `mode`'s plan (one per
    slot of `rows`; `ratios`: the proxy's grid); writes the cleaned manifests into `selection`.

    `selection` holds `cleaned_manifest.parquet` (per-scene r*), `global/cleaned_manifest.parquet`,
    `dropped.parquet`, `selection.json`, `results.md` and `plots/`.
    """
    import json
    import os
    import tempfile

    from dldc.run import run_stage

    # `dldc select` reads <trials>/*/trial.json: link each trial artifact into one folder.
    gathered = tempfile.mkdtemp(prefix="trials-")
    for index, artifact in enumerate(trials or []):
        os.symlink(artifact.path, os.path.join(gathered, f"trial-{index}"))
    metrics = run_stage(
        [
            "select",
            "--mode",
            mode,
            "--scores",
            os.path.join(captions.path, "scores.parquet"),
            "--manifest",
            os.path.join(captions.path, "manifest.parquet"),
            "--trials",
            gathered,
            "--out",
            selection.path,
        ],
        [*settings, f"select.grid={json.dumps([float(r) for r in ratios])}",
         f"select.rows={json.dumps([int(r) for r in rows])}"],
        metrics_from=selection.path,
        profile=profile,
    )
    for name, value in metrics.items():
        summary.log_metric(name, value)
