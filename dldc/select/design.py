"""The screening design of ``select.mode: attribute`` and what its trials say about each scene.

Cleaning scene ``s`` at its high level (its proxy ratio, or ``select.attribute_level``) changes the
whole held-out metric by ``e_s``; the trials clean a different subset of scenes each, and one
regression of the whole-set objective on the design recovers every ``e_s`` at once. A
Plackett–Burman design does this in ``N`` trials, ``N`` the smallest multiple of 4 above the number
of scenes (12 for 10 scenes, 32 for 31): its ±1 columns are orthogonal, so each effect is the mean
at +1 minus the mean at −1 and the effects do not borrow from each other. A foldover appends the
mirrored rows (every sign flipped), after which no two-scene interaction biases a main effect.

Orders built here: Sylvester's (``N`` a power of 2) and Paley's first construction (``N − 1`` a
prime ≡ 3 mod 4: 12, 20, 24, 44, 48, 60, ...). Orders neither reaches (28, 36, 40, 52, 56) take the
next one that works: a few more trials, the same estimates.

Example:
    >>> import numpy as np
    >>> design = plackett_burman(10)
    >>> design.shape, bool((design.T @ design == 12 * np.eye(10)).all())
    ((12, 10), True)
    >>> effects = [0.5, -0.2, 0, 0, 0, 0, 0, 0, 0, 1.0]
    >>> y = 3.0 + design @ np.array(effects) / 2  # a linear response: effect = high − low
    >>> fit = fit_effects(design, y)
    >>> np.round(fit.effects[[0, 1, 9]], 6).tolist()
    [0.5, -0.2, 1.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z80 = 1.2815515655446004  # the standard normal's 90th percentile: an 80% two-sided interval


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def design_order(factors: int) -> int:
    """Trials of the smallest Plackett–Burman design for ``factors`` two-level factors built here.

    Example:
        >>> [design_order(k) for k in (1, 3, 10, 11, 19, 26, 31)]
        [4, 4, 12, 12, 20, 32, 32]
    """
    if factors < 1:
        raise ValueError(f"a screening design needs at least one factor, got {factors}")
    n = 4 * math.ceil((factors + 1) / 4)
    while not (n & (n - 1) == 0 or (_is_prime(n - 1) and (n - 1) % 4 == 3)):
        n += 4
    return n


def plackett_burman(factors: int) -> np.ndarray:
    """A ``N × factors`` matrix of ±1 with orthogonal, balanced columns (``N = design_order(factors)``).

    Raises:
        ValueError: ``factors < 1``.
    """
    n = design_order(factors)
    if n & (n - 1) == 0:  # Sylvester: H_2n = [[H, H], [H, -H]]
        hadamard = np.ones((1, 1), dtype=int)
        while len(hadamard) < n:
            hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
        columns = hadamard[:, 1:]  # the first column is all +1 (the mean)
    else:  # Paley I: cyclic shifts of the quadratic-residue row, plus a row of -1
        q = n - 1
        residues = {(j * j) % q for j in range(1, q)}
        row = np.array([1] + [1 if j in residues else -1 for j in range(1, q)], dtype=int)
        columns = np.vstack([np.roll(row, shift) for shift in range(q)] + [-np.ones(q, dtype=int)])
    return columns[:, :factors].astype(int)


def foldover(design: np.ndarray) -> np.ndarray:
    """The design followed by its mirror image (every sign flipped): twice the trials.

    Example:
        >>> foldover(np.array([[1, -1]])).tolist()
        [[1, -1], [-1, 1]]
    """
    return np.vstack([design, -design])


@dataclass
class Effects:
    """Per-factor effects (high − low) of a regression on a ±1 design, with standard errors.

    Attributes:
        effects: ``(factors,)`` the effect of moving each factor from −1 to +1.
        intercept: the fitted mean response.
        se_bootstrap: ``(factors,)`` SD of the effects over the replicates (0 without replicates).
        se_residual: ``(factors,)`` from the residual variance between trials (NaN: no residual
            degree of freedom).
        se: ``(factors,)`` ``sqrt(se_bootstrap² + se_residual²)`` (the residual term left out when NaN).
        residual_df: trials minus fitted parameters.
        df: ``(factors,)`` the SE's degrees of freedom (Welch–Satterthwaite: the bootstrap term counts
            as exact, the residual term has ``residual_df``); ``inf`` without a residual term.
    """

    effects: np.ndarray
    intercept: float
    se_bootstrap: np.ndarray
    se_residual: np.ndarray
    se: np.ndarray
    residual_df: int
    df: np.ndarray

    def z(self) -> np.ndarray:
        """Each effect's t statistic as the normal z with the same tail probability (0 where the SE is unknown)."""
        return equivalent_z(self.effects, self.se, self.df)

    def p_positive(self) -> np.ndarray:
        """``P(effect > 0)``: Student's t with :attr:`df` (0.5 where the SE is 0, NaN or unknown)."""
        return normal_cdf(self.z())


