"""The report's pictures: thumbnails of dataset and generated images, and small inline SVG plots.

Thumbnails are read through :func:`dldc.data.images.resolve_inside` (no path may leave its root:
a manifest or generations table is user data) and :func:`dldc.data.images.load_rgb` (the same RGB
conversion and decompression-bomb guard as every stage), shrunk to ``size`` px on the longest side
and written once per source file. Plots are SVG text built here, so the page needs no plotting
library and no network.

Example:
    >>> svg = histogram_svg([0.1, 0.2, 0.8], [0.05], bins=4, cut=0.075)
    >>> svg.startswith("<svg") and "cut" in svg
    True
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dldc.data.images import PathEscapeError, load_rgb, resolve_inside

log = logging.getLogger(__name__)

THUMBS_DIR = "thumbs"
KEPT_COLOUR = "#8a9bb0"
DROPPED_COLOUR = "#d0584a"
CUT_COLOUR = "#222"


class Thumbnails:
    """Writes each source image's thumbnail once into ``out/thumbs/`` and returns its page-relative path.

    Args:
        out: the report folder being written.
        size: longest side in pixels.
        fmt: ``jpeg`` or ``png``.
        quality: JPEG quality.
        max_pixels: decompression-bomb guard passed to :func:`load_rgb`.
    """

    def __init__(self, out: Path, size: int, fmt: str = "jpeg", quality: int = 85, max_pixels: int = 64_000_000):
        self.folder = out / THUMBS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size, self.fmt, self.quality, self.max_pixels = size, fmt, quality, max_pixels
        self._done: dict[tuple[str, str], str | None] = {}
        self.failures: dict[str, str] = {}
        self.bytes = 0

    def __call__(self, root: Path, relative: str) -> str | None:
        """The thumbnail of ``root/relative`` (``thumbs/<id>.jpg``), or ``None`` when it cannot be shown."""
        key = (str(root), str(relative))
        if key in self._done:
            return self._done[key]
        name = hashlib.sha256("\0".join(key).encode()).hexdigest()[:20] + (".jpg" if self.fmt == "jpeg" else ".png")
        result: str | None = f"{THUMBS_DIR}/{name}"
        try:
            image = load_rgb(resolve_inside(root, relative), self.max_pixels)
            image.thumbnail((self.size, self.size))
            target = self.folder / name
            if self.fmt == "jpeg":
                image.save(target, format="JPEG", quality=self.quality, optimize=True)
            else:
                image.save(target, format="PNG", optimize=True)
            self.bytes += target.stat().st_size
        except (OSError, ValueError, PathEscapeError) as err:
            # A missing or broken image is shown as a placeholder with the reason, never a broken <img>.
            self.failures[str(relative)] = str(err)
            log.debug("no thumbnail for %s: %s", relative, err)
            result = None
        self._done[key] = result
        return result

    @property
    def count(self) -> int:
        return sum(1 for value in self._done.values() if value is not None)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def histogram_svg(
    kept: Sequence[float],
    dropped: Sequence[float],
    bins: int = 30,
    cut: float | None = None,
    label: str = "score",
    width: int = 360,
    height: int = 120,
) -> str:
    """A stacked histogram (dropped in red under kept in grey) with the cut as a dashed line.

    NaN values (unscorable pairs) are left out of the bars; the title says how many.
    """
    kept_v = np.asarray([v for v in kept if v == v], dtype=float)
    dropped_v = np.asarray([v for v in dropped if v == v], dtype=float)
    values = np.concatenate([kept_v, dropped_v])
    missing = len(kept) + len(dropped) - len(values)
    if values.size == 0:
        return '<p class="note">no scores to plot</p>'
    low, high = float(values.min()), float(values.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    count_kept, _ = np.histogram(kept_v, edges)
    count_dropped, _ = np.histogram(dropped_v, edges)
    top = max(int((count_kept + count_dropped).max()), 1)
    pad_l, pad_b, pad_t = 4, 18, 6
    plot_w, plot_h = width - 2 * pad_l, height - pad_b - pad_t
    bar_w = plot_w / bins

    def x_of(value: float) -> float:
        return pad_l + (value - low) / (high - low) * plot_w

    parts = [
        f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)} histogram">',
        f"<title>{html.escape(label)}: {len(kept_v)} kept, {len(dropped_v)} dropped"
        + (f", {missing} without a score" if missing else "") + "</title>",
    ]  # fmt: skip
    for i in range(bins):
        x = pad_l + i * bar_w
        h_drop = count_dropped[i] / top * plot_h
        h_keep = count_kept[i] / top * plot_h
        base = pad_t + plot_h
        if h_drop:
            parts.append(f'<rect x="{x:.1f}" y="{base - h_drop:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{h_drop:.1f}" fill="{DROPPED_COLOUR}"/>')
        if h_keep:
            parts.append(f'<rect x="{x:.1f}" y="{base - h_drop - h_keep:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{h_keep:.1f}" fill="{KEPT_COLOUR}"/>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width - pad_l}" y2="{pad_t + plot_h}" '
                 'stroke="#999"/>')
    parts.append(f'<text x="{pad_l}" y="{height - 4}" font-size="10">{_fmt(low)}</text>')
    parts.append(f'<text x="{width - pad_l}" y="{height - 4}" font-size="10" text-anchor="end">{_fmt(high)}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 4}" font-size="10" text-anchor="middle">'
                 f"{html.escape(label)}</text>")
    if cut is not None and math.isfinite(cut):
        x = x_of(min(max(cut, low), high))
        parts.append(f'<line class="cut" x1="{x:.1f}" y1="{pad_t - 4}" x2="{x:.1f}" y2="{pad_t + plot_h}" '
                     f'stroke="{CUT_COLOUR}" stroke-dasharray="4 3" stroke-width="1.5"/>')
        parts.append(f'<text x="{x + 3:.1f}" y="{pad_t + 6}" font-size="10">cut</text>')
    parts.append("</svg>")
    return "".join(parts)


def curve_svg(curve: Mapping[str, float | None], chosen: float | None, width: int = 220, height: int = 90) -> str:
    """``J(r)`` over the grid as a line with its points; the chosen ratio ringed. Missing points are skipped."""
    points = sorted((float(r), float(v)) for r, v in curve.items() if v is not None and math.isfinite(float(v)))
    if len(points) < 2:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 <= y0:
        y0, y1 = y0 - 1, y1 + 1
    pad, pad_b = 8, 16

    def at(x: float, y: float) -> tuple[float, float]:
        return (pad + (x - x0) / (x1 - x0) * (width - 2 * pad),
                pad + (1 - (y - y0) / (y1 - y0)) * (height - pad - pad_b))  # fmt: skip

    coords = [at(x, y) for x, y in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    parts = [
        f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="objective J(r)"><title>J(r) over the grid</title>',
        f'<polyline points="{path}" fill="none" stroke="#3b6ea5" stroke-width="1.5"/>',
    ]
    for (x, y), (ratio, _) in zip(coords, points):
        ring = chosen is not None and abs(ratio - chosen) < 1e-9
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{4 if ring else 2}" '
                     f'fill="{"#fff" if ring else "#3b6ea5"}" stroke="#3b6ea5" stroke-width="{2 if ring else 1}"/>')
    parts.append(f'<text x="{pad}" y="{height - 3}" font-size="10">r={x0:g}</text>')
    parts.append(f'<text x="{width - pad}" y="{height - 3}" font-size="10" text-anchor="end">r={x1:g}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 3}" font-size="10" text-anchor="middle">J(r)</text></svg>')
    return "".join(parts)
