"""SynthRS built-up scenes: residential, airport, parking and industrial.

Each painter draws land cover into a :class:`~dldc.data.synthrs.geometry.Canvas` and returns the
scene's layout facts (see :mod:`dldc.data.synthrs.scenes`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dldc.data.synthrs.geometry import (
    SIDES,
    Canvas,
    blob_distance,
    cell_centre,
    disk,
    distance_to_line,
    grid_angle,
    paint_straight_road,
    random_straight_line,
    rectangle,
    rotated,
    segment_ends,
    tree_spots,
    visible_count,
)
from dldc.data.synthrs.landcover import (
    BARE_SOIL,
    BUILDING,
    CAR_TINTS,
    GRASS,
    INDUSTRIAL_ROOF_TINTS,
    PAVEMENT,
    ROAD,
    ROOF_TINTS,
    TREE,
    VEHICLE,
)
from dldc.data.vocabulary import CELLS, cell_of, reading_order


def draw_residential(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    along, across = rotated(canvas, grid_angle(rng))
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
    roof_names = list(ROOF_TINTS)
    image_roofs = [roof_names[i] for i in rng.choice(len(roof_names), size=rng.integers(1, 3), replace=False)]
    roof_choice = rng.choice(len(image_roofs), size=table, p=None if len(image_roofs) == 1 else [0.7, 0.3])
    house &= present[index_u, index_v, row, slot_index]

    park_cell = str(rng.choice(CELLS))
    px, py = cell_centre(park_cell)
    park = blob_distance(canvas, rng, px + rng.uniform(-0.03, 0.03), py + rng.uniform(-0.03, 0.03),
                          rng.uniform(0.13, 0.17), 0.15) < 1
    leafy = rng.random() < 0.5

    canvas.paint(streets | cross_streets, ROAD)
    house &= ~park
    roof_tints = np.array([ROOF_TINTS[name] for name in image_roofs], np.float32)
    roof = roof_choice[index_u, index_v, row, slot_index]
    canvas.paint(house, BUILDING, roof_tints[roof[house]] * rng.uniform(0.9, 1.1, (int(house.sum()), 1)))
    ridge = np.where(far_row, far, near) / depth < 0.5
    gable_light = rng.random() < 0.5
    canvas.shade[house] = np.where(ridge[house] == gable_light, 1.12, 0.86)
    open_ground = (canvas.mask == GRASS) & ~park
    canvas.paint(park & ~streets & ~cross_streets, GRASS, (1.05, 1.08, 1.0))
    canvas.paint(park & ~streets & ~cross_streets & tree_spots(canvas, 0.0), TREE)
    canvas.paint(open_ground & tree_spots(canvas, 0.25 if leafy else 0.5), TREE)

    house_id = ((index_u * table[1] + index_v) * 2 + row) * n_slots + slot_index
    n_houses = visible_count(house_id[canvas.mask == BUILDING], 2)
    return {"n_houses": n_houses, "roof_colours": image_roofs, "park": park_cell,
            "street_grid": bool(cross_streets.any() and streets.any()), "trees": "many" if leafy else "few"}


def draw_airport(canvas: Canvas) -> dict[str, Any]:
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
        x, y = cell_centre(cell)
        return min(distance_to_line(x, y, rx, ry, ra) - rw / 2 for rx, ry, ra, _, rw in runways)

    terminal = max(CELLS, key=lambda cell: away_from_runways(cell) + rng.uniform(0, 0.12))
    tx, ty = cell_centre(terminal)
    side = 1.0 if -(tx - cx) * math.sin(angle) + (ty - cy) * math.cos(angle) > 0 else -1.0
    normal = np.array([-math.sin(angle), math.cos(angle)]) * side

    for rx, ry, ra, rl, rw in runways:
        canvas.paint(rectangle(canvas, rx, ry, rl, rw, ra), PAVEMENT, (0.85, 0.85, 0.87))
    # taxiway parallel to the first runway, on the terminal side, with two links
    offset = width / 2 + 0.06
    taxi_x, taxi_y = cx + normal[0] * offset, cy + normal[1] * offset
    taxi_width = canvas.at_least(0.022, 1.2)
    canvas.paint(rectangle(canvas, taxi_x, taxi_y, length * 0.85, taxi_width, angle), PAVEMENT)
    for t in rng.uniform(-0.35, 0.35, 2) * min(length, 1.0):
        lx, ly = cx + normal[0] * offset / 2 + t * math.cos(angle), cy + normal[1] * offset / 2 + t * math.sin(angle)
        canvas.paint(rectangle(canvas, lx, ly, taxi_width, offset, angle), PAVEMENT)
    for rx, ry, ra, rl, _ in runways:  # dashed white centre lines
        along, across = rotated(canvas, ra, rx, ry)
        centre_line = ((np.abs(across) < canvas.at_least(0.004, 0.5)) & ((along * 9) % 1 < 0.5)
                       & (np.abs(along) < rl / 2 - 0.03))
        canvas.shade[centre_line & (canvas.mask == PAVEMENT)] = 1.7

    apron_x, apron_y = tx + rng.uniform(-0.03, 0.03), ty + rng.uniform(-0.03, 0.03)
    canvas.paint(rectangle(canvas, apron_x, apron_y, 0.3, 0.2, angle), PAVEMENT, (1.08, 1.08, 1.08))
    n_buildings = int(rng.integers(1, 3))
    for index in range(n_buildings):
        shift_along = (index - (n_buildings - 1) / 2) * 0.15
        bx = apron_x + normal[0] * 0.055 + shift_along * math.cos(angle)
        by = apron_y + normal[1] * 0.055 + shift_along * math.sin(angle)
        canvas.paint(rectangle(canvas, bx, by, 0.24 / n_buildings, 0.06, angle), BUILDING, (1.2, 1.2, 1.25))
    n_planes = int(rng.integers(0, 4))
    for index in range(n_planes):
        shift_along = (index - (n_planes - 1) / 2) * 0.08
        px = apron_x - normal[0] * 0.04 + shift_along * math.cos(angle)
        py = apron_y - normal[1] * 0.04 + shift_along * math.sin(angle)
        fuselage = rectangle(canvas, px, py, canvas.at_least(0.012, 1.0), 0.065, angle)
        wings = rectangle(canvas, px, py, 0.055, canvas.at_least(0.012, 1.0), angle)
        canvas.paint(fuselage | wings, VEHICLE, (1.25, 1.25, 1.25))

    (x0, y0), (x1, y1) = segment_ends(cx, cy, angle, length)
    start, end = reading_order(cell_of(x0, y0), cell_of(x1, y1))
    layout: dict[str, Any] = {
        "n_runways": n_runways, "arrangement": arrangement, "runway": {"from": start, "to": end},
        "crosses_center": bool(spanning and distance_to_line(0.5, 0.5, cx, cy, angle) < 0.1),
        "terminal": terminal, "n_planes": n_planes, "crossing": None,
    }
    if arrangement == "crossing":
        (ax, ay, aa, _, _), (bx, by, ba, _, _) = runways
        denominator = math.sin(ba - aa)
        t = ((bx - ax) * math.sin(ba) - (by - ay) * math.cos(ba)) / denominator
        ix, iy = ax + t * math.cos(aa), ay + t * math.sin(aa)
        if 0 <= ix <= 1 and 0 <= iy <= 1:
            layout["crossing"] = cell_of(ix, iy)
    return layout


def draw_parking(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    canvas.tint[:] = np.float32(rng.uniform(0.85, 1.1))
    angle = grid_angle(rng, 0.8)
    along, across = rotated(canvas, angle)
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
    colour = rng.choice(len(CAR_TINTS), size=table, p=[0.25, 0.2, 0.12, 0.1, 0.18, 0.1, 0.05])
    row_index, stall_clip = np.clip(row, 0, 79), np.clip(stall_index, 0, 79)
    car_gap = stall_width * 0.14
    car = (in_stall_row & occupied[row_index, stall_clip] & (in_stall > car_gap) & (in_stall < stall_width - car_gap)
           & (depth_in_stall > 0.12 * stall_depth) & (depth_in_stall < 0.9 * stall_depth))
    lines = in_stall_row & (in_stall < canvas.at_least(0.004, 0.6)) & ~car
    canvas.shade[lines] = 1.45
    car_tints = np.array(CAR_TINTS, np.float32)
    canvas.paint(car, VEHICLE, car_tints[colour[row_index, stall_clip][car]])
    canvas.shade[car] = np.where(depth_in_stall[car] < 0.5 * stall_depth, 1.05, 0.9)

    grass_side = str(rng.choice(SIDES))
    depth = {"left": canvas.x, "right": 1 - canvas.x, "top": canvas.y, "bottom": 1 - canvas.y}[grass_side]
    strip_width = rng.uniform(0.1, 0.18)
    strip = depth < strip_width
    canvas.paint(strip, GRASS)
    canvas.paint(strip & (depth > 0.02) & (depth < strip_width - 0.02) & tree_spots(canvas, 0.2, 18), TREE)
    car_id = row * 1000 + stall_index
    visible = canvas.mask == VEHICLE
    n_cars = visible_count(car_id[visible], 2)
    n_rows = visible_count(row[visible], 2)
    fullness = "full" if occupancy > 0.8 else "half empty" if occupancy > 0.55 else "nearly empty"
    return {"n_cars": n_cars, "n_rows": n_rows, "fullness": fullness, "grass_side": grass_side}


def draw_industrial(canvas: Canvas) -> dict[str, Any]:
    rng = canvas.rng
    canvas.tint[:] = np.float32(rng.uniform(0.9, 1.15))
    if rng.random() < 0.6:
        canvas.paint(canvas.noise(3, 2) > 0.25, BARE_SOIL, (1.05, 1.0, 0.95))
    occupied = np.zeros(canvas.mask.shape, bool)
    road = None
    if rng.random() < 0.6:
        line = random_straight_line(rng)
        road = paint_straight_road(canvas, line, rng.uniform(0.035, 0.05))
        occupied |= canvas.mask == ROAD

    tank_cell = str(rng.choice(CELLS))
    rows, columns = int(rng.integers(1, 4)), int(rng.integers(2, 4))
    radius = rng.uniform(0.035, 0.055)
    spacing = 2 * radius + rng.uniform(0.012, 0.025)
    cx, cy = cell_centre(tank_cell)
    cx = float(np.clip(cx, (columns - 1) * spacing / 2 + radius, 1 - (columns - 1) * spacing / 2 - radius))
    cy = float(np.clip(cy, (rows - 1) * spacing / 2 + radius, 1 - (rows - 1) * spacing / 2 - radius))
    light = rng.normal(size=2)
    light /= np.linalg.norm(light)
    tank_tint = np.float32((1.45, 1.45, 1.42)) * rng.uniform(0.85, 1.0)
    tank_ids = np.zeros(canvas.mask.shape, np.int64)
    for r in range(rows):
        for c in range(columns):
            x, y = cx + (c - (columns - 1) / 2) * spacing, cy + (r - (rows - 1) / 2) * spacing
            occupied |= disk(canvas, x, y, radius + 0.03)
            tank = disk(canvas, x, y, radius)
            canvas.paint(tank, BUILDING, tank_tint)
            dx, dy = (canvas.x[tank] - x) / radius, (canvas.y[tank] - y) / radius
            lit = 1.0 - 0.22 * (dx * light[0] + dy * light[1])  # a dome lit from one side
            canvas.shade[tank] = lit * np.where(dx**2 + dy**2 > 0.7, 0.85, 1.0)  # with a darker rim
            tank_ids[tank] = r * columns + c + 1
    n_tanks = visible_count(tank_ids[(tank_ids > 0) & (canvas.mask == BUILDING)], 2)

    angle = grid_angle(rng, 0.8)
    target = int(rng.integers(1, 5))
    buildings: list[tuple[float, float, float]] = []
    for _ in range(40):
        if len(buildings) == target:
            break
        length, width = rng.uniform(0.18, 0.45), rng.uniform(0.12, 0.26)
        x, y = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
        footprint = rectangle(canvas, x, y, length + 0.05, width + 0.05, angle)
        if (footprint & occupied).any():
            continue
        occupied |= footprint
        building = rectangle(canvas, x, y, length, width, angle)
        canvas.paint(building, BUILDING, INDUSTRIAL_ROOF_TINTS[rng.integers(len(INDUSTRIAL_ROOF_TINTS))])
        along, _ = rotated(canvas, angle, x, y)
        canvas.shade[building] = 1.0 + 0.07 * np.sin(2 * np.pi * 22 * along[building])
        buildings.append((x, y, length * width))
    if not buildings:  # always at least one warehouse, even in a crowded image
        x, y = 1 - cx, 1 - cy
        building = rectangle(canvas, x, y, 0.22, 0.14, angle)
        canvas.paint(building, BUILDING, INDUSTRIAL_ROOF_TINTS[0])
        buildings.append((x, y, 0.22 * 0.14))
    largest = max(buildings, key=lambda b: b[2])
    return {"n_buildings": len(buildings), "n_tanks": n_tanks, "tanks": tank_cell,
            "buildings": cell_of(largest[0], largest[1]), "road": road}
