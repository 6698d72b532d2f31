"""SynthRS: the embedded synthetic remote-sensing image-caption dataset.

SynthRS draws small top-down "aerial" scenes from a seed with numpy and Pillow only, so the
whole pipeline can run offline in seconds. Every image is built from land-cover layers drawn
into a segmentation mask and then coloured with textures (value noise, crop rows, dune
ridges, roof shading, shadows...). Its captions are written from the generator's own ground
truth, so they describe what is really in the picture and where.

Scenes (``SCENES``)
    farmland, residential, forest, river, lake, beach, airport, parking, industrial, desert.

Land cover (``LAND_COVER``: mask value, name, palette colour of the mask PNGs)
    0 bare_soil ``#966e50``   1 water    ``#1e5aaa``   2 tree ``#1e6e28``   3 grass ``#82be50``
    4 crop      ``#dcd25a``   5 building ``#c83c3c``   6 road ``#464646``   7 sand  ``#f0dca0``
    8 pavement  ``#aaaaaf``   9 vehicle  ``#e628d2``

Positions
    Captions place things on a 3x3 grid (``CELLS``): top left, top, top right, left, center,
    right, bottom left, bottom, bottom right.

Caption noise (``NOISE_KINDS``)
    Each caption is independently replaced with probability ``noise_rate`` by one of:

    * ``other_scene``  — a clean caption generated for a different scene class (any of
      ``SCENES``, from a freshly drawn layout of that scene);
    * ``generic``      — one of ``GENERIC_CAPTIONS``, such as "an aerial image";
    * ``truncated``    — the clean caption cut after its first 1-3 words;
    * ``wrong_layout`` — a caption of the right scene whose grid cells all moved to cells
      the caption did not name (a clean caption naming no cell is swapped for one that does).

    A noisy caption never equals its clean caption. The kind is drawn uniformly from
    ``noise_kinds`` (default: all four). ``other_scene`` is the only kind whose damage lands on
    *another* scene's prompts (a caption that reads like a beach on a desert image teaches
    "beach" → desert); the others stay within the image's scene.

Output of :func:`write_synthrs` (the Karpathy layout RSICD is distributed in)::

    out/
      dataset_synthrs.json              Karpathy JSON: images, splits, sentences
      images/<scene>_<NNNN>.png         RGB images
      masks/<scene>_<NNNN>.png          mode "P" masks; palette = LAND_COVER colours
      txtclasses_synthrs/<scene>.txt    image file names per scene, one a line
      palette.json                      LAND_COVER as [{"index", "name", "color"}]
      truth/noise_labels.jsonl          per caption: filename, sentid, noisy, kind, clean,
                                        source_scene (cleaners must never read truth/)
      truth/layouts.jsonl               per image: filename, scene, layout (ground truth)
      synthrs.json                      generation parameters and counts (no timestamps)

Same arguments, same bytes: every image has its own random streams derived from
``(seed, image index)``, JSON keys are sorted and PNGs are encoded with fixed options.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SCENES: tuple[str, ...] = (
    "farmland", "residential", "forest", "river", "lake",
    "beach", "airport", "parking", "industrial", "desert",
)

LAND_COVER: tuple[tuple[int, str, tuple[int, int, int]], ...] = (
    (0, "bare_soil", (150, 110, 80)),
    (1, "water", (30, 90, 170)),
    (2, "tree", (30, 110, 40)),
    (3, "grass", (130, 190, 80)),
    (4, "crop", (220, 210, 90)),
    (5, "building", (200, 60, 60)),
    (6, "road", (70, 70, 70)),
    (7, "sand", (240, 220, 160)),
    (8, "pavement", (170, 170, 175)),
    (9, "vehicle", (230, 40, 210)),
)
BARE_SOIL, WATER, TREE, GRASS, CROP, BUILDING, ROAD, SAND, PAVEMENT, VEHICLE = range(len(LAND_COVER))

NOISE_KINDS: tuple[str, ...] = ("other_scene", "generic", "truncated", "wrong_layout")

CELLS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")

GENERIC_CAPTIONS: tuple[str, ...] = (
    "an aerial image",
    "a remote sensing image of an area",
    "a satellite view of the ground",
    "an image taken from above",
    "a top down view of a place",
    "an aerial photograph of a scene",
    "a picture of the earth from high above",
)

DATASET_NAME = "synthrs"
FORMAT_VERSION = 1
MIN_SIZE = 16

# Independent random streams per image: np.random.default_rng([seed, stream, index]).
_RENDER_STREAM, _CAPTION_STREAM, _NOISE_STREAM, _SPLIT_STREAM = range(4)
# Side of the throw-away scene rendered to caption an ``other_scene`` noisy caption.
_OTHER_SCENE_SIZE = 32

# A grid cell, optionally with the preposition ``_at`` puts before it ("on the left").
_CELL_PATTERN = re.compile(r"\b(?:(?:in|on|at) the )?(" + "|".join(sorted(CELLS, key=len, reverse=True)) + r")\b")


@dataclass(frozen=True)
class SceneSample:
    """One rendered scene.

    Attributes:
        image: uint8 RGB image, shape ``(size, size, 3)``.
        mask: uint8 land-cover mask, shape ``(size, size)``; values index ``LAND_COVER``.
        layout: JSON-serialisable ground-truth facts (objects, counts, grid cells) that the
            captions are written from; always holds ``"scene"``.
    """

    image: np.ndarray
    mask: np.ndarray
    layout: dict


# ---------------------------------------------------------------------------------------------
# Drawing primitives
# ---------------------------------------------------------------------------------------------

# Realistic base colours per land-cover class (the LAND_COVER colours are only a legend).
_BASE_RGB = np.array(
    [
        (138, 112, 84),   # bare_soil
        (36, 64, 88),     # water
        (44, 76, 40),     # tree
        (104, 134, 72),   # grass
        (150, 148, 84),   # crop
        (150, 146, 140),  # building
        (84, 84, 88),     # road
        (220, 202, 160),  # sand
        (128, 128, 128),  # pavement
        (200, 200, 200),  # vehicle
    ],
    dtype=np.float32,
)
# Texture strength per class: large-scale (fbm) and small-scale (crowns, grain) variation.
_COARSE_AMPLITUDE = np.array([0.16, 0.06, 0.10, 0.14, 0.06, 0.03, 0.04, 0.06, 0.06, 0.0], np.float32)
_FINE_AMPLITUDE = np.array([0.08, 0.03, 0.32, 0.08, 0.04, 0.02, 0.05, 0.04, 0.05, 0.0], np.float32)
_CASTS_SHADOW = np.zeros(len(LAND_COVER), bool)
_CASTS_SHADOW[[TREE, BUILDING]] = True

_CROP_TINTS = {
    "green": (0.62, 0.95, 0.72),
    "yellow": (1.28, 1.14, 1.0),
    "light green": (0.92, 1.1, 0.82),
    "brown": (0.98, 0.8, 0.72),
    "golden": (1.38, 1.2, 1.02),
}
_ROOF_TINTS = {
    "red": (1.15, 0.6, 0.48),
    "brown": (0.86, 0.66, 0.54),
    "grey": (1.0, 1.0, 1.03),
    "dark grey": (0.6, 0.6, 0.65),
    "orange": (1.3, 0.82, 0.56),
}
_INDUSTRIAL_ROOF_TINTS = ((1.25, 1.25, 1.27), (1.4, 1.4, 1.4), (0.86, 0.96, 1.18), (0.78, 0.8, 0.84))
_CAR_TINTS = ((1.2, 1.2, 1.2), (0.2, 0.2, 0.22), (0.95, 0.22, 0.2), (0.3, 0.42, 0.9),
              (0.85, 0.86, 0.9), (0.55, 0.56, 0.6), (1.1, 0.95, 0.3))
_UMBRELLA_TINTS = ((1.1, 0.35, 0.3), (0.4, 0.6, 1.1), (1.15, 1.05, 0.4), (1.15, 1.15, 1.15))


def _value_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth value noise in [-1, 1] on a ``cells`` x ``cells`` lattice (separable lerp)."""
    lattice = rng.random((cells + 1, cells + 1))
    position = (np.arange(size) + 0.5) * (cells / size)
    index = np.minimum(position.astype(np.int64), cells - 1)
    frac = position - index
    frac = frac * frac * (3.0 - 2.0 * frac)
    rows = lattice[index] * (1.0 - frac)[:, None] + lattice[index + 1] * frac[:, None]
    field = rows[:, index] * (1.0 - frac)[None, :] + rows[:, index + 1] * frac[None, :]
    return field * 2.0 - 1.0


def _fbm(size: int, cells: int, rng: np.random.Generator, octaves: int = 3) -> np.ndarray:
    """Fractal sum of value noise octaves, roughly in [-1, 1]."""
    total = np.zeros((size, size))
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * _value_noise(size, cells * 2**octave, rng)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


class _Canvas:
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
        self.colours = _BASE_RGB.copy()

    def at_least(self, width: float, pixels: float = 1.2) -> float:
        """``width``, but never thinner than ``pixels`` pixels (keeps thin things visible)."""
        return max(width, pixels / self.size)

    def paint(self, region: np.ndarray, land_cover: int, tint: Any = None) -> None:
        self.mask[region] = land_cover
        self.tint[region] = 1.0 if tint is None else tint
        self.shade[region] = 1.0

    def noise(self, cells: int, octaves: int = 1) -> np.ndarray:
        if octaves == 1:
            return _value_noise(self.size, cells, self.rng)
        return _fbm(self.size, cells, self.rng, octaves)


