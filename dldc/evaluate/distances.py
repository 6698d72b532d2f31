"""Distances between two sets of image features: Fréchet distance (FID's formula) and KID's MMD.

Both take feature matrices (rows = images) from any extractor: the Inception network gives FID
and KID, an IEL image tower gives ``FD-<scorer>`` and ``KD-<scorer>`` (same formulas, another
feature space, never called FID).

Fréchet distance
    ``FD = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))`` with the sample means
    and unbiased sample covariances (``n - 1``), as torch-fidelity, torchmetrics and pytorch-fid
    compute it. The cross term is evaluated exactly in whichever space is smaller: with
    ``A = (X_1 - mu_1) / sqrt(n_1 - 1)`` and ``B`` likewise, ``S_1 = AᵀA``, ``S_2 = BᵀB`` and the
    non-zero eigenvalues of ``S_1 S_2`` are the squared singular values of ``A Bᵀ``, so
    ``tr((S_1 S_2)^(1/2)) = ||A Bᵀ||_*`` (nuclear norm, an ``n_1 × n_2`` SVD). Below ``d`` samples
    (e.g. 1,093 RSICD test images vs. Inception's 2,048 features) this is both faster and more
    stable than a ``d × d`` matrix square root of a rank-deficient product; above, the ``d``-space
    form ``tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2))`` with symmetric eigendecompositions is used.

Kernel distance (KID)
    The unbiased estimator of the squared maximum mean discrepancy with the polynomial kernel
    ``k(x, y) = (xᵀy / d + 1)^3`` (Bińkowski et al. 2018), averaged over ``subsets`` random
    subsets of ``subset_size`` images drawn without replacement from each set (torch-fidelity's
    and torchmetrics' protocol). Unbiased, so it can be slightly negative and does not grow with
    small ``N`` as FID does.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 8))
    >>> round(frechet_distance(x, x), 9)
    0.0
    >>> round(frechet_distance(x, x + 1.0), 6)  # a shift of 1 in each of 8 dimensions
    8.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _check_features(name: str, features: np.ndarray, min_rows: int = 2) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (images, features) array, got shape {array.shape}")
    if array.shape[0] < min_rows:
        raise ValueError(f"{name} has {array.shape[0]} image(s); a covariance or an unbiased MMD needs {min_rows}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values (a broken extractor or image?)")
    return array


def _check_pair(real: np.ndarray, fake: np.ndarray, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    real = _check_features("real features", real, min_rows)
    fake = _check_features("generated features", fake, min_rows)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"feature dimensions differ: real {real.shape[1]}, generated {fake.shape[1]} (use one extractor for both)"
        )
    return real, fake


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets.

    Args:
        real: ``(n_1, d)`` features of the reference images (``n_1 >= 2``).
        fake: ``(n_2, d)`` features of the generated images (``n_2 >= 2``).

    Returns:
        The distance (``>= 0``; rounding below zero, of order 1e-12, is clipped).

    Raises:
        ValueError: not 2-D, fewer than 2 rows, different widths, or non-finite values.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
        >>> frechet_distance(x, y) > 0
        True
    """
    real, fake = _check_pair(real, fake)
    mean_real, mean_fake = real.mean(axis=0), fake.mean(axis=0)
    a = (real - mean_real) / np.sqrt(real.shape[0] - 1)
    b = (fake - mean_fake) / np.sqrt(fake.shape[0] - 1)
    dim = real.shape[1]
    if min(real.shape[0], fake.shape[0]) <= dim:
        cross = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    else:
        cross = _trace_sqrt_product(a.T @ a, b.T @ b)
    value = float(np.sum((mean_real - mean_fake) ** 2) + np.sum(a * a) + np.sum(b * b) - 2.0 * cross)
    return max(value, 0.0)


