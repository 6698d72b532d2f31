"""Ranking pairs within their scene by the fused IEL score, and cutting the lowest ratio of each scene.

The cleanable pairs are those of ``select.splits`` (the training split: the held-out and test
splits are never cleaned). Within a scene they are ordered by ``fused`` ascending (ties by
``pair_id``, so the order is deterministic), and a ratio ``r`` drops the first
``floor(r * n + 1e-9)`` of the scene's ``n`` pairs. A pair without a fused score (NaN: no scorer
could score it) ranks lowest: it is dropped first, never silently kept.

Example:
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"pair_id": list("abcde"), "scene": ["x"] * 4 + ["y"],
    ...                       "split": "train", "fused": [0.4, 0.1, 0.3, 0.2, 0.5]})
    >>> ranked = rank_within_scene(frame)
    >>> sorted(ranked.loc[~keep_mask(ranked, {"x": 0.5, "y": 0.5}), "pair_id"])
    ['b', 'd']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dldc.data.manifest import ids_in, read_manifest
from dldc.iel.fuse import scene_percentile

_EPS = 1e-9


def n_dropped(ratio: float, n: int) -> int:
    """Pairs a ratio drops from a scene of ``n`` cleanable pairs: ``floor(ratio * n)``.

    Example:
        >>> n_dropped(0.3, 10), n_dropped(0.25, 10), n_dropped(0.0, 7)
        (3, 2, 0)
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"a cleaning ratio must be in [0, 1), got {ratio}")
    return int(math.floor(ratio * n + _EPS))


def load_ranked(scores_path: str | Path, manifest_path: str | Path, splits: list[str]) -> pd.DataFrame:
    """Join the manifest with its scores and rank the cleanable pairs within their scene.

    Args:
        scores_path: ``scores.parquet`` of ``dldc score`` / ``dldc caption`` (the final captions' scores).
        manifest_path: the manifest those scores belong to (``dldc caption``'s output after the EGL).
        splits: the splits that are cleaned; the others pass through untouched.

    Returns:
        The manifest rows with ``fused``, the scorer columns, ``cleanable`` and (for cleanable pairs)
        ``rank`` (0 = lowest in its scene) and ``scene_size``; ``scene_percentile`` is recomputed
        among the cleanable pairs of the scene.

    Raises:
        FileNotFoundError: a file is missing (says which stage writes it).
        ValueError: the scores do not cover the manifest, or lack ``fused``.
    """
    for path, stage in ((scores_path, "dldc score / dldc caption"), (manifest_path, "dldc ingest / dldc caption")):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found; run `{stage}` first (or set select.scores / select.manifest)")
    manifest, _ = read_manifest(manifest_path)
    names = pq.read_schema(scores_path).names
    if "fused" not in names or "pair_id" not in names:
        raise ValueError(f"{scores_path} has no pair_id/fused columns; is it a dldc scores.parquet?")
    # Only the score columns: the manifest's own (image, scene, split ...) are not read twice.
    scores = pd.read_parquet(scores_path, columns=[c for c in names if c not in manifest.columns or c == "pair_id"])
    missing = manifest.loc[~ids_in(manifest["pair_id"], scores["pair_id"]), "pair_id"]
    if len(missing):
        example = sorted(missing.tolist())[:3]
        raise ValueError(
            f"{scores_path} lacks scores for {len(missing)} pairs of {manifest_path} (e.g. {example}); "
            "score the same manifest (dldc caption writes both files together)"
        )
    frame = manifest.merge(scores, on="pair_id", how="left", validate="one_to_one")
    frame["cleanable"] = frame["split"].isin(splits)
    return rank_within_scene(frame)


def rank_within_scene(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``rank`` (0 = lowest fused in its scene), ``scene_size`` and ``scene_percentile`` to the cleanable rows.

    ``frame`` needs ``pair_id``, ``scene``, ``fused`` and either ``cleanable`` or ``split``
    (then every row is cleanable).
    """
    out = frame.copy(deep=False)  # copy-on-write (pandas 3): the caller's frame stays as it was
    if "cleanable" not in out.columns:
        out["cleanable"] = True
    out["rank"] = -1
    out["scene_size"] = 0
    cleanable = out.loc[out["cleanable"], ["scene", "fused", "pair_id"]]  # what ranking reads: no copy of the rest
    # NaN fused (unscorable) sorts first: dropped before any scored pair.
    ordered = cleanable.assign(_f=cleanable["fused"].fillna(-np.inf)).sort_values(["scene", "_f", "pair_id"])
    out.loc[ordered.index, "rank"] = ordered.groupby("scene").cumcount().to_numpy()
    out.loc[ordered.index, "scene_size"] = ordered.groupby("scene")["pair_id"].transform("count").to_numpy()
    out["scene_percentile"] = np.nan
    out.loc[cleanable.index, "scene_percentile"] = scene_percentile(
        cleanable["fused"].fillna(-np.inf), cleanable["scene"]
    )
    return out


def keep_mask(ranked: pd.DataFrame, ratios: Mapping[str, float], default: float | None = None) -> pd.Series:
    """Which rows survive cleaning each scene at its ratio (rows that are not cleanable always do).

    Args:
        ranked: the output of :func:`rank_within_scene` / :func:`load_ranked`.
        ratios: ``{scene: r}``.
        default: the ratio of scenes missing from ``ratios``; ``None`` makes a missing scene an error.

    Raises:
        KeyError: a cleanable scene has no ratio and there is no default.
    """
    keep = pd.Series(True, index=ranked.index)
    for scene, rows in ranked.loc[ranked["cleanable"], ["scene", "rank"]].groupby("scene"):  # 2 columns, not all
        if scene not in ratios and default is None:
            raise KeyError(f"no cleaning ratio for scene {scene!r}")
        ratio = float(ratios.get(scene, default))
        keep[rows.index] = rows["rank"] >= n_dropped(ratio, len(rows))
    return keep


def scene_sizes(ranked: pd.DataFrame) -> dict[str, int]:
    """Cleanable pairs per scene."""
    return {str(k): int(v) for k, v in ranked.loc[ranked["cleanable"], ["scene"]].groupby("scene").size().items()}


def write_cleaned_manifest(
    source: str | Path, ranked: pd.DataFrame, keep: pd.Series, out: str | Path, extra: dict | None = None
) -> int:
    """Write the kept rows of ``ranked`` as a manifest at ``out`` (dataset root re-pointed); returns the row count.

    The rows keep their final (EGL) captions and ``caption_source``; the metadata of ``source`` is
    carried over with its root made relative to ``out`` and ``extra`` added under ``extra.select``.
    """
    import os
    from dataclasses import asdict

    from dldc.data.manifest import MANIFEST_SCHEMA, ManifestMeta, dataset_root, read_manifest_meta, write_manifest

    meta = read_manifest_meta(source)
    root = dataset_root(source, meta)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = ranked.loc[keep[keep].index, MANIFEST_SCHEMA.names]
    relative = os.path.relpath(root, out.parent.resolve())
    new_meta = ManifestMeta(**{**asdict(meta), "root": relative, "extra": {**meta.extra, "select": extra or {}}})
    write_manifest(out, kept, new_meta)
    return len(kept)
