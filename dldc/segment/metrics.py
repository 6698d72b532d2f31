"""Segmentation metrics: confusion matrix, IoU / mIoU, class accuracy / mAcc, bootstrap intervals.

Definitions (``C[t, p]`` = pixels of true class ``t`` predicted as ``p``; ignored pixels excluded)
    * IoU of class ``k`` = ``C[k,k] / (sum_p C[k,p] + sum_t C[t,k] - C[k,k])``; undefined (NaN)
      when the class is neither in the truth nor predicted.
    * Acc of class ``k`` (recall) = ``C[k,k] / sum_p C[k,p]``; undefined when absent from the truth.
    * mIoU / mAcc = the mean over classes where the value is defined (mmsegmentation's ``nanmean``).
    * aAcc = correctly labelled pixels / labelled pixels.

Bootstrap (:func:`bootstrap_intervals`)
    The test tiles are resampled with replacement; each resample's confusion matrix is the sum
    of its tiles' matrices, and the interval is the percentile interval of the resampled
    mIoU / mAcc. Tiles, not pixels, are the independent units (pixels of a tile are correlated).

Example:
    >>> import numpy as np
    >>> cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), num_classes=2)
    >>> cm.tolist(), round(scores(cm)["mIoU"], 4)
    ([[1, 1], [0, 2]], 0.5833)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dldc.evaluate.bootstrap import percentile_interval


def confusion_matrix(
    target: np.ndarray, predicted: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Pixel confusion matrix ``(num_classes, num_classes)`` (rows: truth), ``ignore_index`` pixels left out.

    Raises:
        ValueError: shapes differ, or a prediction / label outside ``0..num_classes-1`` (other
            than ``ignore_index`` in the target).
    """
    target, predicted = np.asarray(target), np.asarray(predicted)
    if target.shape != predicted.shape:
        raise ValueError(f"target {target.shape} and prediction {predicted.shape} must have the same shape")
    keep = target != ignore_index
    t, p = target[keep].astype(np.int64), predicted[keep].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target labels must be in 0..{num_classes - 1} or {ignore_index} (ignored), got {t.max()}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"predictions must be in 0..{num_classes - 1}, got {p.min()}..{p.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(cm: np.ndarray) -> dict[str, float | list[float]]:
    """mIoU, mAcc, aAcc and per-class IoU / Acc (NaN where undefined) of a confusion matrix."""
    cm = np.asarray(cm, np.float64)
    true, pred, hit = cm.sum(1), cm.sum(0), np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(true + pred > 0, hit / (true + pred - hit), np.nan)
        acc = np.where(true > 0, hit / true, np.nan)
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "aAcc": float(hit.sum() / total) if total else float("nan"),
        "IoU": iou.tolist(),
        "Acc": acc.tolist(),
    }


def bootstrap_intervals(
    tile_matrices: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    resamples: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    metrics: Sequence[str] = ("mIoU", "mAcc"),
) -> dict[str, list[float]]:
    """Percentile intervals ``{metric: [low, high]}`` from resampling tiles (see the module docstring).

    Args:
        tile_matrices: one confusion matrix per test tile.
        resamples: bootstrap resamples (0: no intervals, ``{}``).
        ci: coverage of the interval.
        seed: resampling seed.

    Example:
        >>> import numpy as np
        >>> same = [np.array([[3, 1], [0, 4]])] * 5   # identical tiles: a zero-width interval
        >>> bootstrap_intervals(same, resamples=20)["mIoU"] == [scores(same[0])["mIoU"]] * 2
        True
    """
    stack = np.stack(list(tile_matrices.values()) if isinstance(tile_matrices, Mapping) else list(tile_matrices))
    if resamples <= 0 or len(stack) == 0:
        return {}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(resamples):
        drawn = stack[rng.integers(0, len(stack), len(stack))].sum(0)
        result = scores(drawn)
        for metric in metrics:
            values[metric].append(result[metric])
    return {m: list(percentile_interval(np.array(v), ci)) for m, v in values.items()}
