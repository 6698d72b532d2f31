"""The metrics an evaluation reports, each carrying its direction (torchmetrics' ``higher_is_better``).

A metric's direction is set where the metric is defined (a distance is lower-is-better, a prompt
score higher-is-better) and travels with every row it produces: ``metrics.parquet`` and
``results.json`` have a ``higher_is_better`` column, and readers of an evaluation
(``dldc promote``, ``dldc select``) take it from there with :func:`metric_directions` instead of
guessing it from the metric's name.

Example:
    >>> fd = frechet_metric("clip")
    >>> fd.name, fd.higher_is_better, fd.intra().name, fd.intra().higher_is_better
    ('FD-clip', False, 'FD-clip-intra', False)
    >>> [(m.name, m.higher_is_better) for m, _ in prompt_metrics("clip")]
    [('CLIPScore-clip', True), ('cos-clip', True)]
    >>> metric_directions([{"metric": "FID", "higher_is_better": False}, {"metric": "FID", "higher_is_better": False}])
    {'FID': False}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ALL_SCENES = "all"  # the scene of the whole split
INCEPTION = "inception"
INTRA_SUFFIX = "-intra"  # mean of the per-scene values of a distance (intra-FID, Miyato & Koyama 2018)


@dataclass(frozen=True)
class Metric:
    """A reported metric: its name and whether a larger value is better."""

    name: str
    higher_is_better: bool

    def intra(self) -> Metric:
        """The mean over scenes of this metric (``<name>-intra``), in the same direction."""
        return Metric(self.name + INTRA_SUFFIX, self.higher_is_better)


def frechet_metric(label: str) -> Metric:
    """Fréchet distance in a feature space: ``FID`` for Inception, else ``FD-<label>`` (lower is better)."""
    return Metric("FID" if label == INCEPTION else f"FD-{label}", higher_is_better=False)


def kernel_metric(label: str) -> Metric:
    """Kernel distance in a feature space: ``KID`` for Inception, else ``KD-<label>`` (lower is better)."""
    return Metric("KID" if label == INCEPTION else f"KD-{label}", higher_is_better=False)


def clip_score(cosines: np.ndarray) -> np.ndarray:
    """CLIPScore from raw cosines: ``100·max(cos, 0)``."""
    return 100.0 * np.maximum(cosines, 0.0)


def prompt_metrics(label: str) -> list[tuple[Metric, Callable[[np.ndarray], np.ndarray]]]:
    """The prompt-agreement metrics of one scorer and how each is made from raw cosines (higher is better)."""
    return [
        (Metric(f"CLIPScore-{label}", higher_is_better=True), clip_score),
        (Metric(f"cos-{label}", higher_is_better=True), lambda cosines: cosines),
    ]


def metric_directions(rows: Iterable[Mapping[str, Any]]) -> dict[str, bool]:
    """``{metric: higher_is_better}`` from an evaluation's metric rows (``results.json``'s ``metrics``).

    Raises:
        ValueError: a metric is recorded with both directions.
    """
    directions: dict[str, bool] = {}
    for row in rows:
        higher = bool(row["higher_is_better"])
        if directions.setdefault(row["metric"], higher) != higher:
            raise ValueError(f"metric {row['metric']!r} is recorded as both higher- and lower-is-better")
    return directions
