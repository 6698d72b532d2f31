"""From a plan's finished trials to each scene's ``r*``, its interval and where the evidence came from.

Both trial modes judge a trial by one number: the ``select.objective`` of the whole held-out set
(scene ``all``), each metric in units of its bootstrap SD (:func:`dldc.select.objective.loop_curves`),
with bootstrap replicates that share their draws across trials (paired).

``calibrate`` (:func:`calibrate_ratios`)
    ``λ*`` = the smallest level whose objective is within ``select.calibrate_tolerance`` paired SEs of
    the best; every scene takes ``min(λ* · proxy r, select.max_ratio)``, and its interval is the
    proxy's bootstrap interval scaled by ``λ*``.
``attribute`` (:func:`attribute_ratios`)
    The objective regressed on the ±1 design (:func:`dldc.select.design.fit_effects`): each
    screened scene's effect with an SE from the paired replicates and the residual between trials;
    the effect and the proxy are combined by precision (:func:`dldc.select.design.combine_ratio`).

Every scene's record (``selection.json``'s ``scenes``): ``ratio``, ``low``/``high`` (80%),
``evidence`` (``scores``, ``scores+calibration(k trials)``, ``scores+attribution(k trials)``, ...),
``effect``, ``se``, ``p_positive`` (attribution only), ``low_confidence`` (interval wider than
``select.low_confidence_width``) and ``no_model_signal`` (the generated images of the scene score
below ``select.signal_floor`` of the real held-out images' in-domain CLIPScore, mean over trials:
the generator does not draw the scene well enough for the trials to judge it).

The global-ratio baseline of the trial modes cleans every scene at the pair-weighted mean of the
chosen ratios: the same share of pairs dropped, without the per-scene assignment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dldc.config import DldcConfig, SelectConfig
from dldc.select.design import combine_ratio, fit_effects
from dldc.select.objective import ALL_SCENES, Choice, argbest, loop_curves
from dldc.select.plan import TrialPlan
from dldc.select.trial import trial_directions, trial_replicates


@dataclass
class Decided:
    """What a trial mode chose (see the module docstring)."""

    ratios: dict[str, float]
    global_ratio: float
    reasons: dict[str, str]
    scenes: dict[str, dict[str, Any]]
    objective: dict[str, Any]
    budget: str
    whole_set: dict[str, float] = field(default_factory=dict)


def whole_set_objective(trials: Sequence[dict[str, Any]], keys: Sequence[float], section: SelectConfig) -> Any:
    """:class:`dldc.select.objective.LoopCurves` of the trials' whole held-out set, keyed by ``keys``."""
    tables = {k: {ALL_SCENES: t["metrics"].get(ALL_SCENES, {})} for k, t in zip(keys, trials)}
    replicates = {k: {ALL_SCENES: trial_replicates(t["path"]).get(ALL_SCENES, {})} for k, t in zip(keys, trials)}
    directions = trial_directions([t["path"] for t in trials])
    return loop_curves(tables, section.objective, directions, replicates, 1.0)


def calibrate_ratios(plan: TrialPlan, trials: Sequence[dict[str, Any]], cfg: DldcConfig) -> Decided:
    """``calibrate``: one level λ* for the proxy's ratios (see the module docstring)."""
    section = cfg.select
    loop = whole_set_objective(trials, plan.levels, section)
    curve = loop.overall
    if not curve:
        raise ValueError("the calibrate trials have no whole-set metric of select.objective; check evaluate")
    errors = loop.errors.get(ALL_SCENES, {})
    level = argbest(curve, {k: section.calibrate_tolerance * e for k, e in errors.items()})
    row = plan.rows[plan.levels.index(level)]
    best = argbest(curve)
    signal = model_signal(trials, section)
    scenes: dict[str, dict[str, Any]] = {}
    reasons: dict[str, str] = {}
    for scene, ratio in row.items():
        low = high = None  # a scene without its own bootstrap (too small: the global ratio) has no interval
        if scene in plan.proxy_low:
            low = min(level * plan.proxy_low[scene], section.max_ratio)
            high = min(level * plan.proxy_high[scene], section.max_ratio)
        scenes[scene] = _record(ratio, low, high, f"scores+calibration({len(trials)} trials)", section,
                                signal.get(scene), proxy=plan.proxy_ratios[scene])
        reasons[scene] = (f"proxy r {plan.proxy_ratios[scene]:g} × λ*={level:g} = {ratio:g} (λ by the whole "
                          f"held-out set: the smallest within {section.calibrate_tolerance:g} paired SE of the "
                          f"best, λ={best:g})")
    objective = {
        "kind": "calibrate", "weights": dict(section.objective), "tolerance": section.calibrate_tolerance,
        "definition": "whole held-out set: weighted mean over metrics of the gain over λ=min in bootstrap SDs; "
                      "λ* = the smallest level within tolerance paired SEs of the best",
        "level": level, "best_level": best,
        "whole_set": {f"{k:g}": v for k, v in curve.items()},
        "paired_se": {f"{k:g}": e for k, e in errors.items()},
    }
    budget = (f"{len(trials)} trials: level calibrated (λ*={level:g}), per-scene differences from scores")
    return Decided(dict(row), _pair_weighted(row, plan), reasons, scenes, objective, budget)