def frechet_distance_resampled(
    real: np.ndarray,
    fake: np.ndarray,
    real_draws: np.ndarray,
    fake_draws: np.ndarray,
    max_bytes: int = 1 << 28,
) -> np.ndarray:
    """:func:`frechet_distance` of many resamples at once (the bootstrap's inner loop, batched).

    Args:
        real: ``(n_1, d)`` features.
        fake: ``(n_2, d)`` features.
        real_draws: ``(B, m_1)`` row indices into ``real``, one resample per row (``m_1 >= 2``).
        fake_draws: ``(B, m_2)`` row indices into ``fake`` (``m_2 >= 2``).
        max_bytes: memory budget of one batch of gathered resamples.

    Returns:
        ``(B,)`` distances, equal to ``frechet_distance(real[real_draws[b]], fake[fake_draws[b]])`` up to
        a relative error of about 1e-8 (enough for intervals; point values use :func:`frechet_distance`).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(20, 3))
        >>> draws = np.random.default_rng(1).integers(0, 20, (4, 20))
        >>> batched = frechet_distance_resampled(x, x + 1, draws, draws)
        >>> bool(np.allclose(batched, [frechet_distance(x[d], x[d] + 1) for d in draws]))
        True
    """
    real, fake = _check_pair(real, fake)
    real_draws, fake_draws = np.atleast_2d(real_draws), np.atleast_2d(fake_draws)
    if len(real_draws) != len(fake_draws) or min(real_draws.shape[1], fake_draws.shape[1]) < 2:
        raise ValueError(f"need equally many resamples of >= 2 rows, got {real_draws.shape} and {fake_draws.shape}")
    n1, n2, dim = real_draws.shape[1], fake_draws.shape[1], real.shape[1]
    per_resample = 8 * (n1 * dim + n2 * dim + (min(n1, n2) * max(n1, n2) if min(n1, n2) <= dim else 2 * dim * dim))
    step = max(1, max_bytes // per_resample)
    # torch for the stacked products: numpy's stacked matmul does not use BLAS and is ~30x slower.
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)
    out = []
    for start in range(0, len(real_draws), step):
        a = real_t[torch.from_numpy(real_draws[start : start + step])]
        b = fake_t[torch.from_numpy(fake_draws[start : start + step])]
        mean_a, mean_b = a.mean(dim=1, keepdim=True), b.mean(dim=1, keepdim=True)
        a = (a - mean_a) / np.sqrt(n1 - 1)
        b = (b - mean_b) / np.sqrt(n2 - 1)
        if min(n1, n2) <= dim:
            # Nuclear norm of C = A Bᵀ from the eigenvalues of the smaller Gram matrix (C Cᵀ or Cᵀ C):
            # several times cheaper than an SVD, and the ~1e-8 relative error is far below any interval.
            c = torch.bmm(a, b.transpose(1, 2))
            gram = torch.bmm(c, c.transpose(1, 2)) if n1 <= n2 else torch.bmm(c.transpose(1, 2), c)
            cross = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().sum(dim=-1).numpy()
        else:
            a_cov, b_cov = torch.bmm(a.transpose(1, 2), a).numpy(), torch.bmm(b.transpose(1, 2), b).numpy()
            cross = np.array([_trace_sqrt_product(x, y) for x, y in zip(a_cov, b_cov)])
        value = ((mean_a - mean_b) ** 2).sum(dim=(1, 2)) + (a * a).sum(dim=(1, 2)) + (b * b).sum(dim=(1, 2))
        out.append(np.maximum(value.numpy() - 2.0 * cross, 0.0))
    return np.concatenate(out)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (the closed form).

    Example:
        >>> import numpy as np
        >>> # isotropic: ||mu1 - mu2||^2 + d (s1 - s2)^2 = 4 + 3 * (2 - 1)^2
        >>> frechet_distance_from_stats(np.zeros(3), 4 * np.eye(3), np.array([2.0, 0, 0]), np.eye(3))
        7.0
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    cross = _trace_sqrt_product(sigma1, sigma2)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
    return max(round(value, 12), 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^(1/2))`` for symmetric PSD matrices, via ``S1^(1/2) S2 S1^(1/2)`` (symmetric PSD)."""
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef: float = 1.0) -> np.ndarray:
    """KID's kernel ``(xᵀy / d + coef)^degree`` between the rows of ``x`` and ``y``."""
    return (x @ y.T / x.shape[1] + coef) ** degree


