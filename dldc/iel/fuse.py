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

``gather_scores`` joins the raw scores of fanned-out manifest parts and fuses them. This module
imports no torch, so the gather step's process (and pod) holds only the score tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from dldc.io import output_lock, write_json, write_parquet

SCORES_FILE = "scores.parquet"
REPORT_FILE = "score.json"
SCENEFIT_SUFFIX = "_scenefit"


@dataclass
class ScoreResult:
    """What :func:`dldc.iel.engine.score_manifest` or :func:`gather_scores` wrote."""

    scores: Path
    report_path: Path
    report: dict[str, Any]
    frame: pd.DataFrame


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


def gather_scores(
    parts: Sequence[str | Path], out: str | Path, method: str = "rank", disagreement: float = 0.5
) -> ScoreResult:
    """Join the raw scores of manifest parts (``score_manifest(part=...)`` outputs) and fuse them.

    Raises:
        ValueError: parts scored with different scorers, or a pair present twice.
        dldc.io.OutputLockedError: another process is writing ``out``.
    """
    with output_lock(out):
        return _gather_scores(parts, out, method, disagreement)


def _gather_scores(parts: Sequence[str | Path], out: str | Path, method: str, disagreement: float) -> ScoreResult:
    frames, reports = [], []
    for folder in parts:
        folder = Path(folder)
        frames.append(pd.read_parquet(folder / SCORES_FILE))
        reports.append(json.loads((folder / REPORT_FILE).read_text()))
    scorer_sets = {tuple(s["scorer_id"] for s in r["scorers"]) for r in reports}
    if len(scorer_sets) != 1:
        raise ValueError(f"parts were scored with different scorers: {sorted(scorer_sets)}")
    joined = pd.concat(frames, ignore_index=True)
    if not joined["pair_id"].is_unique:
        raise ValueError("a pair appears in more than one part; were the parts cut from one manifest?")
    names = [s["name"] for s in reports[0]["scorers"]]
    signals = [f"{s['name']}{SCENEFIT_SUFFIX}" for s in reports[0]["scorers"] if s.get("scene_head")]
    fused = fuse_scores(joined, names, method, disagreement, signals=signals)
    out = Path(out)
    report = {
        "parts": [str(p) for p in parts],
        "pairs": len(fused),
        "scorers": reports[0]["scorers"],
        "fusion": method,
        "disagreement_threshold": disagreement,
        "truncated_captions": {n: int(fused[f"{n}_truncated"].sum()) for n in names},
        "disagreeing_pairs": int(fused["disagree"].sum()),
        **{
            key: sum(r[key] for r in reports)
            for key in ("images_encoded", "texts_encoded", "shards_total", "shards_reused", "oom_retries")
        },
    }
    write_parquet(out / SCORES_FILE, pa.Table.from_pandas(fused, preserve_index=False))
    write_json(out / REPORT_FILE, report)
    return ScoreResult(out / SCORES_FILE, out / REPORT_FILE, report, fused)