def _rotated(canvas: _Canvas, angle: float, cx: float = 0.5, cy: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across direction ``angle`` (radians), centred on (cx, cy)."""
    dx, dy = canvas.x - cx, canvas.y - cy
    cos, sin = math.cos(angle), math.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _rectangle(canvas: _Canvas, cx: float, cy: float, length: float, width: float,
               angle: float = 0.0) -> np.ndarray:
    along, across = _rotated(canvas, angle, cx, cy)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def _disk(canvas: _Canvas, cx: float, cy: float, radius: float) -> np.ndarray:
    return (canvas.x - cx) ** 2 + (canvas.y - cy) ** 2 <= radius**2


def _blob_distance(canvas: _Canvas, rng: np.random.Generator, cx: float, cy: float, radius: float,
                   roughness: float = 0.25) -> np.ndarray:
    """Radial distance normalised by a wobbly radius: < 1 inside an irregular blob."""
    dx, dy = canvas.x - cx, canvas.y - cy
    theta = np.arctan2(dy, dx)
    wobble = np.ones_like(theta)
    for harmonic in (2, 3, 4, 5):
        wobble += rng.uniform(0, roughness / harmonic * 1.5) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    return np.sqrt(dx**2 + dy**2) / (radius * np.maximum(wobble, 0.3))


def _cell_name(x: float, y: float) -> str:
    column = min(2, max(0, int(x * 3)))
    row = min(2, max(0, int(y * 3)))
    return CELLS[row * 3 + column]


def _cell_centre(cell: str) -> tuple[float, float]:
    row, column = divmod(CELLS.index(cell), 3)
    return (column + 0.5) / 3, (row + 0.5) / 3


def _at(cell: str) -> str:
    """Where a thing is: ``"in the center"``, ``"on the left"``, ``"at the top right"``."""
    if cell == "center":
        return "in the center"
    if cell in ("left", "right"):
        return f"on the {cell}"
    return f"at the {cell}"


def _ordered(first: str, second: str) -> tuple[str, str]:
    """Two cells in reading order (for things without a direction, such as roads)."""
    return (first, second) if CELLS.index(first) <= CELLS.index(second) else (second, first)


def _line_ends(px: float, py: float, angle: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where the infinite line through (px, py) with direction ``angle`` crosses the image border."""
    dx, dy = math.cos(angle), math.sin(angle)
    t_low, t_high = -math.inf, math.inf
    for start, step in ((px, dx), (py, dy)):
        if abs(step) < 1e-9:
            continue
        t0, t1 = (0.0 - start) / step, (1.0 - start) / step
        t_low, t_high = max(t_low, min(t0, t1)), min(t_high, max(t0, t1))
    return (px + t_low * dx, py + t_low * dy), (px + t_high * dx, py + t_high * dy)


def _segment_ends(px: float, py: float, angle: float, length: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The visible part of a segment of ``length`` centred on (px, py), clipped to the image."""
    (x0, y0), (x1, y1) = _line_ends(px, py, angle)
    dx, dy = math.cos(angle), math.sin(angle)
    t_enter = (x0 - px) * dx + (y0 - py) * dy
    t_exit = (x1 - px) * dx + (y1 - py) * dy
    t_low, t_high = max(t_enter, -length / 2), min(t_exit, length / 2)
    return (px + t_low * dx, py + t_low * dy), (px + t_high * dx, py + t_high * dy)


def _distance_to_line(x: float, y: float, px: float, py: float, angle: float) -> float:
    return abs(-(x - px) * math.sin(angle) + (y - py) * math.cos(angle))


def _random_straight_line(rng: np.random.Generator) -> tuple[float, float, float]:
    """A line through the middle part of the image: (x, y, angle)."""
    return rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0, np.pi)


def _paint_straight_road(canvas: _Canvas, line: tuple[float, float, float], width: float,
                         land_cover: int = ROAD, tint: Any = None) -> dict[str, str]:
    """Paint a road band along ``line``; returns its end cells ``{"from", "to"}``."""
    px, py, angle = line
    _, across = _rotated(canvas, angle, px, py)
    canvas.paint(np.abs(across) <= canvas.at_least(width) / 2, land_cover, tint)
    (x0, y0), (x1, y1) = _line_ends(px, py, angle)
    start, end = _ordered(_cell_name(x0, y0), _cell_name(x1, y1))
    return {"from": start, "to": end}


_SIDES = ("top", "bottom", "left", "right")


def _border_point(rng: np.random.Generator, side: str) -> tuple[float, float]:
    """A point on one image side, clear of grid-cell boundaries so its cell is unambiguous."""
    t = rng.uniform(0.12, 0.88)
    while min(abs(t - 1 / 3), abs(t - 2 / 3)) < 0.06:
        t = rng.uniform(0.12, 0.88)
    return {"top": (t, 0.0), "bottom": (t, 1.0), "left": (0.0, t), "right": (1.0, t)}[side]


def _curve_points(rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float],
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


def _curve_distance(canvas: _Canvas, points: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Distance to a band along a polyline of sample points (< 0 inside the band)."""
    field = np.full(canvas.mask.shape, np.inf)
    for (px, py), half_width in zip(points, half_widths):
        np.minimum(field, np.sqrt((canvas.x - px) ** 2 + (canvas.y - py) ** 2) - half_width, out=field)
    return field


def _random_crossing(rng: np.random.Generator) -> tuple[tuple[float, float], tuple[float, float], str, str]:
    """Entry and exit points on two different image sides, in different grid cells."""
    while True:
        entry_side, exit_side = rng.choice(_SIDES, size=2, replace=False)
        entry, exit_ = _border_point(rng, str(entry_side)), _border_point(rng, str(exit_side))
        entry_cell, exit_cell = _cell_name(*entry), _cell_name(*exit_)
        if entry_cell != exit_cell:
            return entry, exit_, entry_cell, exit_cell


def _grid_angle(rng: np.random.Generator, axis_aligned: float = 0.6) -> float:
    """Orientation of a man-made grid: usually close to the image axes, sometimes any."""
    if rng.random() < axis_aligned:
        return float(rng.integers(2) * np.pi / 2 + rng.normal(0, 0.04))
    return float(rng.uniform(0, np.pi))


def _tree_spots(canvas: _Canvas, threshold: float, cells: int = 20) -> np.ndarray:
    """Blobs the size of tree crowns; a lower threshold gives more trees."""
    return canvas.noise(cells) > threshold


def _cuts(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Random cut positions covering [-0.75, 0.75] with gaps in [low, high]."""
    cuts = [-0.75 - rng.uniform(0, high)]
    while cuts[-1] < 0.75:
        cuts.append(cuts[-1] + rng.uniform(low, high))
    return np.array(cuts)


def _distance_to_cuts(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return np.min(np.abs(values[..., None] - cuts), axis=-1)


def _visible_count(ids: np.ndarray, min_pixels: int = 1) -> int:
    if ids.size == 0:
        return 0
    _, counts = np.unique(ids, return_counts=True)
    return int(np.sum(counts >= min_pixels))


# ---------------------------------------------------------------------------------------------
# Scenes: each painter draws into the canvas and returns the layout facts for captions
# ---------------------------------------------------------------------------------------------


def _paint_parcels(canvas: _Canvas, margins: str) -> dict[str, Any]:
    """Patchwork of crop / fallow / ploughed parcels with crop rows and field margins."""
    rng = canvas.rng
    angle = _grid_angle(rng)
    along, across = _rotated(canvas, angle)
    column_cuts = _cuts(rng, 0.18, 0.42)
    column = np.searchsorted(column_cuts, along)
    n_columns = len(column_cuts) + 1
    max_rows = 16
    row = np.zeros(column.shape, np.int64)
    edge_distance = _distance_to_cuts(along, column_cuts)
    for index in range(n_columns):
        in_column = column == index
        row_cuts = _cuts(rng, 0.14, 0.38)[:max_rows - 1]
        row[in_column] = np.searchsorted(row_cuts, across[in_column])
        edge_distance[in_column] = np.minimum(edge_distance[in_column],
                                              _distance_to_cuts(across[in_column], row_cuts))

    table = (n_columns, max_rows)
    kind = rng.choice([CROP, GRASS, BARE_SOIL], size=table, p=[0.72, 0.12, 0.16])
    tint_names = list(_CROP_TINTS)
    image_tints = rng.choice(len(tint_names), size=rng.integers(2, 4), replace=False)
    tint_index = rng.choice(image_tints, size=table)
    rows_across = rng.random(table) < 0.5
    row_frequency = rng.uniform(11, 20, table)
    row_phase = rng.uniform(0, 2 * np.pi, table)
    brightness = rng.uniform(0.9, 1.1, table)

    parcel_kind = kind[column, row]
    canvas.mask[:] = parcel_kind
    tints = np.array([_CROP_TINTS[name] for name in tint_names], np.float32)
    canvas.tint[:] = np.where((parcel_kind == CROP)[..., None], tints[tint_index[column, row]], 1.0)
    canvas.tint *= brightness[column, row][..., None]
    row_coordinate = np.where(rows_across[column, row], across, along)
    stripes = np.sin(2 * np.pi * row_frequency[column, row] * row_coordinate + row_phase[column, row])
    strength = np.select([parcel_kind == CROP, parcel_kind == BARE_SOIL], [0.16, 0.1], 0.0)
    canvas.shade[:] = 1.0 + strength * stripes

    if margins == "hedges":
        canvas.paint(edge_distance < canvas.at_least(0.012, 0.8), TREE)
    elif margins == "tracks":
        canvas.paint(edge_distance < canvas.at_least(0.008, 0.6), BARE_SOIL, (1.15, 1.1, 1.05))
    else:
        canvas.paint(edge_distance < canvas.at_least(0.008, 0.6), GRASS)

    parcel_id = column * max_rows + row
    field_pixels = np.isin(canvas.mask, [CROP, GRASS, BARE_SOIL])
    min_pixels = max(3, int(0.01 * canvas.size**2))
    n_fields = _visible_count(parcel_id[field_pixels], min_pixels)
    crop_here = (parcel_kind == CROP) & field_pixels
    colour_pixels = Counter(tint_index[column, row][crop_here].tolist())
    colours = [tint_names[i] for i, count in colour_pixels.most_common() if count >= min_pixels]
    return {"n_fields": n_fields, "crop_colours": colours[:3], "margins": margins}


def _paint_farmhouse(canvas: _Canvas, cell: str) -> None:
    rng = canvas.rng
    cx, cy = _cell_centre(cell)
    cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
    angle = _grid_angle(rng, 0.7)
    canvas.paint(_rectangle(canvas, cx, cy, 0.2, 0.15, angle), BARE_SOIL, (1.1, 1.05, 1.0))
    tints = list(_ROOF_TINTS.values())
    for offset_along, offset_across, length, width in ((-0.04, -0.02, 0.07, 0.05), (0.05, 0.02, 0.09, 0.055)):
        bx = cx + offset_along * math.cos(angle) - offset_across * math.sin(angle)
        by = cy + offset_along * math.sin(angle) + offset_across * math.cos(angle)
        canvas.paint(_rectangle(canvas, bx, by, length, width, angle), BUILDING, tints[rng.integers(len(tints))])
    for _ in range(int(rng.integers(3, 7))):
        tx, ty = cx + rng.uniform(-0.13, 0.13), cy + rng.uniform(-0.11, 0.11)
        crown = _disk(canvas, tx, ty, canvas.at_least(rng.uniform(0.018, 0.03), 1.0)) & (canvas.mask != BUILDING)
        canvas.paint(crown, TREE)


def _draw_farmland(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    layout: dict[str, Any] = _paint_parcels(canvas, str(rng.choice(["hedges", "grass", "tracks"], p=[0.35, 0.4, 0.25])))
    has_road = rng.random() < 0.6
    has_farmhouse = rng.random() < 0.5 or not has_road
    layout["road"] = None
    layout["farmhouse"] = None
    line = _random_straight_line(rng)
    if has_farmhouse:
        away = [c for c in CELLS if _distance_to_line(*_cell_centre(c), *line) > 0.15] if has_road else list(CELLS)
        layout["farmhouse"] = str(rng.choice(away or list(CELLS)))
        _paint_farmhouse(canvas, layout["farmhouse"])
    if has_road:
        paved = rng.random() < 0.5
        road = _paint_straight_road(canvas, line, rng.uniform(0.03, 0.045),
                                    ROAD if paved else BARE_SOIL, None if paved else (1.2, 1.12, 1.05))
        layout["road"] = {**road, "paved": bool(paved)}
    return layout


def _draw_residential(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    along, across = _rotated(canvas, _grid_angle(rng))
    road_width = canvas.at_least(rng.uniform(0.035, 0.05), 1.5)
    street_spacing = rng.uniform(0.27, 0.36)
    block_length = rng.uniform(0.35, 0.7)
    u = (along - rng.uniform(0, block_length)) / block_length
    v = (across - rng.uniform(0, street_spacing)) / street_spacing
    block_u, block_v = np.floor(u), np.floor(v)
    local_u, local_v = (u - block_u) * block_length, (v - block_v) * street_spacing
    streets = local_v < road_width
    cross_streets = local_u < road_width

    setback = 0.012
    depth = rng.uniform(0.05, min(0.085, (street_spacing - road_width) / 2 - setback - 0.01))
    pitch = rng.uniform(0.065, 0.095)
    house_share = rng.uniform(0.6, 0.8)
    near = local_v - road_width - setback
    far = street_spacing - local_v - setback
    near_row = (near >= 0) & (near < depth)
    far_row = (far >= 0) & (far < depth)
    position = local_u - road_width - 0.01
    slot = np.floor(position / pitch)
    n_slots = max(1, int((block_length - road_width - 0.02) / pitch))
    in_slot = (position >= 0) & (slot < n_slots) & (position - slot * pitch < pitch * house_share)
    house = in_slot & (near_row | far_row) & ~streets & ~cross_streets

    reach_u, reach_v = int(np.ceil(0.71 / block_length)) + 1, int(np.ceil(0.71 / street_spacing)) + 1
    index_u = np.clip(block_u.astype(np.int64) + reach_u, 0, 2 * reach_u)
    index_v = np.clip(block_v.astype(np.int64) + reach_v, 0, 2 * reach_v)
    row = far_row.astype(np.int64)
    slot_index = np.clip(slot, 0, n_slots - 1).astype(np.int64)
    table = (2 * reach_u + 1, 2 * reach_v + 1, 2, n_slots)
    present = rng.random(table) < 0.9
    roof_names = list(_ROOF_TINTS)
    image_roofs = [roof_names[i] for i in rng.choice(len(roof_names), size=rng.integers(1, 3), replace=False)]
    roof_choice = rng.choice(len(image_roofs), size=table, p=None if len(image_roofs) == 1 else [0.7, 0.3])
    house &= present[index_u, index_v, row, slot_index]

    park_cell = str(rng.choice(CELLS))
    px, py = _cell_centre(park_cell)
    park = _blob_distance(canvas, rng, px + rng.uniform(-0.03, 0.03), py + rng.uniform(-0.03, 0.03),
                          rng.uniform(0.13, 0.17), 0.15) < 1
    leafy = rng.random() < 0.5

    canvas.paint(streets | cross_streets, ROAD)
    house &= ~park
    roof_tints = np.array([_ROOF_TINTS[name] for name in image_roofs], np.float32)
    roof = roof_choice[index_u, index_v, row, slot_index]
    canvas.paint(house, BUILDING, roof_tints[roof[house]] * rng.uniform(0.9, 1.1, (int(house.sum()), 1)))
    ridge = np.where(far_row, far, near) / depth < 0.5
    gable_light = rng.random() < 0.5
    canvas.shade[house] = np.where(ridge[house] == gable_light, 1.12, 0.86)
    open_ground = (canvas.mask == GRASS) & ~park
    canvas.paint(park & ~streets & ~cross_streets, GRASS, (1.05, 1.08, 1.0))
    canvas.paint(park & ~streets & ~cross_streets & _tree_spots(canvas, 0.0), TREE)
    canvas.paint(open_ground & _tree_spots(canvas, 0.25 if leafy else 0.5), TREE)

    house_id = ((index_u * table[1] + index_v) * 2 + row) * n_slots + slot_index
    n_houses = _visible_count(house_id[canvas.mask == BUILDING], 2)
    return {"n_houses": n_houses, "roof_colours": image_roofs, "park": park_cell,
            "street_grid": bool(cross_streets.any() and streets.any()), "trees": "many" if leafy else "few"}


def _draw_forest(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    mixed = rng.random() < 0.6
    if mixed:
        patches = canvas.noise(4, 2) > rng.uniform(-0.2, 0.2)
        canvas.tint[:] = np.where(patches[..., None], np.float32((0.75, 0.92, 0.82)), np.float32((1.25, 1.2, 0.9)))
    else:
        canvas.tint[:] = np.float32(rng.uniform(0.9, 1.05, 3))
    has_clearing = rng.random() < 0.7
    has_track = rng.random() < 0.6 or not has_clearing
    layout: dict[str, Any] = {"canopy": "mixed" if mixed else "dense", "clearing": None, "track": None}
    if has_track:
        entry, exit_, entry_cell, exit_cell = _random_crossing(rng)
        points = _curve_points(rng, entry, exit_, rng.uniform(0.02, 0.07))
        half = canvas.at_least(rng.uniform(0.012, 0.018), 0.7)
        track = _curve_distance(canvas, points, np.full(len(points), half)) < 0
        canvas.paint(track, BARE_SOIL, (1.1, 1.05, 1.0))
        layout["track"] = {"from": entry_cell, "to": exit_cell}
    if has_clearing:
        cell = str(rng.choice(CELLS))
        cx, cy = _cell_centre(cell)
        clearing = _blob_distance(canvas, rng, cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04),
                                  rng.uniform(0.1, 0.17)) < 1
        canvas.paint(clearing & (canvas.mask == TREE), GRASS, (1.1, 1.1, 0.95))
        canvas.paint(clearing & _tree_spots(canvas, 0.55), TREE)
        layout["clearing"] = cell
    return layout


def _paint_surroundings(canvas: _Canvas, kind: str) -> None:
    """Natural background: ``fields``, ``trees``, ``grass`` or ``trees and grass``."""
    if kind == "fields":
        _paint_parcels(canvas, str(canvas.rng.choice(["hedges", "grass"])))
    elif kind == "trees":
        canvas.paint(np.ones_like(canvas.mask, bool), TREE)
    elif kind == "grass":
        canvas.paint(np.ones_like(canvas.mask, bool), GRASS)
        canvas.paint(_tree_spots(canvas, 0.45), TREE)
    else:
        canvas.paint(np.ones_like(canvas.mask, bool), GRASS)
        canvas.paint(canvas.noise(3, 2) > 0, TREE)
        canvas.paint(_tree_spots(canvas, 0.5), TREE)


def _draw_river(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    surroundings = str(rng.choice(["fields", "trees", "grass"], p=[0.45, 0.25, 0.3]))
    _paint_surroundings(canvas, surroundings)
    entry, exit_, entry_cell, exit_cell = _random_crossing(rng)
    points = _curve_points(rng, entry, exit_, rng.uniform(0.04, 0.12))
    half_width = rng.uniform(0.035, 0.08)
    half_widths = half_width * (1 + 0.2 * np.sin(np.linspace(0, rng.uniform(3, 9), len(points)) + rng.uniform(0, 6)))
    distance = _curve_distance(canvas, points, np.maximum(half_widths, 0.8 / canvas.size))
    riverside_trees = surroundings != "trees" and rng.random() < 0.6
    if riverside_trees:
        canvas.paint(distance < rng.uniform(0.02, 0.035), TREE)
    else:
        canvas.paint(distance < canvas.at_least(0.008, 0.7), GRASS if rng.random() < 0.6 else SAND)
    water = distance < 0
    canvas.paint(water, WATER, rng.uniform(0.9, 1.25, 3).astype(np.float32))
    canvas.shade[water] = np.clip(1.0 + 2.0 * distance[water] / half_width * 0.15, 0.8, 1.0) + 0.1
    layout: dict[str, Any] = {
        "river": {"from": entry_cell, "to": exit_cell, "width": "narrow" if half_width < 0.055 else "wide"},
        "surroundings": surroundings, "riverside_trees": bool(riverside_trees), "bridge": None,
    }
    if rng.random() < 0.35:
        k = int(rng.integers(12, 36))
        tangent = points[k + 1] - points[k - 1]
        angle = math.atan2(tangent[1], tangent[0]) + np.pi / 2 + rng.normal(0, 0.15)
        layout["bridge"] = _paint_straight_road(canvas, (points[k][0], points[k][1], angle), rng.uniform(0.025, 0.04))
    return layout


def _draw_lake(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    surroundings = str(rng.choice(["trees", "grass", "trees and grass"], p=[0.35, 0.3, 0.35]))
    _paint_surroundings(canvas, surroundings)
    cell = str(rng.choice(CELLS))
    cx, cy = _cell_centre(cell)
    radius = rng.uniform(0.17, 0.26) if cell == "center" else rng.uniform(0.14, 0.22)
    distance = _blob_distance(canvas, rng, cx + rng.uniform(-0.03, 0.03), cy + rng.uniform(-0.03, 0.03), radius)
    sandy_shore = rng.random() < 0.4
    if sandy_shore:
        canvas.paint(distance < 1 + canvas.at_least(0.025, 1.0) / radius, SAND)
    else:
        canvas.paint(distance < 1 + canvas.at_least(0.012, 0.7) / radius, GRASS, (1.1, 1.1, 0.95))
    water = distance < 1
    canvas.paint(water, WATER, rng.uniform(0.85, 1.15, 3).astype(np.float32))
    canvas.shade[water] = 0.8 + 0.35 * np.clip(distance[water], 0, 1) ** 2
    return {"lake": {"cell": cell, "size": "small" if radius < 0.18 else "large"},
            "surroundings": surroundings, "sandy_shore": bool(sandy_shore)}


_OPPOSITE_SIDE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def _draw_beach(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    sea_side = str(rng.choice(_SIDES))
    depth = {"left": canvas.x, "right": 1 - canvas.x, "top": canvas.y, "bottom": 1 - canvas.y}[sea_side]
    along = canvas.y if sea_side in ("left", "right") else canvas.x
    shore = (rng.uniform(0.22, 0.4) + 0.035 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * along + rng.uniform(0, 6))
             + 0.025 * canvas.noise(4))
    sand_end = shore + rng.uniform(0.14, 0.26) + 0.03 * canvas.noise(5)
    land = str(rng.choice(["trees", "grass", "buildings"]))

    if land == "trees":
        canvas.paint(np.ones_like(canvas.mask, bool), TREE)
    else:
        canvas.paint(np.ones_like(canvas.mask, bool), GRASS)
        canvas.paint(_tree_spots(canvas, 0.35 if land == "grass" else 0.6), TREE)
    if land == "buildings":
        road_start = sand_end + 0.015
        road_width = canvas.at_least(0.035, 1.5)
        canvas.paint((depth >= road_start) & (depth < road_start + road_width), ROAD)
        pitch = rng.uniform(0.08, 0.12)
        position = (along - rng.uniform(0, pitch)) / pitch
        slot = np.floor(position)
        in_slot = position - slot < rng.uniform(0.55, 0.75)
        rows_start = road_start + road_width + 0.02
        roof_tints = np.array(list(_ROOF_TINTS.values()), np.float32)
        for row in range(2):
            first = rows_start + row * 0.1
            building = in_slot & (depth >= first) & (depth < first + 0.07)
            colour = rng.integers(len(roof_tints), size=64)[(slot[building].astype(np.int64) + 32) % 64]
            canvas.paint(building, BUILDING, roof_tints[colour])
    canvas.paint((depth >= shore) & (depth < sand_end), SAND, (1.04, 1.03, 1.0))
    umbrellas = rng.random() < 0.5
    if umbrellas:
        shore_along = shore.mean(axis=1 if sea_side in ("left", "right") else 0)  # shore depth per row/column
        for _ in range(int(rng.integers(6, 16))):
            position = rng.uniform(0, 1)
            d = shore_along[min(int(position * canvas.size), canvas.size - 1)] + rng.uniform(0.03, 0.08)
            x, y = {"left": (d, position), "right": (1 - d, position),
                    "top": (position, d), "bottom": (position, 1 - d)}[sea_side]
            spot = _disk(canvas, x, y, canvas.at_least(0.012, 0.8)) & (canvas.mask == SAND)
            canvas.tint[spot] = _UMBRELLA_TINTS[rng.integers(len(_UMBRELLA_TINTS))]
    water = depth < shore
    canvas.paint(water, WATER)
    closeness = np.exp(-(shore - depth) / 0.07)[water][:, None]
    shallow, deep = np.float32((1.3, 2.0, 1.9)), np.float32((0.95, 1.05, 1.2))
    canvas.tint[water] = deep + (shallow - deep) * closeness
    foam = water & (shore - depth < canvas.at_least(0.012, 0.8))
    canvas.tint[foam] = (4.5, 3.4, 2.8)
    waves = np.sin(2 * np.pi * 18 * (shore - depth) + 2 * canvas.noise(6)) > 0.93
    canvas.shade[water & waves] = 1.25
    coast = ("top", "bottom") if sea_side in ("left", "right") else ("left", "right")
    return {"sea_side": sea_side, "land": land, "land_side": _OPPOSITE_SIDE[sea_side],
            "umbrellas": bool(umbrellas), "coast": {"from": coast[0], "to": coast[1]}}


def _draw_airport(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    canvas.paint(np.ones_like(canvas.mask, bool), GRASS, (1.05, 1.02, 0.9))
    if rng.random() < 0.5:
        canvas.paint(canvas.noise(4, 2) > 0.3, BARE_SOIL, (1.1, 1.05, 0.95))
    n_runways = 2 if rng.random() < 0.4 else 1
    arrangement = "single" if n_runways == 1 else str(rng.choice(["parallel", "crossing"]))
    angle = float(rng.uniform(0, np.pi))
    cx, cy = 0.5 + rng.uniform(-0.15, 0.15), 0.5 + rng.uniform(-0.15, 0.15)
    spanning = rng.random() < 0.7
    length = rng.uniform(1.3, 1.6) if spanning else rng.uniform(0.65, 0.85)
    width = canvas.at_least(rng.uniform(0.07, 0.1), 2.5)
    runways = [(cx, cy, angle, length, width)]
    if arrangement == "parallel":
        shift = rng.choice([-1, 1]) * rng.uniform(0.24, 0.3)
        runways.append((cx - shift * math.sin(angle), cy + shift * math.cos(angle), angle, length, width * 0.85))
    elif arrangement == "crossing":
        runways.append((cx + rng.uniform(-0.1, 0.1), cy + rng.uniform(-0.1, 0.1),
                        angle + rng.choice([-1, 1]) * rng.uniform(0.7, 1.57), length, width * 0.85))

    def away_from_runways(cell: str) -> float:
        x, y = _cell_centre(cell)
        return min(_distance_to_line(x, y, rx, ry, ra) - rw / 2 for rx, ry, ra, _, rw in runways)

    terminal = max(CELLS, key=lambda cell: away_from_runways(cell) + rng.uniform(0, 0.12))
    tx, ty = _cell_centre(terminal)
    side = 1.0 if -(tx - cx) * math.sin(angle) + (ty - cy) * math.cos(angle) > 0 else -1.0
    normal = np.array([-math.sin(angle), math.cos(angle)]) * side

    for rx, ry, ra, rl, rw in runways:
        canvas.paint(_rectangle(canvas, rx, ry, rl, rw, ra), PAVEMENT, (0.85, 0.85, 0.87))
    # taxiway parallel to the first runway, on the terminal side, with two links
    offset = width / 2 + 0.06
    taxi_x, taxi_y = cx + normal[0] * offset, cy + normal[1] * offset
    taxi_width = canvas.at_least(0.022, 1.2)
    canvas.paint(_rectangle(canvas, taxi_x, taxi_y, length * 0.85, taxi_width, angle), PAVEMENT)
    for t in rng.uniform(-0.35, 0.35, 2) * min(length, 1.0):
        lx, ly = cx + normal[0] * offset / 2 + t * math.cos(angle), cy + normal[1] * offset / 2 + t * math.sin(angle)
        canvas.paint(_rectangle(canvas, lx, ly, taxi_width, offset, angle), PAVEMENT)
    for rx, ry, ra, rl, _ in runways:  # dashed white centre lines
        along, across = _rotated(canvas, ra, rx, ry)
        centre_line = ((np.abs(across) < canvas.at_least(0.004, 0.5)) & ((along * 9) % 1 < 0.5)
                       & (np.abs(along) < rl / 2 - 0.03))
        canvas.shade[centre_line & (canvas.mask == PAVEMENT)] = 1.7

    apron_x, apron_y = tx + rng.uniform(-0.03, 0.03), ty + rng.uniform(-0.03, 0.03)
    canvas.paint(_rectangle(canvas, apron_x, apron_y, 0.3, 0.2, angle), PAVEMENT, (1.08, 1.08, 1.08))
    n_buildings = int(rng.integers(1, 3))
    for index in range(n_buildings):
        shift_along = (index - (n_buildings - 1) / 2) * 0.15
        bx = apron_x + normal[0] * 0.055 + shift_along * math.cos(angle)
        by = apron_y + normal[1] * 0.055 + shift_along * math.sin(angle)
        canvas.paint(_rectangle(canvas, bx, by, 0.24 / n_buildings, 0.06, angle), BUILDING, (1.2, 1.2, 1.25))
    n_planes = int(rng.integers(0, 4))
    for index in range(n_planes):
        shift_along = (index - (n_planes - 1) / 2) * 0.08
        px = apron_x - normal[0] * 0.04 + shift_along * math.cos(angle)
        py = apron_y - normal[1] * 0.04 + shift_along * math.sin(angle)
        fuselage = _rectangle(canvas, px, py, canvas.at_least(0.012, 1.0), 0.065, angle)
        wings = _rectangle(canvas, px, py, 0.055, canvas.at_least(0.012, 1.0), angle)
        canvas.paint(fuselage | wings, VEHICLE, (1.25, 1.25, 1.25))

    (x0, y0), (x1, y1) = _segment_ends(cx, cy, angle, length)
    start, end = _ordered(_cell_name(x0, y0), _cell_name(x1, y1))
    layout: dict[str, Any] = {
        "n_runways": n_runways, "arrangement": arrangement, "runway": {"from": start, "to": end},
        "crosses_center": bool(spanning and _distance_to_line(0.5, 0.5, cx, cy, angle) < 0.1),
        "terminal": terminal, "n_planes": n_planes, "crossing": None,
    }
    if arrangement == "crossing":
        (ax, ay, aa, _, _), (bx, by, ba, _, _) = runways
        denominator = math.sin(ba - aa)
        t = ((bx - ax) * math.sin(ba) - (by - ay) * math.cos(ba)) / denominator
        ix, iy = ax + t * math.cos(aa), ay + t * math.sin(aa)
        if 0 <= ix <= 1 and 0 <= iy <= 1:
            layout["crossing"] = _cell_name(ix, iy)
    return layout


def _draw_parking(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    canvas.tint[:] = np.float32(rng.uniform(0.85, 1.1))
    angle = _grid_angle(rng, 0.8)
    along, across = _rotated(canvas, angle)
    stall_depth, aisle = rng.uniform(0.1, 0.12), rng.uniform(0.08, 0.11)
    stall_width = rng.uniform(0.055, 0.07)
    period = 2 * stall_depth + aisle
    v = (across - rng.uniform(0, period)) / period
    block, in_block = np.floor(v), (v - np.floor(v)) * period
    in_stall_row = in_block < 2 * stall_depth
    row = (block.astype(np.int64) + 20) * 2 + (in_block >= stall_depth)
    depth_in_stall = np.where(in_block >= stall_depth, in_block - stall_depth, in_block)
    u = (along - rng.uniform(0, stall_width)) / stall_width
    stall, in_stall = np.floor(u), (u - np.floor(u)) * stall_width
    stall_index = stall.astype(np.int64) + 40

    occupancy = float(rng.uniform(0.35, 0.97))
    table = (80, 80)
    occupied = rng.random(table) < occupancy
    colour = rng.choice(len(_CAR_TINTS), size=table, p=[0.25, 0.2, 0.12, 0.1, 0.18, 0.1, 0.05])
    row_index, stall_clip = np.clip(row, 0, 79), np.clip(stall_index, 0, 79)
    car_gap = stall_width * 0.14
    car = (in_stall_row & occupied[row_index, stall_clip] & (in_stall > car_gap) & (in_stall < stall_width - car_gap)
           & (depth_in_stall > 0.12 * stall_depth) & (depth_in_stall < 0.9 * stall_depth))
    lines = in_stall_row & (in_stall < canvas.at_least(0.004, 0.6)) & ~car
    canvas.shade[lines] = 1.45
    car_tints = np.array(_CAR_TINTS, np.float32)
    canvas.paint(car, VEHICLE, car_tints[colour[row_index, stall_clip][car]])
    canvas.shade[car] = np.where(depth_in_stall[car] < 0.5 * stall_depth, 1.05, 0.9)

    grass_side = str(rng.choice(_SIDES))
    depth = {"left": canvas.x, "right": 1 - canvas.x, "top": canvas.y, "bottom": 1 - canvas.y}[grass_side]
    strip_width = rng.uniform(0.1, 0.18)
    strip = depth < strip_width
    canvas.paint(strip, GRASS)
    canvas.paint(strip & (depth > 0.02) & (depth < strip_width - 0.02) & _tree_spots(canvas, 0.2, 18), TREE)
    car_id = row * 1000 + stall_index
    visible = canvas.mask == VEHICLE
    n_cars = _visible_count(car_id[visible], 2)
    n_rows = _visible_count(row[visible], 2)
    fullness = "full" if occupancy > 0.8 else "half empty" if occupancy > 0.55 else "nearly empty"
    return {"n_cars": n_cars, "n_rows": n_rows, "fullness": fullness, "grass_side": grass_side}


def _draw_industrial(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    canvas.tint[:] = np.float32(rng.uniform(0.9, 1.15))
    if rng.random() < 0.6:
        canvas.paint(canvas.noise(3, 2) > 0.25, BARE_SOIL, (1.05, 1.0, 0.95))
    occupied = np.zeros(canvas.mask.shape, bool)
    road = None
    if rng.random() < 0.6:
        line = _random_straight_line(rng)
        road = _paint_straight_road(canvas, line, rng.uniform(0.035, 0.05))
        occupied |= canvas.mask == ROAD

    tank_cell = str(rng.choice(CELLS))
    rows, columns = int(rng.integers(1, 4)), int(rng.integers(2, 4))
    radius = rng.uniform(0.035, 0.055)
    spacing = 2 * radius + rng.uniform(0.012, 0.025)
    cx, cy = _cell_centre(tank_cell)
    cx = float(np.clip(cx, (columns - 1) * spacing / 2 + radius, 1 - (columns - 1) * spacing / 2 - radius))
    cy = float(np.clip(cy, (rows - 1) * spacing / 2 + radius, 1 - (rows - 1) * spacing / 2 - radius))
    light = rng.normal(size=2)
    light /= np.linalg.norm(light)
    tank_tint = np.float32((1.45, 1.45, 1.42)) * rng.uniform(0.85, 1.0)
    tank_ids = np.zeros(canvas.mask.shape, np.int64)
    for r in range(rows):
        for c in range(columns):
            x, y = cx + (c - (columns - 1) / 2) * spacing, cy + (r - (rows - 1) / 2) * spacing
            occupied |= _disk(canvas, x, y, radius + 0.03)
            tank = _disk(canvas, x, y, radius)
            canvas.paint(tank, BUILDING, tank_tint)
            dx, dy = (canvas.x[tank] - x) / radius, (canvas.y[tank] - y) / radius
            lit = 1.0 - 0.22 * (dx * light[0] + dy * light[1])  # a dome lit from one side
            canvas.shade[tank] = lit * np.where(dx**2 + dy**2 > 0.7, 0.85, 1.0)  # with a darker rim
            tank_ids[tank] = r * columns + c + 1
    n_tanks = _visible_count(tank_ids[(tank_ids > 0) & (canvas.mask == BUILDING)], 2)

    angle = _grid_angle(rng, 0.8)
    target = int(rng.integers(1, 5))
    buildings: list[tuple[float, float, float]] = []
    for _ in range(40):
        if len(buildings) == target:
            break
        length, width = rng.uniform(0.18, 0.45), rng.uniform(0.12, 0.26)
        x, y = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
        footprint = _rectangle(canvas, x, y, length + 0.05, width + 0.05, angle)
        if (footprint & occupied).any():
            continue
        occupied |= footprint
        building = _rectangle(canvas, x, y, length, width, angle)
        canvas.paint(building, BUILDING, _INDUSTRIAL_ROOF_TINTS[rng.integers(len(_INDUSTRIAL_ROOF_TINTS))])
        along, _ = _rotated(canvas, angle, x, y)
        canvas.shade[building] = 1.0 + 0.07 * np.sin(2 * np.pi * 22 * along[building])
        buildings.append((x, y, length * width))
    if not buildings:  # always at least one warehouse, even in a crowded image
        x, y = 1 - cx, 1 - cy
        building = _rectangle(canvas, x, y, 0.22, 0.14, angle)
        canvas.paint(building, BUILDING, _INDUSTRIAL_ROOF_TINTS[0])
        buildings.append((x, y, 0.22 * 0.14))
    largest = max(buildings, key=lambda b: b[2])
    return {"n_buildings": len(buildings), "n_tanks": n_tanks, "tanks": tank_cell,
            "buildings": _cell_name(largest[0], largest[1]), "road": road}


_DUNE_DIRECTIONS = (  # crest direction (degrees, y down) -> cells it runs between
    (0.0, ("left", "right")),
    (45.0, ("top left", "bottom right")),
    (90.0, ("top", "bottom")),
    (135.0, ("top right", "bottom left")),
)


def _draw_desert(canvas: _Canvas) -> dict[str, Any]:
    rng = canvas.rng
    canvas.colours[SAND] = np.float32((212, 172, 116)) * rng.uniform(0.92, 1.08, 3)
    degrees, (start, end) = _DUNE_DIRECTIONS[rng.integers(len(_DUNE_DIRECTIONS))]
    angle = math.radians(degrees + rng.normal(0, 5))
    _, across = _rotated(canvas, angle)
    frequency = rng.uniform(4, 8)
    phase = (across * frequency + 0.6 * canvas.noise(3, 2) + rng.uniform(0, 1)) % 1.0
    crest = rng.uniform(0.6, 0.8)
    profile = np.where(phase < crest, 0.82 + 0.36 * phase / crest, 1.18 - 0.5 * (phase - crest) / (1 - crest))
    ripples = 1 + 0.04 * np.sin(2 * np.pi * 30 * across + 3 * canvas.noise(5))
    canvas.shade[:] = profile * ripples
    layout: dict[str, Any] = {"dunes": {"from": start, "to": end},
                              "dune_spacing": "dense" if frequency > 6 else "wide", "rocks": None, "road": None}
    if rng.random() < 0.5:
        cell = str(rng.choice(CELLS))
        cx, cy = _cell_centre(cell)
        rocks = _blob_distance(canvas, rng, cx, cy, rng.uniform(0.08, 0.14), 0.4) < 1
        canvas.paint(rocks, BARE_SOIL, (0.85, 0.75, 0.7))
        canvas.shade[rocks] = 1 + 0.15 * canvas.noise(20)[rocks]
        layout["rocks"] = cell
    if rng.random() < 0.5:
        layout["road"] = _paint_straight_road(canvas, _random_straight_line(rng), rng.uniform(0.025, 0.04))
    return layout


_PAINTERS: dict[str, Callable[[_Canvas], dict[str, Any]]] = {
    "farmland": _draw_farmland, "residential": _draw_residential, "forest": _draw_forest,
    "river": _draw_river, "lake": _draw_lake, "beach": _draw_beach, "airport": _draw_airport,
    "parking": _draw_parking, "industrial": _draw_industrial, "desert": _draw_desert,
}
_BACKGROUND = {"farmland": CROP, "residential": GRASS, "forest": TREE, "river": GRASS, "lake": GRASS,
               "beach": SAND, "airport": GRASS, "parking": PAVEMENT, "industrial": PAVEMENT, "desert": SAND}


def _colourise(canvas: _Canvas) -> np.ndarray:
    """Turn the mask into an RGB image: base colours x tint x shade x texture, plus shadows."""
    rng, size, mask = canvas.rng, canvas.size, canvas.mask
    n_classes = len(LAND_COVER)
    colours = canvas.colours * rng.uniform(0.92, 1.08, (n_classes, 1)) * rng.uniform(0.96, 1.04, (n_classes, 3))
    coarse = canvas.noise(3, 3).astype(np.float32)
    fine = canvas.noise(24).astype(np.float32)
    texture = 1.0 + _COARSE_AMPLITUDE[mask] * coarse + _FINE_AMPLITUDE[mask] * fine
    crowns = canvas.noise(int(rng.integers(12, 18))).astype(np.float32)
    crown_shading = np.where(crowns < -0.55, np.float32(0.6), 0.9 + 0.25 * crowns)  # round crowns, dark gaps
    texture = np.where(mask == TREE, texture * crown_shading, texture)

    tall = _CASTS_SHADOW[mask]
    step = max(1, round(size / 48))
    dy, dx = (int(s) * step for s in rng.choice([-1, 1], 2))
    shifted = np.zeros_like(tall)
    shifted[max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)] = \
        tall[max(-dy, 0):size + min(-dy, 0), max(-dx, 0):size + min(-dx, 0)]
    shadow = np.where(shifted & ~tall, np.float32(0.62), np.float32(1.0))

    image = colours[mask].astype(np.float32) * canvas.tint * (canvas.shade * texture * shadow)[..., None]
    image *= np.float32(rng.uniform(0.9, 1.1)) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    image += rng.normal(0.0, 2.0, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _draw(scene: str, size: int, rng: np.random.Generator) -> tuple[_Canvas, dict[str, Any]]:
    """Draw the land cover of a scene; returns the canvas and the scene's layout facts."""
    canvas = _Canvas(size, rng, _BACKGROUND[scene])
    layout = _PAINTERS[scene](canvas)
    return canvas, {"scene": scene, **layout}


def render_scene(scene: str, size: int, rng: np.random.Generator) -> SceneSample:
    """Render one scene of class ``scene``.

    Args:
        scene: one of ``SCENES``.
        size: image side in pixels (at least 16).
        rng: the random stream; the same stream state gives the same sample.

    Returns:
        The image, its land-cover mask and the ground-truth layout used for captions.

    Raises:
        ValueError: for an unknown scene or a size below 16.
    """
    _check_scenes([scene])
    _check_size(size)
    canvas, layout = _draw(scene, size, rng)
    return SceneSample(image=_colourise(canvas), mask=canvas.mask, layout=layout)


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

_SMALL_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def _number_words(n: int) -> str:
    if n < 20:
        return _SMALL_NUMBERS[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _SMALL_NUMBERS[ones])
    return "more than a hundred"


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``12, "car"`` -> ``"twelve cars"``, ``0`` -> ``"no cars"``, ``47`` -> ``"about fifty cars"``.

    Counts above twenty are rounded to tens: a caption reader cannot tell 47 cars from 50.
    """
    plural = plural or noun + "s"
    if n == 0:
        return f"no {plural}"
    if n > 20:
        return f"about {_number_words(int(round(n, -1)))} {plural}"
    return f"{_number_words(n)} {noun if n == 1 else plural}"


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _farmland_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    n = layout["n_fields"]
    fields = _count(n, "field")
    colours = _join(layout["crop_colours"][:2]) or "green"
    margins = {"hedges": "hedgerows", "grass": "grass strips", "tracks": "dirt tracks"}[layout["margins"]]
    captions = [
        f"farmland with {fields} of different crops",
        f"a patchwork of {colours} crop fields",
        f"{pick('crop', 'farm')} fields with parallel rows separated by {margins}",
        f"agricultural land divided into {_count(n, 'parcel')}",
        f"cultivated {pick('fields', 'farmland')} seen from above with {margins} between them",
        f"{fields} of crops planted in {pick('rows', 'neat rows', 'straight lines')}",
    ]
    if layout["road"]:
        road = pick("road", "country road") if layout["road"]["paved"] else pick("dirt road", "farm track")
        a, b = layout["road"]["from"], layout["road"]["to"]
        captions.append(f"a {road} runs from the {a} to the {b} through the fields")
        captions.append(f"farm fields on both sides of a {road} from the {a} to the {b}")
    if layout["farmhouse"]:
        cell = layout["farmhouse"]
        captions.append(f"a farmhouse {_at(cell)} surrounded by {pick('fields', 'crop fields', 'farmland')}")
        if layout["road"]:
            captions.append(f"farm buildings {_at(cell)} and a road from the {layout['road']['from']} "
                            f"to the {layout['road']['to']}")
    return captions


def _residential_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    houses = _count(layout["n_houses"], "house")
    roofs = _join(layout["roof_colours"])
    streets = "a grid of streets" if layout["street_grid"] else "parallel streets"
    park = layout["park"]
    trees = "many trees" if layout["trees"] == "many" else "a few trees"
    return [
        f"a residential area with {houses} along the streets",
        f"houses with {roofs} roofs in rows along {streets}",
        f"a residential area with a small park {_at(park)}",
        f"a {pick('neighbourhood', 'residential area')} of {houses} and a green park {_at(park)}",
        f"{pick('dense', 'quiet', 'tidy')} residential blocks with {trees}",
        f"rows of {pick('detached houses', 'family houses', 'houses')} with gardens seen from above",
        f"a suburb with streets, houses and a park {_at(park)}",
        f"{roofs} roofed houses lining the streets of a {pick('quiet', 'leafy', 'small')} neighbourhood",
    ]


def _forest_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    canopy = "dark and light green trees" if layout["canopy"] == "mixed" else "dense green trees"
    captions = [
        f"a {pick('dense', 'thick', 'large')} forest with a continuous tree canopy",
        f"{canopy} covering the whole area",
        "a forest of tree crowns in different shades of green",
        f"green forest canopy with no {pick('buildings', 'roads', 'houses')}",
        f"{pick('thick', 'dense', 'wild')} woodland seen from above",
        f"a {pick('forest', 'woodland')} full of {canopy}",
    ]
    if layout["clearing"]:
        cell = layout["clearing"]
        captions.append(f"a forest with a grassy clearing {_at(cell)}")
        captions.append(f"{pick('thick', 'dense')} woodland with an opening {_at(cell)}")
    if layout["track"]:
        a, b = layout["track"]["from"], layout["track"]["to"]
        captions.append(f"a dirt track winds through the forest from the {a} to the {b}")
        if layout["clearing"]:
            captions.append(f"a track crosses the forest and a clearing lies {_at(layout['clearing'])}")
    return captions


_SURROUNDINGS = {"fields": ("fields", "farm fields"), "trees": ("trees", "a forest"),
                 "grass": ("grassland", "meadows"), "trees and grass": ("trees and grass", "woods and meadows")}


def _river_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    a, b, width = layout["river"]["from"], layout["river"]["to"], layout["river"]["width"]
    surroundings = pick(*_SURROUNDINGS[layout["surroundings"]])
    banks = "trees" if layout["riverside_trees"] else pick("grass", "narrow banks")
    captions = [
        f"a river runs from the {a} to the {b} between {surroundings}",
        f"a {width} river winding through {surroundings}",
        f"a {pick('curving', 'winding', 'bending')} river flows from the {a} to the {b}",
        f"{surroundings} on both sides of a {width} river",
        f"a {width} river with {banks} along its banks",
        f"a {pick('meandering', 'long')} river crossing the image from the {a} to the {b}",
        f"dark river water cutting through {surroundings}",
    ]
    if layout["bridge"]:
        captions.append(f"a road bridge crosses a river that flows from the {a} to the {b}")
    return captions


def _lake_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    cell, size = layout["lake"]["cell"], layout["lake"]["size"]
    surroundings = pick(*_SURROUNDINGS[layout["surroundings"]])
    captions = [
        f"a lake {_at(cell)} surrounded by {surroundings}",
        f"a {size} lake {_at(cell)}",
        f"an irregular lake with {surroundings} all around",
        f"{pick('calm', 'still', 'dark')} water of a lake {_at(cell)}",
        f"{surroundings} around a {size} lake {_at(cell)}",
        f"a {size} {pick('pond', 'lake')} of still water among {surroundings}",
        f"a lake seen from above with {surroundings} around it",
    ]
    if layout["sandy_shore"]:
        captions.append(f"a lake with a sandy shore {_at(cell)}")
    return captions


def _beach_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    side, land_side = layout["sea_side"], layout["land_side"]
    land = {"trees": "trees", "grass": "green grass", "buildings": "buildings"}[layout["land"]]
    a, b = layout["coast"]["from"], layout["coast"]["to"]
    captions = [
        f"a beach with the sea {_at(side)} and {land} {_at(land_side)}",
        f"a sandy beach between the sea {_at(side)} and {land}",
        f"waves wash onto a strip of sand with the sea {_at(side)}",
        f"a long sandy shoreline running from the {a} to the {b}",
        f"{pick('blue', 'turquoise', 'clear')} sea water {_at(side)} meets yellow sand",
        f"a coastline with a beach and {land} behind it",
        f"white waves breaking on a {pick('sandy', 'long', 'quiet')} beach",
    ]
    if layout["umbrellas"]:
        captions.append("colourful umbrellas on a sandy beach next to the sea")
    return captions


def _airport_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    a, b = layout["runway"]["from"], layout["runway"]["to"]
    terminal = layout["terminal"]
    runways = _count(layout["n_runways"], "runway")
    captions = [
        f"an airport with a runway from the {a} to the {b} and terminal buildings {_at(terminal)}",
        f"{runways} on grass with a terminal {_at(terminal)}",
        f"an {pick('airfield', 'airport')} with a grey runway running from the {a} to the {b}",
        f"an airport with terminal buildings and an apron {_at(terminal)}",
        f"a paved runway with white markings {pick('surrounded by grass', 'and a taxiway')}",
        f"an airport with {runways} and a taxiway seen from above",
    ]
    if layout["crosses_center"]:
        captions.append("a long runway across the center of an airport")
    if layout["arrangement"] == "parallel":
        captions.append("an airport with two parallel runways and a taxiway")
    elif layout["arrangement"] == "crossing" and layout["crossing"]:
        captions.append(f"two runways crossing near the {layout['crossing']}")
    if layout["n_planes"]:
        captions.append(f"{_count(layout['n_planes'], 'plane')} parked near the airport terminal {_at(terminal)}")
    return captions


def _parking_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    cars, side, fullness = _count(layout["n_cars"], "car"), layout["grass_side"], layout["fullness"]
    many = "many" if layout["n_cars"] > 20 else "a few"
    return [
        f"{cars} parked in rows",
        f"a parking lot with {cars} in {_count(layout['n_rows'], 'row')}",
        f"a {fullness} parking lot with a strip of grass and trees {_at(side)}",
        f"rows of parked cars on grey {pick('pavement', 'asphalt')}",
        f"{many} {pick('colourful', 'parked')} cars side by side in a {pick('large', 'big')} lot",
        f"a car park with a grass border {_at(side)}",
        f"a paved parking area that is {fullness}",
        f"parking spaces marked with white lines and {cars}",
    ]


def _industrial_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    buildings = _count(layout["n_buildings"], "large building")
    warehouses = _count(layout["n_buildings"], "warehouse")
    tanks, cell = _count(layout["n_tanks"], "storage tank"), layout["tanks"]
    captions = [
        f"an industrial area with {buildings} and {tanks}",
        f"{_count(layout['n_tanks'], 'round storage tank')} {_at(cell)} beside warehouses",
        f"{pick('large', 'big')} flat roofed factory buildings {_at(layout['buildings'])}",
        "an industrial zone with warehouses, storage tanks and paved yards",
        f"{pick('white', 'round', 'circular')} storage tanks grouped {_at(cell)}",
        f"{warehouses} on paved ground with tanks {_at(cell)}",
        "factories and circular tanks seen from above",
    ]
    if layout["road"]:
        captions.append(f"a road runs from the {layout['road']['from']} to the {layout['road']['to']} "
                        f"past factory buildings")
    return captions


def _desert_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    a, b = layout["dunes"]["from"], layout["dunes"]["to"]
    spacing = "closely spaced" if layout["dune_spacing"] == "dense" else "long"
    captions = [
        f"a sandy desert with dunes running from the {a} to the {b}",
        f"rippled sand dunes across an {pick('empty', 'arid', 'dry')} desert",
        f"an empty desert of {pick('yellow', 'orange', 'golden')} sand",
        f"{spacing} dune ridges stretching from the {a} to the {b}",
        "bare sand with no vegetation or buildings",
        f"wind blown sand forming {pick('parallel', 'curved', 'wavy')} dunes",
    ]
    if layout["rocks"]:
        captions.append(f"dry desert with rocky ground {_at(layout['rocks'])}")
    if layout["road"]:
        road = layout["road"]
        captions.append(f"a desert road crosses the sand from the {road['from']} to the {road['to']}")
    return captions


_CAPTION_WRITERS: dict[str, Callable[[dict, Callable[..., str]], list[str]]] = {
    "farmland": _farmland_captions, "residential": _residential_captions, "forest": _forest_captions,
    "river": _river_captions, "lake": _lake_captions, "beach": _beach_captions,
    "airport": _airport_captions, "parking": _parking_captions, "industrial": _industrial_captions,
    "desert": _desert_captions,
}
MIN_CAPTIONS_PER_SCENE = 6  # every layout yields at least this many distinct clean captions


def _caption_candidates(scene: str, layout: dict, rng: np.random.Generator) -> list[str]:
    def pick(*options: str) -> str:
        return options[int(rng.integers(len(options)))]

    captions = _CAPTION_WRITERS[scene](layout, pick)
    return list(dict.fromkeys(" ".join(caption.split()) for caption in captions))


def clean_captions(scene: str, layout: dict, n: int, rng: np.random.Generator) -> list[str]:
    """Write up to ``n`` distinct clean captions for a scene from its ground-truth layout.

    Args:
        scene: one of ``SCENES``.
        layout: the ``SceneSample.layout`` of an image of that scene.
        n: how many captions are wanted; fewer come back when the scene's templates give
            fewer distinct captions (every layout gives at least ``MIN_CAPTIONS_PER_SCENE``).
        rng: picks the templates, their order and word variants.

    Returns:
        Lowercase captions without a final period, each at most 30 words.

    Raises:
        ValueError: for an unknown scene or ``n < 1``.
    """
    _check_scenes([scene])
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    candidates = _caption_candidates(scene, layout, rng)
    order = rng.permutation(len(candidates))
    return [candidates[i] for i in order[:n]]


def _move_cells(caption: str, rng: np.random.Generator) -> str:
    """Move every grid cell named in ``caption`` to a cell the caption does not name.

    Cells are remapped consistently and never onto each other, so "from the top to the
    bottom" cannot turn into the equally true "from the bottom to the top".
    """
    named = list(dict.fromkeys(match.group(1) for match in _CELL_PATTERN.finditer(caption)))
    free = [cell for cell in CELLS if cell not in named]
    moved = dict(zip(named, (free[i] for i in rng.permutation(len(free))[:len(named)])))

    def replace(match: re.Match[str]) -> str:
        cell = moved[match.group(1)]
        return cell if match.group(0) == match.group(1) else _at(cell)

    return _CELL_PATTERN.sub(replace, caption)


def _noisy_caption(kind: str, scene: str, layout: dict, clean: str,
                   rng: np.random.Generator) -> tuple[str, str | None]:
    """A noisy replacement for ``clean``; returns it and the scene it was written for."""
    if kind == "other_scene":
        source_scene = str(rng.choice([other for other in SCENES if other != scene]))
        _, other_layout = _draw(source_scene, _OTHER_SCENE_SIZE, rng)
        return clean_captions(source_scene, other_layout, 1, rng)[0], source_scene
    if kind == "generic":
        return GENERIC_CAPTIONS[int(rng.integers(len(GENERIC_CAPTIONS)))], None
    if kind == "truncated":
        words = clean.split()
        keep = int(rng.integers(1, min(3, len(words) - 1) + 1))
        return " ".join(words[:keep]), None
    if kind == "wrong_layout":
        if not _CELL_PATTERN.search(clean):
            positional = [c for c in _caption_candidates(scene, layout, rng) if _CELL_PATTERN.search(c)]
            clean = positional[int(rng.integers(len(positional)))]
        return _move_cells(clean, rng), None
    raise ValueError(f"unknown noise kind {kind!r}; valid kinds: {', '.join(NOISE_KINDS)}")


# ---------------------------------------------------------------------------------------------
# Writing the dataset
# ---------------------------------------------------------------------------------------------


def _check_scenes(scenes: Sequence[str]) -> None:
    unknown = [scene for scene in scenes if scene not in SCENES]
    if unknown:
        raise ValueError(f"unknown scene(s) {', '.join(map(repr, unknown))}; valid scenes: {', '.join(SCENES)}")


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")


def _check_rate(name: str, rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {rate!r}")


def _check_noise_kinds(noise_kinds: Sequence[str] | None) -> tuple[str, ...]:
    if noise_kinds is None:
        return NOISE_KINDS
    if isinstance(noise_kinds, str):
        raise ValueError(f"noise_kinds must be a list of kinds, not the string {noise_kinds!r}")
    unknown = [kind for kind in noise_kinds if kind not in NOISE_KINDS]
    if unknown or not noise_kinds or len(set(noise_kinds)) != len(noise_kinds):
        raise ValueError(f"noise_kinds must list distinct kinds of {', '.join(NOISE_KINDS)} (at least one), "
                         f"got {list(noise_kinds)!r}")
    return tuple(noise_kinds)


def _check_arguments(n_images: int, size: int, noise_rate: float, seed: int, captions_per_image: int,
                     scenes: Sequence[str], noise_rate_by_scene: Mapping[str, float],
                     split_ratios: Sequence[float]) -> None:
    if isinstance(scenes, str):
        raise ValueError(f"scenes must be a list of scene names, not the string {scenes!r}")
    if not scenes:
        raise ValueError(f"scenes must name at least one scene; valid scenes: {', '.join(SCENES)}")
    _check_scenes(scenes)
    duplicates = sorted(scene for scene, count in Counter(scenes).items() if count > 1)
    if duplicates:
        raise ValueError(f"scenes lists {', '.join(duplicates)} more than once")
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < len(scenes):
        raise ValueError(f"n_images must be an integer of at least the number of scenes ({len(scenes)}), "
                         f"got {n_images!r}")
    _check_size(size)
    _check_rate("noise_rate", noise_rate)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(captions_per_image, bool) or not isinstance(captions_per_image, (int, np.integer)) \
            or captions_per_image < 1:
        raise ValueError(f"captions_per_image must be a positive integer, got {captions_per_image!r}")
    _check_scenes(list(noise_rate_by_scene))
    for scene, rate in noise_rate_by_scene.items():
        _check_rate(f"noise_rate_by_scene[{scene!r}]", rate)
    if len(split_ratios) != 3 or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 0
                                     for r in split_ratios):
        raise ValueError(f"split_ratios must be three non-negative numbers (train, val, test), got {split_ratios!r}")
    if abs(sum(split_ratios) - 1.0) > 1e-6:
        raise ValueError(f"split_ratios must sum to 1, got {tuple(split_ratios)} (sum {sum(split_ratios):g})")


def _split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of ``n`` items to the splits."""
    exact = [n * ratio for ratio in ratios]
    counts = [int(math.floor(value)) for value in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _assign_splits(image_scenes: Sequence[str], ratios: Sequence[float], seed: int) -> list[str]:
    """Stratified, seeded split per scene."""
    splits = [""] * len(image_scenes)
    for scene in dict.fromkeys(image_scenes):
        members = [i for i, s in enumerate(image_scenes) if s == scene]
        rng = np.random.default_rng([seed, _SPLIT_STREAM, SCENES.index(scene)])
        shuffled = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for split, count in zip(SPLITS, _split_counts(len(members), ratios)):
            for i in shuffled[start:start + count]:
                splits[i] = split
            start += count
    return splits


def _tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


def _dump_json(path: Path, data: Any, indent: int | None = None) -> None:
    separators = (",", ": ") if indent else (",", ":")
    path.write_text(json.dumps(data, sort_keys=True, indent=indent, separators=separators, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def _dump_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")


def _palette_json() -> list[dict[str, Any]]:
    return [{"index": index, "name": name, "color": "#{:02x}{:02x}{:02x}".format(*rgb)}
            for index, name, rgb in LAND_COVER]


_PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}
_MASK_PALETTE = [channel for _, _, rgb in LAND_COVER for channel in rgb]


def _save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, **_PNG_OPTIONS)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(mask)
    picture.putpalette(_MASK_PALETTE)
    picture.save(path, **_PNG_OPTIONS)


def _looks_like_synthrs(folder: Path) -> bool:
    return (folder / "synthrs.json").is_file() or (folder / f"dataset_{DATASET_NAME}.json").is_file()


def write_synthrs(
    out: str | Path,
    *,
    n_images: int = 400,
    size: int = 64,
    noise_rate: float = 0.3,
    seed: int = 0,
    captions_per_image: int = 5,
    scenes: Sequence[str] | None = None,
    noise_rate_by_scene: Mapping[str, float] | None = None,
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    noise_kinds: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """Generate SynthRS into ``out`` (Karpathy layout, see the module docstring).

    The dataset is built in a temporary sibling folder and then moved into place, replacing
    an existing ``out`` that holds an earlier SynthRS. Same arguments, byte-identical files.

    Args:
        out: output folder.
        n_images: number of images, spread round-robin over the scenes.
        size: image side in pixels (at least 16).
        noise_rate: probability that a caption is replaced by a noisy one.
        seed: random seed (non-negative integer).
        captions_per_image: captions wanted per image; fewer if a layout gives fewer distinct
            captions (never fewer than ``MIN_CAPTIONS_PER_SCENE``).
        scenes: scene classes to generate, in round-robin order; default all of ``SCENES``.
        noise_rate_by_scene: per-scene overrides of ``noise_rate``.
        split_ratios: train/val/test shares, stratified per scene.
        noise_kinds: the kinds a noisy caption is drawn from (uniformly); default all of
            ``NOISE_KINDS`` (same draws, hence the same files, as before this option existed).
        progress: show a tqdm progress bar.

    Returns:
        The summary also written to ``synthrs.json``: parameters and counts per scene, per
        split and of noisy captions per kind.

    Raises:
        ValueError: for invalid arguments, or when ``out`` exists and is not a SynthRS folder.
    """
    scenes = list(SCENES if scenes is None else scenes)
    noise_rate_by_scene = dict(noise_rate_by_scene or {})
    _check_arguments(n_images, size, noise_rate, seed, captions_per_image, scenes, noise_rate_by_scene,
                     split_ratios)
    kinds = _check_noise_kinds(noise_kinds)
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _looks_like_synthrs(out))):
        raise ValueError(f"{out} exists and is not a SynthRS folder; refusing to replace it")

    n_images, size, seed, captions_per_image = int(n_images), int(size), int(seed), int(captions_per_image)
    rates = {scene: float(noise_rate_by_scene.get(scene, noise_rate)) for scene in scenes}
    image_scenes = [scenes[index % len(scenes)] for index in range(n_images)]
    splits = _assign_splits(image_scenes, split_ratios, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        summary = _write_into(staging, image_scenes, splits, rates, size=size, seed=seed,
                              captions_per_image=captions_per_image, noise_kinds=kinds, progress=progress)
        summary["params"] = {
            "n_images": n_images, "size": size, "noise_rate": float(noise_rate), "seed": seed,
            "captions_per_image": captions_per_image, "scenes": scenes,
            "noise_rate_by_scene": {scene: float(rate) for scene, rate in sorted(noise_rate_by_scene.items())},
            "split_ratios": [float(ratio) for ratio in split_ratios],
            "noise_kinds": list(kinds),
        }
        _dump_json(staging / "synthrs.json", summary, indent=2)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _write_into(folder: Path, image_scenes: Sequence[str], splits: Sequence[str], rates: Mapping[str, float], *,
                size: int, seed: int, captions_per_image: int, noise_kinds: Sequence[str],
                progress: bool) -> dict[str, Any]:
    for sub in ("images", "masks", f"txtclasses_{DATASET_NAME}", "truth"):
        (folder / sub).mkdir(parents=True)
    scenes = list(dict.fromkeys(image_scenes))
    indices = range(len(image_scenes))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="SynthRS", unit="img")

    numbers: Counter[str] = Counter()
    records, noise_rows, layout_rows = [], [], []
    files_by_scene: dict[str, list[str]] = {scene: [] for scene in scenes}
    noisy_by_kind = Counter({kind: 0 for kind in NOISE_KINDS})
    noisy_by_scene = Counter({scene: 0 for scene in scenes})
    sentid = 0
    for index in indices:
        scene = image_scenes[index]
        numbers[scene] += 1
        filename = f"{scene}_{numbers[scene]:04d}.png"
        sample = render_scene(scene, size, np.random.default_rng([seed, _RENDER_STREAM, index]))
        _save_png(sample.image, folder / "images" / filename)
        _save_mask(sample.mask, folder / "masks" / filename)
        files_by_scene[scene].append(filename)
        layout_rows.append({"filename": filename, "scene": scene, "layout": sample.layout})

        clean = clean_captions(scene, sample.layout, captions_per_image,
                               np.random.default_rng([seed, _CAPTION_STREAM, index]))
        noise_rng = np.random.default_rng([seed, _NOISE_STREAM, index])
        is_noisy = noise_rng.random(len(clean)) < rates[scene]
        kinds = noise_rng.integers(len(noise_kinds), size=len(clean))
        sentences, captions = [], list(clean)
        for k, caption in enumerate(clean):
            kind, source_scene = None, None
            if is_noisy[k]:
                kind = noise_kinds[kinds[k]]
                for _ in range(20):  # a noisy caption differs from every caption of the image
                    candidate, source_scene = _noisy_caption(kind, scene, sample.layout, caption, noise_rng)
                    if candidate not in captions:
                        break
                captions[k] = candidate
                noisy_by_kind[kind] += 1
                noisy_by_scene[scene] += 1
            sentences.append({"raw": captions[k], "tokens": _tokens(captions[k]), "imgid": index, "sentid": sentid})
            noise_rows.append({"filename": filename, "sentid": sentid, "noisy": bool(is_noisy[k]), "kind": kind,
                               "clean": caption, "source_scene": source_scene})
            sentid += 1
        records.append({"filename": filename, "imgid": index, "split": splits[index], "sentences": sentences,
                        "sentids": [sentence["sentid"] for sentence in sentences]})

    _dump_json(folder / f"dataset_{DATASET_NAME}.json", {"dataset": DATASET_NAME, "images": records})
    for scene, filenames in files_by_scene.items():
        (folder / f"txtclasses_{DATASET_NAME}" / f"{scene}.txt").write_text("\n".join(filenames) + "\n",
                                                                             encoding="utf-8")
    _dump_json(folder / "palette.json", _palette_json(), indent=2)
    _dump_jsonl(folder / "truth" / "noise_labels.jsonl", noise_rows)
    _dump_jsonl(folder / "truth" / "layouts.jsonl", layout_rows)

    per_scene_split = {scene: {split: 0 for split in SPLITS} for scene in scenes}
    for scene, split in zip(image_scenes, splits):
        per_scene_split[scene][split] += 1
    n_noisy = sum(noisy_by_kind.values())
    return {
        "dataset": DATASET_NAME,
        "format_version": FORMAT_VERSION,
        "n_images": len(image_scenes),
        "n_captions": sentid,
        "n_noisy_captions": n_noisy,
        "noisy_share": round(n_noisy / sentid, 6) if sentid else 0.0,
        "images_per_scene": {scene: len(files) for scene, files in files_by_scene.items()},
        "images_per_split": {split: sum(1 for s in splits if s == split) for split in SPLITS},
        "images_per_scene_split": per_scene_split,
        "noisy_captions_per_kind": dict(noisy_by_kind),
        "noisy_captions_per_scene": dict(noisy_by_scene),
        "land_cover": [name for _, name, _ in LAND_COVER],
    }
