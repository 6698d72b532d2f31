"""Plots of the selection: per-scene score histograms with the cut, and objective / metric curves vs. ratio.

matplotlib is optional: without it :func:`draw_plots` returns a note and draws nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HISTOGRAMS_FILE = "histograms.png"
CURVES_FILE = "curves.png"
METRICS_FILE = "metric_curves.png"


def draw_plots(
    ranked: pd.DataFrame,
    keep: pd.Series,
    ratios: Mapping[str, float],
    curves: Mapping[str, Mapping[float, float]],
    overall: Mapping[float, float],
    metric_curves: Mapping[str, Mapping[str, Mapping[float, float]]],
    out: str | Path,
) -> tuple[list[str], str | None]:
    """Write the figures into ``out``; returns ``(file names, note)`` (the note says why nothing was drawn)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed: no plots"
    from dldc.io import atomic_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    cleanable = ranked[ranked["cleanable"]]
    scenes = sorted(cleanable["scene"].unique())

    def grid_axes(count: int) -> tuple[Any, list[Any]]:
        cols = min(4, max(1, count))
        rows = math.ceil(count / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        flat = list(axes.ravel())
        for ax in flat[count:]:
            ax.axis("off")
        return fig, flat

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        written.append(name)

    # The rank-fused score is uniform within a scene by construction; the raw cosines show the noise.
    from dldc.select.objective import pair_quality, scorer_columns

    if scorer_columns(cleanable):
        values_all, xlabel = pair_quality(ranked), "raw IEL cosine (pooled z-score)"
    else:
        values_all, xlabel = cleanable["fused"], "fused score"
    fig, axes = grid_axes(len(scenes))
    for ax, scene in zip(axes, scenes):
        rows = cleanable[cleanable["scene"] == scene]
        kept_rows = keep[rows.index]
        values = values_all[rows.index].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        bins = np.linspace(finite.min(), finite.max(), 21) if finite.size and np.ptp(finite) > 0 else 20
        ax.hist(
            [values[kept_rows.to_numpy() & np.isfinite(values)], values[~kept_rows.to_numpy() & np.isfinite(values)]],
            bins=bins, stacked=True, color=["tab:blue", "tab:red"], label=["kept", "dropped"],
        )
        dropped = int((~kept_rows).sum())
        ax.set_title(f"{scene}: r*={ratios.get(scene, 0):g} ({dropped}/{len(rows)} dropped)", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.tick_params(labelsize=6)
    if scenes:
        axes[0].legend(fontsize=6)
    save(fig, HISTOGRAMS_FILE)

    fig, ax = plt.subplots(figsize=(6, 4))
    for scene in sorted(curves):
        xs = sorted(curves[scene])
        ax.plot(xs, [curves[scene][x] for x in xs], marker="o", label=scene, linewidth=1)
    if overall:
        xs = sorted(overall)
        ax.plot(xs, [overall[x] for x in xs], marker="s", color="black", linewidth=2, label="global")
    ax.set_xlabel("cleaning ratio r")
    ax.set_ylabel("objective J(r)")
    ax.legend(fontsize=6, ncol=2)
    save(fig, CURVES_FILE)

    if metric_curves:
        metrics = sorted({m for per_metric in metric_curves.values() for m in per_metric})
        fig, axes = grid_axes(len(metrics))
        for ax, metric in zip(axes, metrics):
            for scene in sorted(metric_curves):
                curve = metric_curves[scene].get(metric)
                if not curve:
                    continue
                xs = sorted(curve)
                style = {"color": "black", "linewidth": 2} if scene == "all" else {"linewidth": 1}
                ax.plot(xs, [curve[x] for x in xs], marker="o", label=scene, **style)
            ax.set_title(metric, fontsize=8)
            ax.set_xlabel("cleaning ratio r", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[0].legend(fontsize=5, ncol=2)
        save(fig, METRICS_FILE)
    return written, None
