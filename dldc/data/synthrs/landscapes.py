"""SynthRS open-land scenes: farmland, forest, river, lake, beach and desert.

Each painter draws land cover into a :class:`~dldc.data.synthrs.geometry.Canvas` and returns the
scene's layout facts (see :mod:`dldc.data.synthrs.scenes`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from dldc.data.synthrs.geometry import (
    SIDES,
    Canvas,
    blob_distance,
    cell_centre,
    curve_distance,
    curve_points,
    disk,
    distance_to_cuts,
    distance_to_line,
    grid_angle,
    paint_straight_road,
    random_crossing,
    random_cuts,
    random_straight_line,
    rectangle,
    rotated,
    tree_spots,
    visible_count,
)
from dldc.data.synthrs.landcover import (
    BARE_SOIL,
    BUILDING,
    CROP,
    CROP_TINTS,
    GRASS,
    ROAD,
    ROOF_TINTS,
    SAND,
    TREE,
    UMBRELLA_TINTS,
    WATER,
)
from dldc.data.vocabulary import CELLS


def paint_parcels(canvas: Canvas, margins: str) -> dict[str, Any]:
    """Patchwork of crop / fallow / ploughed parcels with crop rows and field margins."""
    rng = canvas.rng
    angle = grid_angle(rng)
    along, across = rotated(canvas, angle)
    column_cuts = random_cuts(rng, 0.18, 0.42)
    column = np.searchsorted(column_cuts, along)
    n_columns = len(column_cuts) + 1
    max_rows = 16
    row = np.zeros(column.shape, np.int64)
    edge_distance = distance_to_cuts(along, column_cuts)
    for index in range(n_columns):
        in_column = column == index
        row_cuts = random_cuts(rng, 0.14, 0.38)[:max_rows - 1]
        row[in_column] = np.searchsorted(row_cuts, across[in_column])
        edge_distance[in_column] = np.minimum(edge_distance[in_column],
                                              distance_to_cuts(across[in_column], row_cuts))

    table = (n_columns, max_rows)
    kind = rng.choice([CROP, GRASS, BARE_SOIL], size=table, p=[0.72, 0.12, 0.16])
    tint_names = list(CROP_TINTS)
    image_tints = rng.choice(len(tint_names), size=rng.integers(2, 4), replace=False)
    tint_index = rng.choice(image_tints, size=table)
    rows_across = rng.random(table) < 0.5
    row_frequency = rng.uniform(11, 20, table)
    row_phase = rng.uniform(0, 2 * np.pi, table)
    brightness = rng.uniform(0.9, 1.1, table)

    parcel_kind = kind[column, row]
    canvas.mask[:] = parcel_kind
    tints = np.array([CROP_TINTS[name] for name in tint_names], np.float32)
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
    n_fields = visible_count(parcel_id[field_pixels], min_pixels)
    crop_here = (parcel_kind == CROP) & field_pixels
    colour_pixels = Counter(tint_index[column, row][crop_here].tolist())
    colours = [tint_names[i] for i, count in colour_pixels.most_common() if count >= min_pixels]
    return {"n_fields": n_fields, "crop_colours": colours[:3], "margins": margins}


def _paint_farmhouse(canvas: Canvas, cell: str) -> None:
    rng = canvas.rng
    cx, cy = cell_centre(cell)
    cx, cy = cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04)
    angle = grid_angle(rng, 0.7)
    canvas.paint(rectangle(canvas, cx, cy, 0.2, 0.15, angle), BARE_SOIL, (1.1, 1.05, 1.0))
    tints = list(ROOF_TINTS.values())
    for offset_along, offset_across, length, width in ((-0.04, -0.02, 0.07, 0.05), (0.05, 0.02, 0.09, 0.055)):
        bx = cx + offset_along * math.cos(angle) - offset_across * math.sin(angle)
        by = cy + offset_along * math.sin(angle) + offset_across * math.cos(angle)
        canvas.paint(rectangle(canvas, bx, by, length, width, angle), BUILDING, tints[rng.integers(len(tints))])
    for _ in range(int(rng.integers(3, 7))):
        tx, ty = cx + rng.uniform(-0.13, 0.13), cy + rng.uniform(-0.11, 0.11)
        crown = disk(canvas, tx, ty, canvas.at_least(rng.uniform(0.018, 0.03), 1.0)) & (canvas.mask != BUILDING)
        canvas.paint(crown, TREE)


def draw_farmland(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    layout: dict[str, Any] = paint_parcels(canvas, str(rng.choice(["hedges", "grass", "tracks"], p=[0.35, 0.4, 0.25])))
    has_road = rng.random() < 0.6
    has_farmhouse = rng.random() < 0.5 or not has_road
    layout["road"] = None
    layout["farmhouse"] = None
    line = random_straight_line(rng)
    if has_farmhouse:
        away = [c for c in CELLS if distance_to_line(*cell_centre(c), *line) > 0.15] if has_road else list(CELLS)
        layout["farmhouse"] = str(rng.choice(away or list(CELLS)))
        _paint_farmhouse(canvas, layout["farmhouse"])
    if has_road:
        paved = rng.random() < 0.5
        road = paint_straight_road(canvas, line, rng.uniform(0.03, 0.045),
                                    ROAD if paved else BARE_SOIL, None if paved else (1.2, 1.12, 1.05))
        layout["road"] = {**road, "paved": bool(paved)}
    return layout


def draw_forest(canvas: Canvas) -> dict[str, Any]:
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
        entry, exit_, entry_cell, exit_cell = random_crossing(rng)
        points = curve_points(rng, entry, exit_, rng.uniform(0.02, 0.07))
        half = canvas.at_least(rng.uniform(0.012, 0.018), 0.7)
        track = curve_distance(canvas, points, np.full(len(points), half)) < 0
        canvas.paint(track, BARE_SOIL, (1.1, 1.05, 1.0))
        layout["track"] = {"from": entry_cell, "to": exit_cell}
    if has_clearing:
        cell = str(rng.choice(CELLS))
        cx, cy = cell_centre(cell)
        clearing = blob_distance(canvas, rng, cx + rng.uniform(-0.04, 0.04), cy + rng.uniform(-0.04, 0.04),
                                  rng.uniform(0.1, 0.17)) < 1
        canvas.paint(clearing & (canvas.mask == TREE), GRASS, (1.1, 1.1, 0.95))
        canvas.paint(clearing & tree_spots(canvas, 0.55), TREE)
        layout["clearing"] = cell
    return layout


def paint_surroundings(canvas: Canvas, kind: str) -> None:
    """Natural background: ``fields``, ``trees``, ``grass`` or ``trees and grass``."""
    if kind == "fields":
        paint_parcels(canvas, str(canvas.rng.choice(["hedges", "grass"])))
    elif kind == "trees":
        canvas.paint(np.ones_like(canvas.mask, bool), TREE)
    elif kind == "grass":
        canvas.paint(np.ones_like(canvas.mask, bool), GRASS)
        canvas.paint(tree_spots(canvas, 0.45), TREE)
    else:
        canvas.paint(np.ones_like(canvas.mask, bool), GRASS)
        canvas.paint(canvas.noise(3, 2) > 0, TREE)
        canvas.paint(tree_spots(canvas, 0.5), TREE)


def draw_river(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    surroundings = str(rng.choice(["fields", "trees", "grass"], p=[0.45, 0.25, 0.3]))
    paint_surroundings(canvas, surroundings)
    entry, exit_, entry_cell, exit_cell = random_crossing(rng)
    points = curve_points(rng, entry, exit_, rng.uniform(0.04, 0.12))
    half_width = rng.uniform(0.035, 0.08)
    half_widths = half_width * (1 + 0.2 * np.sin(np.linspace(0, rng.uniform(3, 9), len(points)) + rng.uniform(0, 6)))
    distance = curve_distance(canvas, points, np.maximum(half_widths, 0.8 / canvas.size))
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
        layout["bridge"] = paint_straight_road(canvas, (points[k][0], points[k][1], angle), rng.uniform(0.025, 0.04))
    return layout


def draw_lake(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    surroundings = str(rng.choice(["trees", "grass", "trees and grass"], p=[0.35, 0.3, 0.35]))
    paint_surroundings(canvas, surroundings)
    cell = str(rng.choice(CELLS))
    cx, cy = cell_centre(cell)
    radius = rng.uniform(0.17, 0.26) if cell == "center" else rng.uniform(0.14, 0.22)
    distance = blob_distance(canvas, rng, cx + rng.uniform(-0.03, 0.03), cy + rng.uniform(-0.03, 0.03), radius)
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


def draw_beach(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    sea_side = str(rng.choice(SIDES))
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
        canvas.paint(tree_spots(canvas, 0.35 if land == "grass" else 0.6), TREE)
    if land == "buildings":
        road_start = sand_end + 0.015
        road_width = canvas.at_least(0.035, 1.5)
        canvas.paint((depth >= road_start) & (depth < road_start + road_width), ROAD)
        pitch = rng.uniform(0.08, 0.12)
        position = (along - rng.uniform(0, pitch)) / pitch
        slot = np.floor(position)
        in_slot = position - slot < rng.uniform(0.55, 0.75)
        rows_start = road_start + road_width + 0.02
        roof_tints = np.array(list(ROOF_TINTS.values()), np.float32)
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
            spot = disk(canvas, x, y, canvas.at_least(0.012, 0.8)) & (canvas.mask == SAND)
            canvas.tint[spot] = UMBRELLA_TINTS[rng.integers(len(UMBRELLA_TINTS))]
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


_DUNE_DIRECTIONS = (  # crest direction (degrees, y down) -> cells it runs between
    (0.0, ("left", "right")),
    (45.0, ("top left", "bottom right")),
    (90.0, ("top", "bottom")),
    (135.0, ("top right", "bottom left")),
)


def draw_desert(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    canvas.colours[SAND] = np.float32((212, 172, 116)) * rng.uniform(0.92, 1.08, 3)
    degrees, (start, end) = _DUNE_DIRECTIONS[rng.integers(len(_DUNE_DIRECTIONS))]
    angle = math.radians(degrees + rng.normal(0, 5))
    _, across = rotated(canvas, angle)
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
        cx, cy = cell_centre(cell)
        rocks = blob_distance(canvas, rng, cx, cy, rng.uniform(0.08, 0.14), 0.4) < 1
        canvas.paint(rocks, BARE_SOIL, (0.85, 0.75, 0.7))
        canvas.shade[rocks] = 1 + 0.15 * canvas.noise(20)[rocks]
        layout["rocks"] = cell
    if rng.random() < 0.5:
        layout["road"] = paint_straight_road(canvas, random_straight_line(rng), rng.uniform(0.025, 0.04))
    return layout
