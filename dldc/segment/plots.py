"""Figures of ``dldc segment`` for MLflow: confusion matrices (needs matplotlib; skipped without it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], title: str, out: str | Path) -> Path | None:
    """Write a row-normalised confusion matrix (rows: truth) as PNG; ``None`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cm = np.asarray(matrix, np.float64)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 1.5 + 0.45 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(share, vmin=0, vmax=1, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