def fit_effects(design: np.ndarray, response: np.ndarray, replicates: np.ndarray | None = None) -> Effects:
    """Least squares of ``response`` on ``[1, design]``; effects are twice the slopes.

    Args:
        design: ``(trials, factors)`` of ±1.
        response: ``(trials,)`` the whole-set objective of each trial.
        replicates: ``(trials, draws)`` bootstrap replicates of the response that share their draws
            across trials (paired); their spread gives ``se_bootstrap``.

    Raises:
        ValueError: shapes disagree, a level other than ±1, or fewer trials than parameters.

    Example:
        >>> design = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
        >>> fit = fit_effects(design, np.array([4.0, 2.0, 3.0, 1.0]))
        >>> np.round(fit.effects, 9).tolist(), round(fit.intercept, 9), fit.residual_df
        ([1.0, 2.0], 2.5, 1)
    """
    design = np.asarray(design, dtype=float)
    response = np.asarray(response, dtype=float)
    trials, factors = design.shape
    if response.shape != (trials,):
        raise ValueError(f"response has shape {response.shape}, the design {trials} trials")
    if not np.isin(design, (-1.0, 1.0)).all():
        raise ValueError("design levels must be -1 or +1")
    if trials < factors + 1:
        raise ValueError(f"{trials} trials cannot fit {factors} effects and a mean; use plackett_burman")
    x = np.hstack([np.ones((trials, 1)), design])
    beta, *_ = np.linalg.lstsq(x, response, rcond=None)
    df = trials - (factors + 1)
    inverse = np.linalg.pinv(x.T @ x)
    if df > 0:
        sigma2 = float(np.sum((response - x @ beta) ** 2)) / df
        se_residual = 2.0 * np.sqrt(sigma2 * np.diag(inverse)[1:])
    else:
        se_residual = np.full(factors, np.nan)
    se_bootstrap = np.zeros(factors)
    if replicates is not None:
        replicates = np.asarray(replicates, dtype=float)
        if replicates.ndim != 2 or replicates.shape[0] != trials:
            raise ValueError(f"replicates must be (trials={trials}, draws), got {replicates.shape}")
        replicates = replicates[:, np.isfinite(replicates).all(axis=0)]  # a draw some trial could not score
        if replicates.shape[1] >= 2:
            slopes, *_ = np.linalg.lstsq(x, replicates, rcond=None)
            se_bootstrap = np.std(2.0 * slopes[1:], axis=1, ddof=1)
    residual = np.nan_to_num(se_residual)
    se = np.sqrt(se_bootstrap**2 + residual**2)
    with np.errstate(divide="ignore", invalid="ignore"):  # no residual term: the SE is the bootstrap's
        satterthwaite = np.where(residual > 0, df * (se**2 / np.where(residual > 0, residual, 1.0) ** 2) ** 2, np.inf)
    return Effects(2.0 * beta[1:], float(beta[0]), se_bootstrap, se_residual, se, df, satterthwaite)


def normal_cdf(z: np.ndarray | float) -> np.ndarray:
    """The standard normal CDF, elementwise.

    Example:
        >>> normal_cdf(np.array([0.0, np.inf])).tolist()
        [0.5, 1.0]
    """
    from scipy.stats import norm

    return np.asarray(norm.cdf(z), dtype=float)


