"""Fréchet and kernel distances against known answers, torchmetrics and torch-fidelity's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dldc.evaluate.bootstrap import percentile_interval
from dldc.evaluate.distances import (
    frechet_distance,
    frechet_distance_from_stats,
    kernel_distance,
    mmd2_unbiased,
)


def samples_with_moments(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` samples whose sample mean and (n-1) covariance are exactly ``mean`` and ``cov``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    # Whiten the sample, then colour it: the sample covariance becomes exactly `cov`.
    sample_cov = z.T @ z / (n - 1)
    z = z @ np.linalg.inv(np.linalg.cholesky(sample_cov)).T
    return mean + z @ np.linalg.cholesky(cov).T


def test_identical_sets_give_zero():
    features = np.random.default_rng(0).normal(size=(64, 16))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(features, features[::-1]) == pytest.approx(0.0, abs=1e-9)  # order does not matter
    wide = np.random.default_rng(1).normal(size=(10, 300))  # n < d: the nuclear-norm path
    assert frechet_distance(wide, wide) == pytest.approx(0.0, abs=1e-9)


def test_two_gaussians_give_the_closed_form():
    dim = 6
    mu1, mu2 = np.zeros(dim), np.arange(dim, dtype=float) / 2
    var1, var2 = np.linspace(0.5, 3.0, dim), np.linspace(2.0, 0.2, dim)
    # Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(v1) - sqrt(v2))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    x = samples_with_moments(mu1, np.diag(var1), 200, seed=0)
    y = samples_with_moments(mu2, np.diag(var2), 150, seed=1)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_full_covariances_match_scipy_sqrtm():
    from scipy import linalg

    rng = np.random.default_rng(3)
    dim = 5
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    # pytorch-fid's formula: scipy's matrix square root of the product.
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * linalg.sqrtm(cov1 @ cov2).real)
    assert frechet_distance_from_stats(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)
    x = samples_with_moments(mu1, cov1, 40, seed=4)
    y = samples_with_moments(mu2, cov2, 60, seed=5)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)


def test_small_and_large_sample_paths_agree():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(30, 20)), rng.normal(loc=0.3, size=(25, 20))
    small = frechet_distance(x, y)  # n <= d: SVD of A B^T
    big = frechet_distance_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert small == pytest.approx(big, rel=1e-8)
    x, y = rng.normal(size=(30, 4)), rng.normal(scale=2.0, size=(25, 4))  # n > d: d-space square root
    expected = frechet_distance_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-8)


class _Identity(torch.nn.Module):
    """A "feature extractor" that passes features through, so torchmetrics sees our features."""

    num_features = 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.slow  # importing torchmetrics takes seconds (it imports transformers)
def test_equals_torchmetrics_fid_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(11)
    for n_real, n_fake in ((40, 50), (8, 9)):  # above and below the feature dimension
        real = rng.normal(size=(n_real, 12))
        fake = rng.normal(loc=0.2, scale=1.3, size=(n_fake, 12))
        metric = FrechetInceptionDistance(feature=_Identity())
        metric.set_dtype(torch.float64)
        metric.update(torch.from_numpy(real), real=True)
        metric.update(torch.from_numpy(fake), real=False)
        expected = float(metric.compute())
        assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)


def test_kid_known_values():
    # 1-D, kernel (xy + 1)^3: k(0,0) = 1, k(1,1) = 8, k(0,1) = 1 -> MMD^2_u = 1 + 8 - 2.
    assert mmd2_unbiased(np.zeros((2, 1)), np.ones((2, 1))) == pytest.approx(7.0)
    # Identical multisets of 3 points: within-terms skip the diagonal, the cross term does not.
    points = np.array([[0.0], [1.0], [2.0]])
    k = (points @ points.T + 1) ** 3
    off = (k.sum() - np.trace(k)) / 6
    assert mmd2_unbiased(points, points) == pytest.approx(2 * off - 2 * k.mean())


def test_kid_equals_torchmetrics_poly_mmd():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(30, 8)), rng.normal(loc=0.5, size=(30, 8))
    expected = float(poly_mmd(torch.from_numpy(real), torch.from_numpy(fake)))
    assert mmd2_unbiased(real, fake) == pytest.approx(expected, rel=1e-9)
    # One subset of every image is the full-set estimator.
    result = kernel_distance(real, fake, subsets=1, subset_size=30)
    assert result.mean == pytest.approx(expected, rel=1e-9)
    assert result.std == 0.0 and result.subset_size == 30


def test_kid_subsets_are_seeded_and_capped():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(20, 4)), rng.normal(size=(50, 4))
    first = kernel_distance(real, fake, subsets=10, subset_size=1000, seed=3)
    assert first.subset_size == 20  # capped at the smaller set
    assert first == kernel_distance(real, fake, subsets=10, subset_size=1000, seed=3)
    same = kernel_distance(real, real, subsets=20, subset_size=10)
    shifted = kernel_distance(real, real + 2.0, subsets=20, subset_size=10)
    assert abs(same.mean) < shifted.mean and first.low <= first.mean <= first.high


@pytest.mark.parametrize(
    ("real", "fake", "message"),
    [
        (np.zeros(5), np.zeros((5, 2)), "2-D"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "needs 2"),
        (np.zeros((5, 3)), np.zeros((5, 2)), "dimensions differ"),
        (np.full((5, 2), np.nan), np.zeros((5, 2)), "NaN"),
    ],
)
def test_bad_inputs_are_explained(real, fake, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(real, fake)
    with pytest.raises(ValueError, match=message):
        kernel_distance(real, fake)


def test_percentile_interval():
    assert percentile_interval(np.array([1.0, np.nan, 3.0]), 0.5) == (1.5, 2.5)
    low, high = percentile_interval(np.array([]))
    assert np.isnan(low) and np.isnan(high)


def test_batched_resamples_equal_one_at_a_time():
    from dldc.evaluate.distances import frechet_distance_resampled

    rng = np.random.default_rng(8)
    for dim in (40, 3):  # n <= d (SVD of A B^T) and n > d (d-space square root)
        real, fake = rng.normal(size=(12, dim)), rng.normal(loc=0.4, size=(15, dim))
        real_draws, fake_draws = rng.integers(0, 12, (7, 12)), rng.integers(0, 15, (7, 15))
        batched = frechet_distance_resampled(real, fake, real_draws, fake_draws, max_bytes=1)  # 1 resample a batch
        single = [frechet_distance(real[r], fake[f]) for r, f in zip(real_draws, fake_draws)]
        assert np.allclose(batched, single, rtol=1e-7, atol=1e-9)
