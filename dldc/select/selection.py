"""``dldc select``: the cleaning ratio of every scene, and the cleaned dataset.

Pairs are ranked within their scene by the fused IEL score of their final (EGL) caption
(:mod:`dldc.select.ranking`); a ratio ``r`` drops the lowest ``r`` of a scene. The ratio of each
scene comes from (``select.mode``):

* ``proxy``: an objective on the scene's score distribution over ``select.grid``, no training
  (:mod:`dldc.select.objective`), with a bootstrap interval;
* ``calibrate`` / ``attribute``: the proxy's ratios, with their level (``calibrate``) or each
  scene's effect on the whole held-out set (``attribute``) measured by the trials of a plan
  (:mod:`dldc.select.plan`, :mod:`dldc.select.trial`, :mod:`dldc.select.decide`);
* ``loop``: the per-scene metrics of one trial per grid ratio (every scene cleaned at it).

In ``proxy`` and ``loop``, scenes with fewer than ``select.min_scene_pairs`` cleanable pairs (or no
curve) take the global ratio, the best single ratio for every scene, and ``selection.json`` says so.

Output folder (``select.out``)::

    selection.json             mode, grid, r* per scene, global ratio, per-scene records (r*, 80%
                               interval, evidence, effect ± SE, flags), budget, plan, judge, curves
                               (objective and, in loop mode, every metric per scene), reasons,
                               fallbacks, counts, baselines
    cleaned_manifest.parquet   kept pairs (each scene at its r*) with their final captions; the
                               splits that are not cleaned pass through whole
    dropped.parquet            dropped pairs: pair_id, image_id, scene, split, caption, caption_source,
                               fused, scene_percentile, rank, scene_size, ratio
    global/cleaned_manifest.parquet   the global-ratio baseline (every scene at the global ratio)
    results.parquet, results.md       one table: none (r=0) / global / per-scene, per scene: ratio,
                               kept pairs and (loop) the trial metrics at that ratio
    plots/                     histograms.png (fused score per scene with the cut), curves.png
                               (J(r)), metric_curves.png (loop: metrics vs. ratio)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from dldc.config import DldcConfig
from dldc.io import write_json, write_parquet
from dldc.select.decide import Decided, attribute_ratios, budget_line, calibrate_ratios, scene_records
from dldc.select.objective import ALL_SCENES, Choice, choose, loop_curves, proxy_curves
from dldc.select.plan import TRIAL_MODES, plan_rows_needed, plan_trials
from dldc.select.plots import draw_plots
from dldc.select.ranking import keep_mask, load_ranked, scene_sizes, write_cleaned_manifest
from dldc.select.trial import read_plan_trials, read_trials, trial_directions, trial_replicates

SELECTION_FILE = "selection.json"
CLEANED_FILE = "cleaned_manifest.parquet"
DROPPED_FILE = "dropped.parquet"
GLOBAL_DIR = "global"
RESULTS_FILE = "results.parquet"
RESULTS_MD = "results.md"
PLOTS_DIR = "plots"
DROPPED_COLUMNS = [
    "pair_id", "image_id", "scene", "split", "caption", "caption_source", "fused", "scene_percentile", "rank",
    "scene_size",
]  # fmt: skip
BASELINES = ("none", "global", "per_scene")
MODES = ("proxy", *TRIAL_MODES)


@dataclass
class SelectResult:
    """What :func:`select_ratios` wrote and decided."""

    out: Path
    selection: dict[str, Any]
    results: pd.DataFrame


def select_ratios(cfg: DldcConfig, mode: str | None = None, progress: bool = True) -> SelectResult:
    """Choose the ratio of every scene and write the cleaned manifests (see the module docstring).

    Args:
        cfg: the configuration (``select`` section; ``mode`` overrides ``select.mode``).
        mode: ``proxy``, ``calibrate``, ``attribute`` or ``loop``.
        progress: unused (kept for the stage runner's signature; trials show their own progress).

    Raises:
        FileNotFoundError: scores, manifest or a trial missing.
        ValueError: unknown mode, too few ``select.rows`` for the plan, or trials made from other
            scores / manifest.
    """
    section = cfg.select
    mode = mode or section.mode
    if mode not in MODES:
        raise ValueError(f"select mode must be one of {', '.join(MODES)}; got {mode!r}")
    grid = sorted(float(r) for r in section.grid)
    out = Path(section.out)
    ranked = load_ranked(section.scores, section.manifest, list(section.splits))
    sizes = scene_sizes(ranked)
    if not sizes:
        raise ValueError(f"no pairs of splits {section.splits} in {section.manifest}; set select.splits")
    plan = plan_trials(cfg, mode, ranked)
    if mode != "proxy":
        needed = plan_rows_needed(plan, list(section.rows))
        if needed:
            raise ValueError(needed)

    scores_sha, manifest_sha = plan.inputs["scores"], plan.inputs["manifest"]
    metric_curves: dict[str, dict[str, dict[float, float]]] = {}
    trials: dict[float, dict[str, Any]] = {}
    margins: dict[str, dict[float, float]] = {}
    decided: Decided | None = None
    if mode != "loop":
        curves, overall = proxy_curves(ranked, grid, section.proxy_penalty)
        objective = {"kind": "proxy", "penalty": section.proxy_penalty,
                     "definition": "mean pooled z-score of the kept pairs' raw cosines - penalty * r"}
        if mode != "proxy":
            plan_trials_found = read_plan_trials(section.trials, plan)
            _check_trials(plan_trials_found, scores_sha, manifest_sha, section.trials)
            decide = calibrate_ratios if mode == "calibrate" else attribute_ratios
            decided = decide(plan, plan_trials_found, cfg)
            objective = {**decided.objective, "proxy": objective}
    else:
        trials = read_trials(section.trials, grid)
        _check_trials(list(trials.values()), scores_sha, manifest_sha, section.trials)
        tables = {r: t["metrics"] for r, t in trials.items()}
        replicates = {r: trial_replicates(t["path"]) for r, t in trials.items()}
        directions = trial_directions([t["path"] for t in trials.values()])
        loop = loop_curves(tables, section.objective, directions, replicates, section.tolerance)
        curves, overall, margins = loop.curves, loop.overall, loop.margins
        for r, table in tables.items():
            for scene, values in table.items():
                for metric, value in values.items():
                    metric_curves.setdefault(scene, {}).setdefault(metric, {})[r] = value
        objective = {
            "kind": "loop", "weights": dict(section.objective), "tolerance": section.tolerance,
            "definition": "weighted mean over metrics of the gain over the smallest ratio in bootstrap SDs "
                          "(min-max scaled where a trial has no bootstrap); r* = the smallest ratio within "
                          "tolerance paired bootstrap SEs of the best",
            "scaling": loop.scaling,
            "paired_se": {scene: _keyed(m) for scene, m in loop.errors.items()},
            "margins": {scene: _keyed(m) for scene, m in margins.items()},
        }

    choice = choose(curves, overall, sizes, section.min_scene_pairs, margins)
    if decided is not None:
        choice = Choice(decided.ratios, decided.global_ratio, decided.reasons, {})
    scenes_record = decided.scenes if decided is not None else scene_records(mode, plan, choice, section, len(trials))
    budget = decided.budget if decided is not None else budget_line(mode, len(trials))
    keep = keep_mask(ranked, choice.ratios)
    keep_global = keep_mask(ranked, {}, default=choice.global_ratio)

    out.mkdir(parents=True, exist_ok=True)
    info = {"mode": mode, "global_ratio": choice.global_ratio}
    kept = write_cleaned_manifest(section.manifest, ranked, keep, out / CLEANED_FILE,
                                  {**info, "ratios": choice.ratios})
    kept_global = write_cleaned_manifest(section.manifest, ranked, keep_global, out / GLOBAL_DIR / CLEANED_FILE,
                                         {**info, "baseline": "global"})
    dropped = ranked.loc[~keep, DROPPED_COLUMNS].assign(ratio=ranked.loc[~keep, "scene"].map(choice.ratios))
    write_parquet(out / DROPPED_FILE, pa.Table.from_pandas(dropped.reset_index(drop=True), preserve_index=False))

    results = results_table(ranked, choice.ratios, choice.global_ratio, trials)
    write_parquet(out / RESULTS_FILE, pa.Table.from_pandas(results, preserve_index=False))
    (out / RESULTS_MD).write_text(render_results(results, mode, scenes_record, budget), encoding="utf-8")

    plots, note = ([], "select.plots is off")
    if section.plots:
        plots, note = draw_plots(ranked, keep, choice.ratios, curves, overall, metric_curves, out / PLOTS_DIR)

    counts = {
        scene: {
            "cleanable": n,
            "kept": int(keep[ranked.index[(ranked["scene"] == scene) & ranked["cleanable"]]].sum()),
            "dropped": int((~keep[ranked.index[(ranked["scene"] == scene) & ranked["cleanable"]]]).sum()),
        }
        for scene, n in sizes.items()
    }
    selection = {
        "mode": mode,
        "grid": grid,
        "splits": list(section.splits),
        "min_scene_pairs": section.min_scene_pairs,
        "objective": objective,
        "ratios": choice.ratios,
        "global_ratio": choice.global_ratio,
        "reasons": choice.reasons,
        "fallbacks": choice.fallbacks,
        "scenes": scenes_record,
        "budget": budget,
        "judge": {"filter": section.judge_filter, "cuts": plan.judge_cuts,
                  "scorer": "the in-domain scorer of evaluate (the one that ranked the pairs, trained by "
                            "train-scorer on the same pairs); its folds never scored their own images"},
        "plan": plan.record() if mode in ("calibrate", "attribute") else None,
        "curves": {scene: _keyed(c) for scene, c in curves.items()},
        "overall_curve": _keyed(overall),
        "metric_curves": {s: {m: _keyed(c) for m, c in per.items()} for s, per in metric_curves.items()},
        "trials": ({_key(r): {k: t[k] for k in ("path", "kept_pairs", "final_loss", "held_out_images", "key")}
                    for r, t in trials.items()} if decided is None else
                   {t["plan"]["label"]: {k: t[k] for k in ("path", "kept_pairs", "final_loss", "held_out_images",
                                                            "key")}
                    for t in plan_trials_found}),
        "counts": counts,
        "pairs": {"total": len(ranked), "cleanable": int(ranked["cleanable"].sum()), "kept": kept,
                  "dropped": int((~keep).sum()), "kept_global_baseline": kept_global},
        "inputs": {"scores": section.scores, "manifest": section.manifest,
                   "scores_sha256": scores_sha, "manifest_sha256": manifest_sha},
        "plots": [f"{PLOTS_DIR}/{name}" for name in plots],
        "plots_note": note,
    }
    write_json(out / SELECTION_FILE, selection)
    return SelectResult(out, selection, results)


def _check_trials(trials: list[dict[str, Any]], scores_sha: str, manifest_sha: str, folder: str) -> None:
    """Refuse trials run on other scores or another manifest, or judged on different prompts."""
    inputs = (scores_sha, manifest_sha)
    stale = [t["path"] for t in trials if (t.get("scores_sha256"), t.get("manifest_sha256")) != inputs]
    if stale:
        raise ValueError(f"trials {stale} in {folder} were run on other scores or another manifest; "
                         "re-run `dldc select-trial` for them")
    if len({t.get("prompt_keys_sha256") for t in trials}) > 1:
        raise ValueError(f"the trials in {folder} were judged on different held-out prompts; re-run "
                         "`dldc select-trial` for every trial with the same settings")


def _key(ratio: float) -> str:
    return f"{ratio:g}"


def _keyed(curve: dict[float, float]) -> dict[str, float | None]:
    return {_key(r): (None if v is None or (isinstance(v, float) and math.isnan(v)) else v) for r, v in curve.items()}


def results_table(
    ranked: pd.DataFrame, ratios: dict[str, float], global_ratio: float, trials: dict[float, dict[str, Any]]
) -> pd.DataFrame:
    """One row per baseline (``none``, ``global``, ``per_scene``) and scene (plus ``all``).

    Columns: ``baseline``, ``scene``, ``ratio`` (``NaN`` for ``per_scene`` over ``all``: mixed),
    ``kept``, ``dropped`` and, in loop mode, every metric of the trial at that scene's ratio (for
    ``per_scene``/``all`` there is no single trial: its metrics come from the final fine-tune).
    """
    rows = []
    cleanable = ranked[ranked["cleanable"]]
    for baseline in BASELINES:
        per_scene = {s: (0.0 if baseline == "none" else global_ratio if baseline == "global" else ratios[s])
                     for s in ratios}
        keep = keep_mask(cleanable, per_scene)
        for scene in [ALL_SCENES, *sorted(ratios)]:
            rows_in = cleanable if scene == ALL_SCENES else cleanable[cleanable["scene"] == scene]
            kept = int(keep[rows_in.index].sum())
            uniform = {per_scene[s] for s in rows_in["scene"].unique()}
            ratio = uniform.pop() if len(uniform) == 1 else math.nan
            row: dict[str, Any] = {"baseline": baseline, "scene": scene, "ratio": ratio, "kept": kept,
                                   "dropped": len(rows_in) - kept}
            trial = next((t for r, t in trials.items() if not math.isnan(ratio) and abs(r - ratio) < 1e-9), None)
            if trial is not None:
                row.update(trial["metrics"].get(scene, {}))
            rows.append(row)
    return pd.DataFrame(rows)


def render_results(results: pd.DataFrame, mode: str, scenes: dict[str, dict[str, Any]] | None = None,
                   budget: str = "") -> str:
    """``results.md``: each scene's r* with its interval and evidence, then the baselines side by side."""
    metrics = [c for c in results.columns if c not in ("baseline", "scene", "ratio", "kept", "dropped")]
    header = ["scene", "baseline", "ratio", "kept", "dropped", *metrics]
    lines = [f"# Cleaning-ratio selection ({mode})", ""]
    if budget:
        lines += [f"Trial budget: {budget}.", ""]
    if scenes:
        lines += ["| scene | r* | 80% interval | evidence | effect ± SE | P(effect > 0) | flags |",
                  "|---|---|---|---|---|---|---|"]
        for scene, rec in sorted(scenes.items()):
            interval = "–" if rec["low"] is None else f"{rec['low']:.2f}–{rec['high']:.2f}"
            effect = "–" if rec["effect"] is None else f"{rec['effect']:+.3g} ± {rec['se']:.2g}"
            chance = "–" if rec["p_positive"] is None else f"{rec['p_positive']:.2f}"
            flags = [name for name, on in (("low confidence", rec["low_confidence"]),
                                           ("no model signal", rec["no_model_signal"])) if on]
            lines.append(f"| {scene} | {rec['ratio']:.3g} | {interval} | {rec['evidence']} | {effect} | {chance} | "
                         f"{', '.join(flags) or '–'} |")
        lines.append("")
    if metrics:
        lines += ["Metrics are the held-out evaluation of the loop trial at that ratio (every scene cleaned at it); "
                  "the per-scene mix over `all` has no single trial: compare it in `dldc evaluate` after fine-tuning.",
                  ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for values in results.sort_values(["scene", "baseline"], key=lambda s: s.map(_order)).to_dict("records"):
        cells = []
        for name in header:
            value = values.get(name)
            if isinstance(value, float):
                cells.append("–" if math.isnan(value) else f"{value:.4g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _order(value: Any) -> Any:
    if value == ALL_SCENES:
        return ""
    return {b: i for i, b in enumerate(BASELINES)}.get(value, value)