def equivalent_z(effect: np.ndarray | float, se: np.ndarray | float, df: np.ndarray | float = np.inf) -> np.ndarray:
    """``effect / se`` as a normal z with the same tail probability under Student's t with ``df``.

    An SE that is 0, negative, NaN or infinite says nothing: z = 0 (P = 0.5, no weight), never a
    certainty.

    Example:
        >>> equivalent_z([2.0, 2.0, 1.0], [1.0, 1.0, 0.0], [np.inf, 1.0, np.inf]).round(3).tolist()
        [2.0, 1.047, 0.0]
    """
    from scipy.stats import norm, t

    effect, se = np.asarray(effect, dtype=float), np.asarray(se, dtype=float)
    df = np.broadcast_to(np.asarray(df, dtype=float), effect.shape)
    usable = np.isfinite(effect) & np.isfinite(se) & (se > 0)
    ratio = np.where(usable, effect / np.where(usable, se, 1.0), 0.0)
    finite_df = np.isfinite(df) & (df > 0)
    converted = norm.isf(t.sf(ratio, np.where(finite_df, df, 1.0)))  # same upper tail
    return np.where(finite_df, np.clip(converted, -40.0, 40.0), ratio)


@dataclass
class Combined:
    """A scene's ratio from the proxy and the attribution, weighted by their precisions.

    Attributes:
        ratio: ``r*``.
        sd: its standard deviation (``1/sqrt`` of the summed precisions).
        low, high: the 80% interval, clipped to ``[0, cap]``.
        attribution_ratio, attribution_sd: what the trials alone say (``level · P(effect > 0)`` and
            ``level / |z|``; ``inf``: nothing).
        attribution_weight: the trials' share of the total precision (0: the proxy alone).
    """

    ratio: float
    sd: float
    low: float
    high: float
    attribution_ratio: float
    attribution_sd: float
    attribution_weight: float


def combine_ratio(
    proxy_ratio: float, proxy_sd: float | None, z: float, level: float, sd_floor: float, cap: float
) -> Combined:
    """Combine the proxy's ratio with a screening effect into one ratio with an 80% interval.

    The trials measured cleaning the scene at ``level`` against not cleaning it, as ``z`` (the
    effect over its SE; :func:`equivalent_z` for a t statistic). Their evidence as a ratio is
    ``level · P(effect > 0)``: ``level`` when cleaning clearly helps, 0 when it clearly hurts. Its
    SD is ``level / |z|``: no weight when the trials cannot tell the sign (z = 0), more the further
    the effect lies from 0 in SEs. Each SD is at least ``sd_floor`` (the grid's own resolution);
    ``proxy_sd`` ``None`` (no bootstrap) counts as uninformative (SD = ``cap / 2``). The two
    estimates are averaged with weights ``1/SD²``: a scene the trials say little about keeps its
    proxy ratio.

    Example:
        >>> helps = combine_ratio(0.3, 0.05, z=10.0, level=0.3, sd_floor=0.03, cap=0.9)
        >>> hurts = combine_ratio(0.3, 0.05, z=-10.0, level=0.3, sd_floor=0.03, cap=0.9)
        >>> unclear = combine_ratio(0.3, 0.05, z=0.0, level=0.3, sd_floor=0.03, cap=0.9)
        >>> round(helps.ratio, 3), round(hurts.ratio, 3), round(unclear.ratio, 3), unclear.attribution_weight
        (0.3, 0.079, 0.3, 0.0)
    """
    attribution = level * float(normal_cdf(z))
    attribution_sd = max(level / abs(z), sd_floor) if z != 0 and math.isfinite(z) else math.inf
    proxy_sd = cap / 2 if proxy_sd is None else max(proxy_sd, sd_floor)
    w_proxy, w_attr = proxy_sd**-2, (0.0 if math.isinf(attribution_sd) else attribution_sd**-2)
    ratio = (w_proxy * proxy_ratio + w_attr * attribution) / (w_proxy + w_attr)
    sd = (w_proxy + w_attr) ** -0.5
    return Combined(
        ratio=float(min(max(ratio, 0.0), cap)),
        sd=float(sd),
        low=float(min(max(ratio - Z80 * sd, 0.0), cap)),
        high=float(min(max(ratio + Z80 * sd, 0.0), cap)),
        attribution_ratio=float(attribution),
        attribution_sd=float(attribution_sd),
        attribution_weight=float(w_attr / (w_proxy + w_attr)),
    )
