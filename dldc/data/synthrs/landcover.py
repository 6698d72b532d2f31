"""SynthRS land cover: the classes (read from the shipped class table) and how each one looks.

The table of classes (mask value, name, legend colour) is ``dldc/data/classes/synthrs.json``, the
same table the EGL and the segmentation stage read masks with (:mod:`dldc.data.class_tables`), so
the generator's masks and the table cannot disagree. The realistic colours and textures below are
the generator's own (the legend colours only colour the mask PNGs' palette).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dldc.data.class_tables import load_class_table

_NAMES = ("bare_soil", "water", "tree", "grass", "crop", "building", "road", "sand", "pavement", "vehicle")


def _read_land_cover() -> tuple[tuple[int, str, tuple[int, int, int]], ...]:
    table = load_class_table("synthrs")
    land_cover = tuple((int(c.value), c.name, c.color) for c in table.classes)  # type: ignore[arg-type]
    if [(value, name) for value, name, _ in land_cover] != list(enumerate(_NAMES)):
        raise ValueError(f"the synthrs class table must list {list(_NAMES)} with values 0..{len(_NAMES) - 1}, "
                         f"got {[(value, name) for value, name, _ in land_cover]}")
    return land_cover


# (mask value, name, palette colour of the mask PNGs), from dldc/data/classes/synthrs.json.
LAND_COVER: tuple[tuple[int, str, tuple[int, int, int]], ...] = _read_land_cover()
BARE_SOIL, WATER, TREE, GRASS, CROP, BUILDING, ROAD, SAND, PAVEMENT, VEHICLE = range(len(LAND_COVER))


def _per_class(values: Mapping[str, Sequence[float] | float], dtype: type = np.float32) -> np.ndarray:
    """An array indexed by mask value from a mapping class name -> value (every class named once)."""
    if sorted(values) != sorted(_NAMES):
        raise ValueError(f"per-class values must name exactly {list(_NAMES)}, got {list(values)}")
    return np.array([values[name] for _, name, _ in LAND_COVER], dtype=dtype)


# Realistic base colours per land-cover class (the LAND_COVER colours are only a legend).
BASE_RGB = _per_class({
    "bare_soil": (138, 112, 84), "water": (36, 64, 88), "tree": (44, 76, 40), "grass": (104, 134, 72),
    "crop": (150, 148, 84), "building": (150, 146, 140), "road": (84, 84, 88), "sand": (220, 202, 160),
    "pavement": (128, 128, 128), "vehicle": (200, 200, 200),
})
# Texture strength per class: large-scale (fbm) and small-scale (crowns, grain) variation.
COARSE_AMPLITUDE = _per_class({"bare_soil": 0.16, "water": 0.06, "tree": 0.10, "grass": 0.14, "crop": 0.06,
                                "building": 0.03, "road": 0.04, "sand": 0.06, "pavement": 0.06, "vehicle": 0.0})
FINE_AMPLITUDE = _per_class({"bare_soil": 0.08, "water": 0.03, "tree": 0.32, "grass": 0.08, "crop": 0.04,
                              "building": 0.02, "road": 0.05, "sand": 0.04, "pavement": 0.05, "vehicle": 0.0})
CASTS_SHADOW = _per_class({name: name in ("tree", "building") for name in _NAMES}, bool)

CROP_TINTS = {
    "green": (0.62, 0.95, 0.72),
    "yellow": (1.28, 1.14, 1.0),
    "light green": (0.92, 1.1, 0.82),
    "brown": (0.98, 0.8, 0.72),
    "golden": (1.38, 1.2, 1.02),
}
ROOF_TINTS = {
    "red": (1.15, 0.6, 0.48),
    "brown": (0.86, 0.66, 0.54),
    "grey": (1.0, 1.0, 1.03),
    "dark grey": (0.6, 0.6, 0.65),
    "orange": (1.3, 0.82, 0.56),
}
INDUSTRIAL_ROOF_TINTS = ((1.25, 1.25, 1.27), (1.4, 1.4, 1.4), (0.86, 0.96, 1.18), (0.78, 0.8, 0.84))
CAR_TINTS = ((1.2, 1.2, 1.2), (0.2, 0.2, 0.22), (0.95, 0.22, 0.2), (0.3, 0.42, 0.9),
              (0.85, 0.86, 0.9), (0.55, 0.56, 0.6), (1.1, 0.95, 0.3))
UMBRELLA_TINTS = ((1.1, 0.35, 0.3), (0.4, 0.6, 1.1), (1.15, 1.05, 0.4), (1.15, 1.15, 1.15))