def attribute_ratios(plan: TrialPlan, trials: Sequence[dict[str, Any]], cfg: DldcConfig) -> Decided:
    """``attribute``: each screened scene's effect on the whole set, combined with the proxy (module docstring)."""
    section = cfg.select
    keys = [float(i) for i in range(len(trials))]
    loop = whole_set_objective(trials, keys, section)
    if not loop.overall:
        raise ValueError("the attribute trials have no whole-set metric of select.objective; check evaluate")
    response = np.array([loop.overall[k] for k in keys])
    fit = fit_effects(np.array(plan.design), response, loop.draws.get(ALL_SCENES))
    grid = sorted(float(r) for r in section.grid)
    step = min((b - a for a, b in zip(grid, grid[1:])), default=0.1)
    floor = step / math.sqrt(12)  # the grid's own resolution as an SD
    signal = model_signal(trials, section)
    p_positive = fit.p_positive()
    z = fit.z()
    scenes: dict[str, dict[str, Any]] = {}
    reasons: dict[str, str] = {}
    ratios: dict[str, float] = {}
    evidence = f"scores+attribution({len(trials)} trials)"
    for scene, proxy in plan.proxy_ratios.items():
        if scene not in plan.factors:
            ratios[scene] = proxy
            low, high = plan.proxy_low.get(scene), plan.proxy_high.get(scene)
            scenes[scene] = _record(proxy, low, high, "scores (too few pairs to screen)", section,
                                    signal.get(scene), proxy=proxy)
            reasons[scene] = (f"{scene} has fewer than select.min_scene_pairs={section.min_scene_pairs} cleanable "
                              f"pairs: not screened, the proxy's ratio {proxy:g}")
            continue
        j = plan.factors.index(scene)
        combined = combine_ratio(proxy, plan.proxy_sd.get(scene), float(z[j]), plan.high[scene], floor,
                                 section.max_ratio)
        ratios[scene] = round(combined.ratio, 4)
        scenes[scene] = _record(ratios[scene], combined.low, combined.high, evidence, section, signal.get(scene),
                                proxy=proxy, effect=float(fit.effects[j]), se=float(fit.se[j]),
                                p_positive=float(p_positive[j]), df=_finite(fit.df[j]),
                                attribution_ratio=combined.attribution_ratio,
                                attribution_weight=combined.attribution_weight, level=plan.high[scene])
        reasons[scene] = (f"cleaning at {plan.high[scene]:g} moved the whole-set objective by "
                          f"{fit.effects[j]:+.3g} ± {fit.se[j]:.2g} (P(>0)={p_positive[j]:.2f}); combined with the "
                          f"proxy's {proxy:g} by precision (trials' weight {combined.attribution_weight:.2f})")
    objective = {
        "kind": "attribute", "weights": dict(section.objective),
        "definition": "whole held-out set objective (bootstrap-SD units) regressed on the ±1 screening design; "
                      "effect = high − low, SE = paired bootstrap + residual (t with Welch–Satterthwaite df); "
                      "r* = precision-weighted mean of the proxy's r (bootstrap SD) and level · P(effect>0) "
                      "(SD level/|z|)",
        "design": plan.design, "factors": plan.factors, "foldover": section.foldover,
        "whole_set": {trial["plan"]["label"]: float(v) for trial, v in zip(trials, response)},
        "intercept": fit.intercept, "residual_df": fit.residual_df,
        "se_bootstrap": dict(zip(plan.factors, map(float, fit.se_bootstrap))),
        "se_residual": {s: (None if math.isnan(v) else float(v)) for s, v in zip(plan.factors, fit.se_residual)},
    }
    residual = (f"{fit.residual_df} residual degrees of freedom" if fit.residual_df else
                "no residual degree of freedom (SEs from the bootstrap alone)")
    small = len(plan.proxy_ratios) - len(plan.factors)
    budget = (f"{len(trials)} trials for {len(plan.factors)} scenes{' with foldover' if section.foldover else ''}: "
              f"one effect per scene, {residual}" + (f"; {small} small scenes from scores" if small else ""))
    return Decided(ratios, _pair_weighted(ratios, plan), reasons, scenes, objective, budget)