def mmd2_unbiased(real: np.ndarray, fake: np.ndarray, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased squared MMD with :func:`polynomial_kernel` (the diagonal terms are left out).

    Example:
        >>> import numpy as np
        >>> # 1-D: k(0,0)=1, k(1,1)=8, k(0,1)=1 -> 1 + 8 - 2*1
        >>> mmd2_unbiased(np.zeros((2, 1)), np.ones((2, 1)))
        7.0
    """
    real, fake = _check_pair(real, fake)
    n, m = real.shape[0], fake.shape[0]
    k_rr = polynomial_kernel(real, real, degree, coef)
    k_ff = polynomial_kernel(fake, fake, degree, coef)
    k_rf = polynomial_kernel(real, fake, degree, coef)
    within_real = (k_rr.sum() - np.trace(k_rr)) / (n * (n - 1))
    within_fake = (k_ff.sum() - np.trace(k_ff)) / (m * (m - 1))
    return float(within_real + within_fake - 2.0 * k_rf.mean())


@dataclass(frozen=True)
class KernelDistance:
    """KID over random subsets.

    Attributes:
        mean: the mean of the subset estimates (the reported KID).
        std: their standard deviation (torch-fidelity's ``kernel_inception_distance_std``).
        low, high: the 2.5th and 97.5th percentiles of the subset estimates (their spread, not a
            bootstrap interval of the mean).
        subsets: number of subsets.
        subset_size: images per set in each subset (``min(subset_size, n_real, n_fake)``).
    """

    mean: float
    std: float
    low: float
    high: float
    subsets: int
    subset_size: int


def kernel_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    coef: float = 1.0,
) -> KernelDistance:
    """KID: unbiased polynomial-kernel MMD² averaged over random subsets.

    Args:
        real: ``(n_1, d)`` reference features.
        fake: ``(n_2, d)`` generated features.
        subsets: number of random subsets (torch-fidelity's default is 100).
        subset_size: images drawn from each set per subset; capped at the smaller set (so small
            sets still get a number; the actual size is recorded).
        seed: seeds the subset draws.
        degree, coef: the polynomial kernel's degree and offset.

    Returns:
        A :class:`KernelDistance`.

    Raises:
        ValueError: bad shapes (see :func:`frechet_distance`) or ``subsets < 1``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(30, 4))
        >>> result = kernel_distance(x, x + 3.0, subsets=5, subset_size=20)
        >>> result.mean > 0, result.subset_size
        (True, 20)
    """
    real, fake = _check_pair(real, fake)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"need subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    draws = [
        (rng.choice(real.shape[0], size, replace=False), rng.choice(fake.shape[0], size, replace=False))
        for _ in range(subsets)
    ]
    values = _mmd2_subsets(real, fake, draws, degree, coef)
    low, high = np.percentile(values, [2.5, 97.5])
    return KernelDistance(float(values.mean()), float(values.std()), float(low), float(high), subsets, size)


def _mmd2_subsets(
    real: np.ndarray,
    fake: np.ndarray,
    draws: list[tuple[np.ndarray, np.ndarray]],
    degree: int,
    coef: float,
    max_bytes: int = 1 << 27,
) -> np.ndarray:
    """:func:`mmd2_unbiased` of equal-size subsets, batched (three ``(S, m, m)`` kernels at a time)."""
    size, dim = len(draws[0][0]), real.shape[1]
    step = max(1, max_bytes // (3 * 8 * size * size))
    real_t, fake_t = torch.from_numpy(real), torch.from_numpy(fake)
    values = []
    for start in range(0, len(draws), step):
        x = real_t[torch.from_numpy(np.stack([r for r, _ in draws[start : start + step]]))]
        y = fake_t[torch.from_numpy(np.stack([f for _, f in draws[start : start + step]]))]
        k_xx = (torch.bmm(x, x.transpose(1, 2)) / dim + coef) ** degree
        k_yy = (torch.bmm(y, y.transpose(1, 2)) / dim + coef) ** degree
        k_xy = (torch.bmm(x, y.transpose(1, 2)) / dim + coef) ** degree
        off_diagonal = size * (size - 1)
        within_x = (k_xx.sum(dim=(1, 2)) - k_xx.diagonal(dim1=1, dim2=2).sum(dim=1)) / off_diagonal
        within_y = (k_yy.sum(dim=(1, 2)) - k_yy.diagonal(dim1=1, dim2=2).sum(dim=1)) / off_diagonal
        values.append((within_x + within_y - 2.0 * k_xy.mean(dim=(1, 2))).numpy())
    return np.concatenate(values)
