"""SynthRS drawing primitives: value noise, the canvas, shapes, lines, curves and grid helpers.

Coordinates are pixel centres in [0, 1], ``x`` to the right and ``y`` down, whatever the image
size; grid cells are those of :data:`dldc.data.vocabulary.CELLS`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dldc.data.synthrs.landcover import BASE_RGB, ROAD
from dldc.data.vocabulary import CELLS, cell_of, reading_order


def value_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth value noise in [-1, 1] on a ``cells`` x ``cells`` lattice (separable lerp)."""
    lattice = rng.random((cells + 1, cells + 1))
    position = (np.arange(size) + 0.5) * (cells / size)
    index = np.minimum(position.astype(np.int64), cells - 1)
    frac = position - index
    frac = frac * frac * (3.0 - 2.0 * frac)
    rows = lattice[index] * (1.0 - frac)[:, None] + lattice[index + 1] * frac[:, None]
    field = rows[:, index] * (1.0 - frac)[None, :] + rows[:, index + 1] * frac[None, :]
    return field * 2.0 - 1.0


def fbm(size: int, cells: int, rng: np.random.Generator, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise octaves, roughly in [-1, 1]."""
    total = np.zeros((size, size))
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * value_noise(size, cells * 2**octave, rng)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


class Canvas:
    """Drawing state of one scene: pixel coordinates in [0, 1], mask and colour modifiers.

    ``paint`` sets the land cover of a region and resets its tint and shade, so later layers
    never inherit the texture of what they cover. Coordinates are pixel centres, ``x`` to the
    right and ``y`` down, both in [0, 1] whatever the image size.
    """

    def __init__(self, size: int, rng: np.random.Generator, background: int) -> None:
        self.size = size
        self.rng = rng
        centres = (np.arange(size) + 0.5) / size
        self.y, self.x = np.meshgrid(centres, centres, indexing="ij")
        self.mask = np.full((size, size), background, np.uint8)
        self.tint = np.ones((size, size, 3), np.float32)
        self.shade = np.ones((size, size), np.float32)
        self.colours = BASE_RGB.copy()

    def at_least(self, width: float, pixels: float = 1.2) -> float:
        """``width``, but never thinner than ``pixels`` pixels (keeps thin things visible)."""
        return max(width, pixels / self.size)

    def paint(self, region: np.ndarray, land_cover: int, tint: Any = None) -> None:
        self.mask[region] = land_cover
        self.tint[region] = 1.0 if tint is None else tint
        self.shade[region] = 1.0

    def noise(self, cells: int, octaves: int = 1) -> np.ndarray:
        if octaves == 1:
            return value_noise(self.size, cells, self.rng)
        return fbm(self.size, cells, self.rng, octaves)


def rotated(canvas: Canvas, angle: float, cx: float = 0.5, cy: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across direction ``angle`` (radians), centred on (cx, cy)."""
    dx, dy = canvas.x - cx, canvas.y - cy
    cos, sin = math.cos(angle), math.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def rectangle(canvas: Canvas, cx: float, cy: float, length: float, width: float,
               angle: float = 0.0) -> np.ndarray:
    along, across = rotated(canvas, angle, cx, cy)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def disk(canvas: Canvas, cx: float, cy: float, radius: float) -> np.ndarray:
    return (canvas.x - cx) ** 2 + (canvas.y - cy) ** 2 <= radius**2


def blob_distance(canvas: Canvas, rng: np.random.Generator, cx: float, cy: float, radius: float,
                   roughness: float = 0.25) -> np.ndarray:
    """Radial distance normalised by a wobbly radius: < 1 inside an irregular blob."""
    dx, dy = canvas.x - cx, canvas.y - cy
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(theta)
    for harmonic in (2, 3, 4, 5):
        wobble += rng.uniform(0, roughness / harmonic * 1.5) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    return np.sqrt(dx**2 + dy**2) / (radius * np.maximum(wobble, 0.3))


def cell_centre(cell: str) -> tuple[float, float]:
    row, column = divmod(CELLS.index(cell), 3)
    return (column + 0.5) / 3, (row + 0.5) / 3


def line_ends(px: float, py: float, angle: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where the infinite line through (px, py) with direction ``angle`` crosses the image border."""
    dx, dy = math.cos(angle), math.sin(angle)
    t_low, t_high = -math.inf, math.inf
    for start, step in ((px, dx), (py, dy)):
        if abs(step) < 1e-9:
            continue
        t0, t1 = (0.0 - start) / step, (1.0 - start) / step
        t_low, t_high = max(t_low, min(t0, t1)), min(t_high, max(t0, t1))
    return (px + t_low * dx, py + t_low * dy), (px + t_high * dx, py + t_high * dy)


def segment_ends(px: float, py: float, angle: float, length: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The visible part of a segment of ``length`` centred on (px, py), clipped to the image."""
    (x0, y0), (x1, y1) = line_ends(px, py, angle)
    dx, dy = math.cos(angle), math.sin(angle)
    t_enter = (x0 - px) * dx + (y0 - py) * dy
    t_exit = (x1 - px) * dx + (y1 - py) * dy
    t_low, t_high = max(t_enter, -length / 2), min(t_exit, length / 2)
    return (px + t_low * dx, py + t_low * dy), (px + t_high * dx, py + t_high * dy)


def distance_to_line(x: float, y: float, px: float, py: float, angle: float) -> float:
    return abs(-(x - px) * math.sin(angle) + (y - py) * math.cos(angle))


def random_straight_line(rng: np.random.Generator) -> tuple[float, float, float]:
    """A line through the middle part of the image: (x, y, angle)."""
    return rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0, np.pi)


def paint_straight_road(canvas: Canvas, line: tuple[float, float, float], width: float,
                         land_cover: int = ROAD, tint: Any = None) -> dict[str, str]:
    """Paint a road band along ``line``; returns its end cells ``{"from", "to"}``."""
    px, py, angle = line
    _, across = rotated(canvas, angle, px, py)
    canvas.paint(np.abs(across) <= canvas.at_least(width) / 2, land_cover, tint)
    (x0, y0), (x1, y1) = line_ends(px, py, angle)
    start, end = reading_order(cell_of(x0, y0), cell_of(x1, y1))
    return {"from": start, "to": end}


SIDES = ("top", "bottom", "left", "right")


def border_point(rng: np.random.Generator, side: str) -> tuple[float, float]:
    """A point on one image side, clear of grid-cell boundaries so its cell is unambiguous."""
    t = rng.uniform(0.12, 0.88)
    while min(abs(t - 1 / 3), abs(t - 2 / 3)) < 0.06:
        t = rng.uniform(0.12, 0.88)
    return {"top": (t, 0.0), "bottom": (t, 1.0), "left": (0.0, t), "right": (1.0, t)}[side]


def curve_points(rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float],
                  meander: float, n_points: int = 48) -> np.ndarray:
    """A smooth wandering curve from ``start`` to ``end``: quadratic Bezier plus a sine meander."""
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    p0, p2 = np.array(start), np.array(end)
    p1 = rng.uniform(0.25, 0.75, 2)
    points = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2
    tangent = np.gradient(points, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    offset = meander * np.sin(2 * np.pi * rng.uniform(0.8, 1.8) * t + rng.uniform(0, 2 * np.pi)) * np.sin(np.pi * t)
    return points + offset * normal


def curve_distance(canvas: Canvas, points: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Distance to a band along a polyline of sample points (< 0 inside the band)."""
    field = np.full(canvas.mask.shape, np.inf)
    for (px, py), half_width in zip(points, half_widths):
        np.minimum(field, np.sqrt((canvas.x - px) ** 2 + (canvas.y - py) ** 2) - half_width, out=field)
    return field


def random_crossing(rng: np.random.Generator) -> tuple[tuple[float, float], tuple[float, float], str, str]:
    """Entry and exit points on two different image sides, in different grid cells."""
    while True:
        entry_side, exit_side = rng.choice(SIDES, size=2, replace=False)
        entry, exit_ = border_point(rng, str(entry_side)), border_point(rng, str(exit_side))
        entry_cell, exit_cell = cell_of(*entry), cell_of(*exit_)
        if entry_cell != exit_cell:
            return entry, exit_, entry_cell, exit_cell


def grid_angle(rng: np.random.Generator, axis_aligned: float = 0.6) -> float:
    """Orientation of a man-made grid: usually close to the image axes, sometimes any."""
    if rng.random() < axis_aligned:
        return float(rng.integers(2) * np.pi / 2 + rng.normal(0, 0.04))
    return float(rng.uniform(0, np.pi))


def tree_spots(canvas: Canvas, threshold: float, cells: int = 20) -> np.ndarray:
    """Blobs the size of tree crowns; a lower threshold gives more trees."""
    return canvas.noise(cells) > threshold


def random_cuts(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Random cut positions covering [-0.75, 0.75] with gaps in [low, high]."""
    cuts = [-0.75 - rng.uniform(0, high)]
    while cuts[-1] < 0.75:
        cuts.append(cuts[-1] + rng.uniform(low, high))
    return np.array(cuts)


def distance_to_cuts(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return np.min(np.abs(values[..., None] - cuts), axis=-1)


def visible_count(ids: np.ndarray, min_pixels: int = 1) -> int:
    if ids.size == 0:
        return 0
    _, counts = np.unique(ids, return_counts=True)
    return int(np.sum(counts >= min_pixels))
