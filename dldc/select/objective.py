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
    held-out prompts. Per scene, each objective metric is min–max scaled over the grid to
    [0, 1] (1 = its best value over the grid, whatever its direction: distances ``FD-*``/``KD-*``/
    ``FID``/``KID`` lower is better, scores higher), and ``J(r)`` is the weighted mean with the
    weights of ``select.objective``. A metric that is constant over the grid (or missing) adds 0.

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

from dldc.select.ranking import keep_mask

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
    cleanable = ranked[ranked["cleanable"]]
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
    cleanable = ranked[ranked["cleanable"]]
    per_scene: dict[str, dict[float, float]] = {}
    overall: dict[float, float] = {}
    for ratio in grid:
        kept = keep_mask(cleanable, {}, default=ratio)
        for scene, rows in cleanable.groupby("scene"):
            values = quality[rows.index[kept[rows.index]]]
            per_scene.setdefault(str(scene), {})[ratio] = float(values.mean()) - penalty * ratio
        overall[ratio] = float(quality[kept[kept].index].mean()) - penalty * ratio
    return per_scene, overall


def loop_curves(
    trials: Mapping[float, Mapping[str, Mapping[str, float]]], weights: Mapping[str, float]
) -> tuple[dict[str, dict[float, float]], dict[float, float]]:
    """``J(r)`` per scene (and for ``all``) from the trials' per-scene metric tables.

    Args:
        trials: ``{ratio: {scene: {metric: value}}}``; scene ``all`` is the whole held-out split.
        weights: ``{metric: weight}`` (``select.objective``).

    Returns:
        ``(per_scene, overall)``; a scene that lacks a trial (no held-out prompt there) is left out.

    Example:
        >>> trials = {0.0: {"all": {"FD-x": 4.0, "CLIPScore-x": 10.0}},
        ...           0.2: {"all": {"FD-x": 2.0, "CLIPScore-x": 10.0}}}
        >>> loop_curves(trials, {"FD-x": 1.0, "CLIPScore-x": 1.0})[1]
        {0.0: 0.0, 0.2: 0.5}
    """
    from dldc.evaluate.evaluate import higher_is_better  # lazily: it imports torch

    total = sum(weights.values())
    if total <= 0:
        raise ValueError("select.objective needs at least one positive weight")
    ratios = sorted(trials)
    scenes = sorted({scene for table in trials.values() for scene in table})
    curves: dict[str, dict[float, float]] = {}
    for scene in scenes:
        if any(scene not in trials[r] for r in ratios):
            continue
        score = dict.fromkeys(ratios, 0.0)
        for metric, weight in weights.items():
            values = np.array([trials[r][scene].get(metric, math.nan) for r in ratios], dtype=float)
            if np.isnan(values).any() or np.ptp(values) == 0:
                continue
            scaled = (values - values.min()) / np.ptp(values)
            if not higher_is_better(metric):
                scaled = 1.0 - scaled
            for r, s in zip(ratios, scaled):
                score[r] += weight * float(s) / total
        curves[scene] = score
    overall = curves.pop(ALL_SCENES, {})
    return curves, overall


def argbest(curve: Mapping[float, float]) -> float:
    """The ratio with the highest ``J``; ties (within 1e-12) go to the smallest ratio."""
    best = max(curve.values())
    return min(r for r, v in curve.items() if v >= best - 1e-12)


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
) -> Choice:
    """Pick ``r*`` per scene (argbest of its curve) and the global ratio; small or curve-less scenes fall back.

    Args:
        curves: ``{scene: {ratio: J}}``.
        overall: ``{ratio: J}`` of one ratio for every scene.
        sizes: cleanable pairs per scene (every scene to decide for).
        min_scene_pairs: below this many pairs a scene takes the global ratio.

    Raises:
        ValueError: the overall curve is empty.
    """
    if not overall:
        raise ValueError("no overall curve: nothing to choose a global ratio from")
    global_ratio = argbest(overall)
    choice = Choice({}, global_ratio)
    for scene in sorted(sizes):
        n = sizes[scene]
        curve = curves.get(scene)
        if n < min_scene_pairs:
            why = f"{n} cleanable pairs < select.min_scene_pairs={min_scene_pairs}: global ratio {global_ratio:g}"
        elif not curve:
            why = f"no per-scene curve (no held-out prompt of this scene?): global ratio {global_ratio:g}"
        else:
            ratio = argbest(curve)
            choice.ratios[scene] = ratio
            choice.reasons[scene] = (
                f"argbest of J over the grid: r={ratio:g} "
                f"(J={curve[ratio]:.4g}; at r=0: {curve.get(0.0, math.nan):.4g})"
            )
            continue
        choice.ratios[scene] = global_ratio
        choice.reasons[scene] = why
        choice.fallbacks[scene] = why
    return choice
