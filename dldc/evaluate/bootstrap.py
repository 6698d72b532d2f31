"""Bootstrap intervals: shared resamples across arms, percentile intervals, paired differences.

An evaluation resamples the real images and the prompt keys ``(pair_id, seed)`` of a scene with
replacement (:func:`shared_draws`), and every arm is measured on the *same* draws: replicate ``b``
of two arms sees the same real images and the same prompts, so the difference of their replicates
is a paired bootstrap of their difference (:func:`paired_interval`). An arm that lacks some keys
leaves them out of each resample (then the pairing is only partial, and the protocol says so).

``dldc segment`` uses the same percentile interval for its tile bootstrap.

Example:
    >>> import numpy as np
    >>> real_draws, key_draws = shared_draws(seed=0, group=0, real_idx=np.arange(5), n_keys=3, resamples=4)
    >>> real_draws.shape, key_draws.shape
    ((4, 5), (4, 3))
    >>> values = np.array([1.0, 2.0, 3.0])
    >>> bool(np.allclose(mean_replicates(values, np.arange(3), key_draws), values[key_draws].mean(axis=1)))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dldc.evaluate.distances import frechet_distance, frechet_distance_resampled


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaN when there are none).

    Example:
        >>> percentile_interval(np.arange(101.0), 0.5)
        (25.0, 75.0)
    """
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_interval(mine: np.ndarray | None, theirs: np.ndarray | None, level: float) -> tuple[float, float]:
    """The interval of ``mine − theirs`` from replicates on the same draws (NaN when either is missing).

    Example:
        >>> paired_interval(np.array([2.0, 3.0, 4.0]), np.array([1.0, 1.0, 1.0]), 0.0)
        (2.0, 2.0)
        >>> paired_interval(None, np.array([1.0]), 0.95)
        (nan, nan)
    """
    if mine is None or theirs is None:
        return float("nan"), float("nan")
    return percentile_interval(mine - theirs, level)


def shared_draws(
    seed: int, group: int, real_idx: np.ndarray, n_keys: int, resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scene's resamples, shared by every arm: ``(resamples, n_real)`` real rows and ``(resamples, n_keys)`` keys.

    Args:
        seed: the evaluation seed.
        group: the scene's index (``all`` is 0): each scene draws independently.
        real_idx: the scene's real images (rows of the real features).
        n_keys: the scene's prompt keys.
        resamples: bootstrap replicates.
    """
    rng = np.random.default_rng([seed, group])
    real_draws = real_idx[rng.integers(0, len(real_idx), (resamples, len(real_idx)))]
    key_draws = rng.integers(0, n_keys, (resamples, n_keys))
    return real_draws, key_draws


def mean_frechet_distance(
    real: Sequence[np.ndarray], generated: Sequence[np.ndarray], real_idx: np.ndarray, gen_idx: np.ndarray
) -> float:
    """The Fréchet distance of one real and one generated set, averaged over the extractor's spaces (NaN below 2)."""
    if len(real_idx) < 2 or len(gen_idx) < 2:
        return float("nan")
    return float(np.mean([frechet_distance(r[real_idx], g[gen_idx]) for r, g in zip(real, generated)]))


def frechet_replicates(
    real: Sequence[np.ndarray],
    generated: Sequence[np.ndarray],
    real_draws: np.ndarray,
    pos: np.ndarray,
    key_draws: np.ndarray,
) -> np.ndarray:
    """:func:`mean_frechet_distance` of every resample: ``real_draws`` rows, generations ``pos[key_draws]``.

    Args:
        real, generated: features per space (rows = real images / generation rows).
        real_draws: ``(B, n_real)`` real rows.
        pos: the arm's generation row of each key (``-1``: the arm lacks the key).
        key_draws: ``(B, n_keys)`` resampled keys.
    """
    if len(real_draws) == 0 or real_draws.shape[1] < 2:
        return np.full(len(real_draws), np.nan)
    gen_draws = pos[key_draws]
    if (gen_draws >= 0).all():  # the arm has every key: equal-size resamples, batched
        if gen_draws.shape[1] < 2:
            return np.full(len(real_draws), np.nan)
        pairs = zip(real, generated)
        return np.mean([frechet_distance_resampled(r, g, real_draws, gen_draws) for r, g in pairs], axis=0)
    # An arm that lacks some keys: resamples of different sizes, one at a time.
    return np.array(
        [mean_frechet_distance(real, generated, rows, keys[keys >= 0]) for rows, keys in zip(real_draws, gen_draws)]
    )


def mean_replicates(values: np.ndarray, pos: np.ndarray, key_draws: np.ndarray) -> np.ndarray:
    """Mean of ``values[pos[k]]`` over each resample of keys (keys the arm lacks left out)."""
    picked = pos[key_draws]
    if (picked >= 0).all():
        return values[picked].mean(axis=1)
    return np.array([mean_or_nan(values[keys[keys >= 0]]) for keys in picked])


def mean_or_nan(values: np.ndarray) -> float:
    """The mean, NaN for no values (without numpy's warning)."""
    return float(np.mean(values)) if len(values) else float("nan")
