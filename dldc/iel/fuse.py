"""Fusing per-scorer scores into one decision score, per scene.

Raw cosines of different models live on different scales (CLIP ViT-L ≈ 0.2–0.35,
RemoteCLIP higher, an in-domain model anywhere), and scenes differ too (a "farmland" caption
matches its image more easily than a "center" caption). So every score is normalised
*within its scene* before scorers are combined:

* ``rank`` (default): each scorer's within-scene percentile rank ``(rank - 0.5) / n``
  (ties get their average rank), averaged over scorers. Robust to outliers and scale.
* ``zscore``: each scorer's within-scene z-score ``(s - mean) / std`` (0 when the scene's
  std is 0), averaged over scorers.

``scene_percentile`` is the within-scene percentile rank of the fused score: the ratio
selection drops the lowest ``r`` of each scene by it. ``disagree`` flags pairs whose
scorers' within-scene percentile ranks differ by more than a threshold: one model likes
the caption and another does not, so the pair is a re-caption candidate, not a clear drop.
"""

from __future__ import annotations

import pandas as pd


def scene_percentile(values: pd.Series, scenes: pd.Series) -> pd.Series:
    """Within-scene percentile rank in (0, 1): ``(average rank - 0.5) / scene size``.

    Example:
        >>> s = pd.Series([0.1, 0.3, 0.2, 0.9]); g = pd.Series(["a", "a", "a", "b"])
        >>> scene_percentile(s, g).round(3).tolist()
        [0.167, 0.833, 0.5, 0.5]
    """
    grouped = values.groupby(scenes)
    return (grouped.rank(method="average") - 0.5) / grouped.transform("count")  # NaN: no rank, not counted


def scene_zscore(values: pd.Series, scenes: pd.Series) -> pd.Series:
    """Within-scene z-score (population std); 0 where a scene's scores are all equal."""
    grouped = values.groupby(scenes)
    std = grouped.transform(lambda v: v.std(ddof=0))
    z = (values - grouped.transform("mean")) / std
    return z.where(std > 0, 0.0)


def fuse_scores(
    frame: pd.DataFrame,
    scorer_names: list[str],
    method: str = "rank",
    disagreement: float = 0.5,
    signals: list[str] | tuple[str, ...] = (),
) -> pd.DataFrame:
    """Add fused and per-scene columns to a frame of raw cosine scores.

    Args:
        frame: one row per pair with a ``scene`` column and one cosine column per scorer.
        scorer_names: the cosine columns to fuse.
        method: ``rank`` or ``zscore`` (see the module docstring).
        disagreement: percentile-rank gap above which ``disagree`` is set.
        signals: further higher-is-better columns fused like scorers but not cosines (no
            ``_clipscore``), e.g. the in-domain scorer's ``indomain_scenefit``. A NaN signal
            (unknown scene) is left out of that pair's mean.

    Returns:
        A copy with ``<name>_clipscore`` (``100 * max(cos, 0)``), ``<name>_scene_pct``,
        ``fused``, ``scene_percentile`` and ``disagree`` columns.

    Raises:
        ValueError: unknown method, no scorers, or a scorer column missing.

    Example:
        >>> f = pd.DataFrame({"scene": ["a"] * 3, "x": [0.1, 0.3, 0.2], "y": [0.3, 0.1, 0.2]})
        >>> out = fuse_scores(f, ["x", "y"])
        >>> out["fused"].round(3).tolist(), out["disagree"].tolist()
        ([0.5, 0.5, 0.5], [True, True, False])
    """
    if method not in ("rank", "zscore"):
        raise ValueError(f"fusion method must be 'rank' or 'zscore', got {method!r}")
    if not scorer_names:
        raise ValueError("fuse_scores needs at least one scorer column")
    fused_names = [*scorer_names, *signals]
    missing = [name for name in [*fused_names, "scene"] if name not in frame.columns]
    if missing:
        raise ValueError(f"score frame lacks columns {missing}")
    out = frame.copy()
    normalised = []
    for name in fused_names:
        if name in scorer_names:
            out[f"{name}_clipscore"] = 100.0 * out[name].clip(lower=0.0)
        out[f"{name}_scene_pct"] = scene_percentile(out[name], out["scene"])
        normalised.append(out[f"{name}_scene_pct"] if method == "rank" else scene_zscore(out[name], out["scene"]))
    out["fused"] = pd.concat(normalised, axis=1).mean(axis=1)
    out["scene_percentile"] = scene_percentile(out["fused"], out["scene"])
    pct = out[[f"{name}_scene_pct" for name in fused_names]]
    out["disagree"] = (pct.max(axis=1) - pct.min(axis=1)) > disagreement
    return out