def scene_records(mode: str, plan: TrialPlan, choice: Choice, section: SelectConfig,
                  loop_trials: int = 0) -> dict[str, dict[str, Any]]:
    """The per-scene records of ``proxy`` (bootstrap intervals) and ``loop`` (no interval)."""
    records = {}
    for scene, ratio in choice.ratios.items():
        if mode == "proxy":
            low, high = plan.proxy_low.get(scene), plan.proxy_high.get(scene)
            evidence = "scores" if scene not in choice.fallbacks else "scores (global ratio: too few pairs)"
        else:
            low = high = None
            evidence = f"loop({loop_trials} trials)"
        records[scene] = _record(ratio, low, high, evidence, section, None, proxy=plan.proxy_ratios.get(scene))
    return records


def budget_line(mode: str, trials: int) -> str:
    """What the trial budget of ``proxy`` / ``loop`` could determine."""
    if mode == "proxy":
        return "no trials: per-scene ratios and their intervals from the scores alone"
    return (f"{trials} trials, every scene at each grid ratio: per-scene columns under every scene's cleaning "
            "(not per-scene effects)")


def model_signal(trials: Sequence[dict[str, Any]], section: SelectConfig) -> dict[str, dict[str, Any]]:
    """Per scene: the generated and real in-domain CLIPScore (means over trials) and the flag."""
    metric = next((m for m in section.objective if m.startswith("CLIPScore-")), None)
    if metric is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    scenes = {s for t in trials for s in t.get("metrics", {}) if s != ALL_SCENES}
    for scene in sorted(scenes):
        generated = [t["metrics"][scene].get(metric) for t in trials if scene in t.get("metrics", {})]
        real = [t.get("reference", {}).get(scene, {}).get(metric) for t in trials]
        generated = [v for v in generated if v is not None and not math.isnan(v)]
        real = [v for v in real if v is not None and not math.isnan(v)]
        if not generated or not real:
            continue
        g, r = float(np.mean(generated)), float(np.mean(real))
        out[scene] = {"metric": metric, "generated": g, "real": r, "flag": bool(r > 0 and g < section.signal_floor * r)}
    return out


def _record(ratio: float, low: float | None, high: float | None, evidence: str, section: SelectConfig,
            signal: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "ratio": float(ratio),
        "low": None if low is None else float(low),
        "high": None if high is None else float(high),
        "evidence": evidence, "effect": None, "se": None, "p_positive": None,
        "low_confidence": None if low is None else bool(high - low > section.low_confidence_width),
        "no_model_signal": None if signal is None else signal["flag"],
        "signal": signal,
    }
    record.update(extra)
    return record


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _pair_weighted(ratios: dict[str, float], plan: TrialPlan) -> float:
    """The one ratio that drops the same share of pairs as ``ratios`` (weighted by each scene's pairs)."""
    sizes = plan.sizes
    total = sum(sizes[s] for s in ratios)
    return round(sum(ratios[s] * sizes[s] for s in ratios) / total, 4) if total else 0.0
