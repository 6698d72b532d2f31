"""Objectives that turn a ratio grid into a choice: per scene, and one global ratio.

Two sources of curves ``J(r)`` over the grid (higher is better; ties go to the smaller ratio,
i.e. to keeping more data):

``proxy`` (no training, :func:`proxy_curves`)
    The pairs' raw IEL cosines (every scorer column of ``scores.parquet``), each turned into a
    z-score over *all* cleanable pairs (pooled over scenes, so a scene whose captions are worse
    than the others' stays worse) and averaged over scorers into one ``quality`` per pair
    (an unscorable pair counts as the lowest seen). For a scene cut at ``r`` (the lowest ``r`` by
    the fused score dropped)::

        J(r) = mean quality of the kept pairs − penalty · r

    Dropping a noisy tail raises the kept mean by much more than ``penalty`` per unit of ratio;
    dropping the lower tail of an already clean scene raises it by less, and the size penalty
    wins. ``penalty`` is in pooled standard deviations per unit of ratio (``select.proxy_penalty``).

``loop`` (DLDC's dual loop, :func:`loop_curves`)
    One short fine-tune per ratio (every scene cleaned at that ratio), evaluated per scene on
    held-out prompts. Per scene, each objective metric ``m`` (direction ``±1``, as the trials'
    evaluations record it: distances ``FD-*``/``KD-*``/``FID``/``KID`` lower is better, scores
    higher) is measured as its gain over the
    smallest ratio of the grid, in units of its bootstrap standard deviation ``s_m`` (the root mean
    square over the grid of each trial's bootstrap SD), and weighted with ``select.objective``::

        J(r) = Σ_m w_m · dir_m · (m(r) − m(r_0)) / s_m  /  Σ_m w_m

    so a metric that the held-out prompts measure poorly (a per-scene FD from a handful of images)
    counts for less. The trials' bootstrap replicates share their draws, so ``J``'s replicates
    give the paired standard error of ``J(r) − J(r_best)``; ``r*`` is the *smallest* ratio whose
    ``J`` is within ``select.tolerance`` such errors of the best (``1``: the one-standard-error rule
    of Breiman et al., 1984, keep the most data the evidence allows; ``0``, the default: the plain
    best, see ``select.tolerance``). The errors are recorded either way. Trials without bootstrap fall back
    to min-max scaling over the grid (1 = best) and the plain best. A metric that is constant over
    the grid (or missing) adds 0.

A scene with fewer than ``select.min_scene_pairs`` cleanable pairs, or with no curve (no held-out
prompt in the loop), takes the global ratio; :func:`choose` records why.

Example:
    >>> curves = {"a": {0.0: 1.0, 0.2: 3.0}, "b": {0.0: 2.0, 0.2: 2.0}}
    >>> picks = choose(curves, {0.0: 1.0, 0.2: 2.0}, {"a": 50, "b": 50, "c": 3}, min_scene_pairs=10)
    >>> picks.global_ratio, picks.ratios
    (0.2, {'a': 0.2, 'b': 0.0, 'c': 0.2})
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dldc.select.ranking import keep_mask, n_dropped

ALL_SCENES = "all"


def scorer_columns(frame: pd.DataFrame) -> list[str]:
    """The raw cosine column of each scorer: every ``<name>`` with a ``<name>_clipscore`` beside it."""
    names = [c.removesuffix("_clipscore") for c in frame.columns if c.endswith("_clipscore")]
    return [name for name in names if name in frame.columns]


def pair_quality(ranked: pd.DataFrame) -> pd.Series:
    """Per cleanable pair, the mean over scorers of its cosine's z-score among all cleanable pairs.

    Raises:
        ValueError: no scorer column (``<name>`` + ``<name>_clipscore``) in the frame.
    """
    columns = scorer_columns(ranked)
    if not columns:
        raise ValueError("the scores have no scorer cosine columns (<name> with <name>_clipscore); cannot run proxy")
    cleanable = ranked.loc[ranked["cleanable"], columns]  # copies of these columns only, at 10⁶ pairs
    zs = []
    for column in columns:
        values = cleanable[column].astype(float)
        std = values.std(ddof=0)
        z = (values - values.mean()) / std if std > 0 else values * 0.0
        zs.append(z.fillna(z.min() if z.notna().any() else 0.0))
    return pd.concat(zs, axis=1).mean(axis=1)


def proxy_curves(
    ranked: pd.DataFrame, grid: Sequence[float], penalty: float
) -> tuple[dict[str, dict[float, float]], dict[float, float]]:
    """``J(r)`` of every scene and of one global ratio (every scene cut at ``r``), see the module docstring."""
    quality = pair_quality(ranked)
    cleanable = ranked.loc[ranked["cleanable"], ["scene", "rank", "cleanable"]]
    per_scene: dict[str, dict[float, float]] = {}
    overall: dict[float, float] = {}
    for ratio in grid:
        kept = keep_mask(cleanable, {}, default=ratio)
        for scene, rows in cleanable.groupby("scene"):
            values = quality[rows.index[kept[rows.index]]]
            per_scene.setdefault(str(scene), {})[ratio] = float(values.mean()) - penalty * ratio
        overall[ratio] = float(quality[kept[kept].index].mean()) - penalty * ratio
    return per_scene, overall


def proxy_intervals(
    ranked: pd.DataFrame, grid: Sequence[float], penalty: float, draws: int, seed: int = 0, coverage: float = 0.8
) -> dict[str, dict[str, float]]:
    """How firmly each scene's proxy ``r*`` is determined: a bootstrap over its pairs.

    Each replicate resamples the scene's cleanable pairs with replacement (ranks kept: the cut still
    drops the lowest by fused score), recomputes ``J(r)`` on the grid and takes its argbest. Returns
    ``{scene: {"sd", "low", "high"}}`` (SD and the central ``coverage`` interval of the replicates'
    ``r*``); ``{}`` with ``draws < 2``. The draws depend on ``seed`` and the scene's name only.

    Example:
        >>> frame = pd.DataFrame({"pair_id": [f"p{i}" for i in range(40)], "scene": "x", "cleanable": True,
        ...                       "rank": range(40), "a": [-3.0] * 8 + [1.0] * 32, "a_clipscore": 0.0})
        >>> proxy_intervals(frame, [0.0, 0.2, 0.4], penalty=1.0, draws=50)["x"]["high"] <= 0.4
        True
    """
    if draws < 2:
        return {}
    quality = pair_quality(ranked)
    cleanable = ranked.loc[ranked["cleanable"], ["scene", "rank"]]
    grid = sorted(float(r) for r in grid)
    out: dict[str, dict[str, float]] = {}
    for scene, rows in cleanable.groupby("scene"):
        ordered = quality[rows.sort_values("rank").index].to_numpy(dtype=float)
        n = len(ordered)
        rng = np.random.default_rng([seed, *str(scene).encode()])
        sample = np.sort(rng.integers(0, n, size=(draws, n)), axis=1)  # sorted indices = ranked order
        values = ordered[sample]
        tails = np.cumsum(values[:, ::-1], axis=1)[:, ::-1]  # tails[:, d] = sum of values[:, d:]
        curves = np.stack([tails[:, n_dropped(r, n)] / (n - n_dropped(r, n)) - penalty * r for r in grid], axis=1)
        chosen = np.asarray(grid)[np.argmax(curves, axis=1)]  # ties: the smaller ratio
        tail = (1.0 - coverage) / 2
        out[str(scene)] = {"sd": float(np.std(chosen, ddof=1)), "low": float(np.quantile(chosen, tail)),
                           "high": float(np.quantile(chosen, 1.0 - tail))}
    return out


@dataclass
class LoopCurves:
    """``J(r)`` per scene and overall, with the shortfall from the best that each ratio is allowed.

    Attributes:
        curves: ``{scene: {ratio: J}}`` (scenes that have every trial).
        overall: ``{ratio: J}`` of the whole held-out split (one ratio for every scene).
        errors: ``{scene or "all": {ratio: paired bootstrap SE of J(ratio) − J(best)}}``; empty for a
            scene judged without bootstrap replicates.
        margins: ``errors`` times the tolerance: how far below the best a ratio may be and still win.
        scaling: ``{scene or "all": "bootstrap-sd" | "min-max"}``.
        draws: ``{scene or "all": (ratios × replicates)}`` the bootstrap replicates of ``J`` (paired
            across ratios); absent for a scene judged without them.
    """

    curves: dict[str, dict[float, float]]
    overall: dict[float, float]
    errors: dict[str, dict[float, float]] = field(default_factory=dict)
    margins: dict[str, dict[float, float]] = field(default_factory=dict)
    scaling: dict[str, str] = field(default_factory=dict)
    draws: dict[str, np.ndarray] = field(default_factory=dict)


def loop_curves(
    trials: Mapping[float, Mapping[str, Mapping[str, float]]],
    weights: Mapping[str, float],
    directions: Mapping[str, bool],
    replicates: Mapping[float, Mapping[str, Mapping[str, np.ndarray]]] | None = None,
    tolerance: float = 1.0,
) -> LoopCurves:
    """``J(r)`` per scene (and for ``all``) from the trials' per-scene metric tables, see the module docstring.

    Args:
        trials: ``{ratio: {scene: {metric: value}}}``; scene ``all`` is the whole held-out split.
        weights: ``{metric: weight}`` (``select.objective``).
        directions: ``{metric: higher_is_better}`` as the trials' evaluations record them
            (:func:`dldc.select.trial.trial_directions`).
        replicates: ``{ratio: {scene: {metric: bootstrap values}}}`` with the same draws in every trial
            (:func:`dldc.select.trial.trial_replicates`); without them a scene is min-max scaled.
        tolerance: allowed shortfall from the best, in paired standard errors (``select.tolerance``).

    Raises:
        ValueError: no positive weight.
        KeyError: a weighted metric that varies over the grid has no direction.

    Example:
        >>> trials = {0.0: {"all": {"FD-x": 4.0, "CLIPScore-x": 10.0}},
        ...           0.2: {"all": {"FD-x": 2.0, "CLIPScore-x": 10.0}}}
        >>> loop_curves(trials, {"FD-x": 1.0, "CLIPScore-x": 1.0}, {"FD-x": False, "CLIPScore-x": True}).overall
        {0.0: 0.0, 0.2: 0.5}
    """
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("select.objective needs at least one positive weight")
    ratios = sorted(trials)
    scenes = sorted({scene for table in trials.values() for scene in table})
    result = LoopCurves({}, {})
    for scene in scenes:
        if any(scene not in trials[r] for r in ratios):
            continue
        reps = _scene_replicates(replicates, ratios, scene, weights)
        score = np.zeros(len(ratios))
        draws = None if reps is None else np.zeros((len(ratios), len(next(iter(reps.values()))[0])))
        for metric, weight in weights.items():
            values = np.array([trials[r][scene].get(metric, math.nan) for r in ratios], dtype=float)
            if weight == 0 or np.isnan(values).any() or np.ptp(values) == 0:
                continue
            if metric not in directions:
                raise KeyError(f"no direction recorded for objective metric {metric!r}")
            direction = 1.0 if directions[metric] else -1.0
            if reps is None:
                scaled = (values - values.min()) / np.ptp(values)
                score += weight * (scaled if direction > 0 else 1.0 - scaled) / total
                continue
            spread = float(np.sqrt(np.nanmean(np.nanvar(reps[metric], axis=1))))
            if not spread > 0:
                continue
            score += weight * direction * (values - values[0]) / spread / total
            draws += weight * direction * (reps[metric] - reps[metric][0]) / spread / total
        result.curves[scene] = {r: float(v) for r, v in zip(ratios, score)}
        result.scaling[scene] = "min-max" if reps is None else "bootstrap-sd"
        if draws is not None:
            best = int(np.argmax(score))
            errors = np.nan_to_num(np.nanstd(draws - draws[best], axis=1))
            result.errors[scene] = {r: float(e) for r, e in zip(ratios, errors)}
            result.margins[scene] = {r: float(tolerance * e) for r, e in zip(ratios, errors)}
            result.draws[scene] = draws
    result.overall = result.curves.pop(ALL_SCENES, {})
    return result


def _scene_replicates(
    replicates: Mapping[float, Mapping[str, Mapping[str, np.ndarray]]] | None,
    ratios: list[float],
    scene: str,
    weights: Mapping[str, float],
) -> dict[str, np.ndarray] | None:
    """``{metric: (ratios × draws)}`` of one scene, or ``None`` unless every weighted metric has them all."""
    if not replicates:
        return None
    found: dict[str, np.ndarray] = {}
    for metric, weight in weights.items():
        if weight == 0:
            continue
        rows = [replicates.get(r, {}).get(scene, {}).get(metric) for r in ratios]
        if any(row is None or len(row) < 2 for row in rows) or len({len(row) for row in rows}) != 1:
            return None
        found[metric] = np.vstack(rows).astype(float)
    return found or None


def argbest(curve: Mapping[float, float], margins: Mapping[float, float] | None = None) -> float:
    """The smallest ratio whose ``J`` is within its margin (default 1e-12) of the highest ``J``.

    Example:
        >>> argbest({0.0: 0.0, 0.1: 2.0, 0.2: 2.5}), argbest({0.0: 0.0, 0.1: 2.0, 0.2: 2.5}, {0.1: 0.6})
        (0.2, 0.1)
    """
    best = max(curve.values())
    margins = margins or {}
    allowed = {r: m if m == m else 0.0 for r, m in margins.items()}  # NaN margin: no slack
    return min(r for r, v in curve.items() if v >= best - max(allowed.get(r, 0.0), 1e-12))


@dataclass
class Choice:
    """The ratios chosen, and why.

    Attributes:
        ratios: ``{scene: r*}`` for every scene with cleanable pairs.
        global_ratio: the best single ratio for all scenes.
        reasons: ``{scene: sentence}``.
        fallbacks: ``{scene: why it took the global ratio}``.
    """

    ratios: dict[str, float]
    global_ratio: float
    reasons: dict[str, str] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)


def choose(
    curves: Mapping[str, Mapping[float, float]],
    overall: Mapping[float, float],
    sizes: Mapping[str, int],
    min_scene_pairs: int,
    margins: Mapping[str, Mapping[float, float]] | None = None,
) -> Choice:
    """Pick ``r*`` per scene (argbest of its curve) and the global ratio; small or curve-less scenes fall back.

    Args:
        curves: ``{scene: {ratio: J}}``.
        overall: ``{ratio: J}`` of one ratio for every scene.
        sizes: cleanable pairs per scene (every scene to decide for).
        min_scene_pairs: below this many pairs a scene takes the global ratio.
        margins: ``{scene or "all": {ratio: allowed shortfall from the best J}}`` (:class:`LoopCurves`).

    Raises:
        ValueError: the overall curve is empty.
    """
    if not overall:
        raise ValueError("no overall curve: nothing to choose a global ratio from")
    margins = margins or {}
    global_ratio = argbest(overall, margins.get(ALL_SCENES))
    choice = Choice({}, global_ratio)
    for scene in sorted(sizes):
        n = sizes[scene]
        curve = curves.get(scene)
        if n < min_scene_pairs:
            why = f"{n} cleanable pairs < select.min_scene_pairs={min_scene_pairs}: global ratio {global_ratio:g}"
        elif not curve:
            why = f"no per-scene curve (no held-out prompt of this scene?): global ratio {global_ratio:g}"
        else:
            ratio = argbest(curve, margins.get(scene))
            top = argbest(curve)
            choice.ratios[scene] = ratio
            choice.reasons[scene] = (
                f"argbest of J over the grid: r={ratio:g} "
                f"(J={curve[ratio]:.4g}; at r=0: {curve.get(0.0, math.nan):.4g})"
                if ratio == top else
                f"smallest r within the margin of the best: r={ratio:g} (J={curve[ratio]:.4g}, margin "
                f"{margins[scene][ratio]:.3g}; best r={top:g}, J={curve[top]:.4g})"
            )
            continue
        choice.ratios[scene] = global_ratio
        choice.reasons[scene] = why
        choice.fallbacks[scene] = why
    return choice
