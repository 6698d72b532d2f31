"""SynthRS scenes: the scene classes, and rendering one scene (land cover, then colour).

:func:`render_scene` draws the land cover of one scene of ``SCENES`` with its painter
(:mod:`~dldc.data.synthrs.landscapes`, :mod:`~dldc.data.synthrs.built_up`), which also returns the
scene's layout facts the captions are written from, then colours it (base colours × tint × shade
× texture, plus shadows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dldc.data.synthrs.built_up import draw_airport, draw_industrial, draw_parking, draw_residential
from dldc.data.synthrs.geometry import Canvas
from dldc.data.synthrs.landcover import (
    CASTS_SHADOW,
    COARSE_AMPLITUDE,
    CROP,
    FINE_AMPLITUDE,
    GRASS,
    LAND_COVER,
    PAVEMENT,
    SAND,
    TREE,
)
from dldc.data.synthrs.landscapes import draw_beach, draw_desert, draw_farmland, draw_forest, draw_lake, draw_river

SCENES: tuple[str, ...] = (
    "farmland", "residential", "forest", "river", "lake",
    "beach", "airport", "parking", "industrial", "desert",
)
MIN_SIZE = 16


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


def check_scenes(scenes: Sequence[str]) -> None:
    unknown = [scene for scene in scenes if scene not in SCENES]
    if unknown:
        raise ValueError(f"unknown scene(s) {', '.join(map(repr, unknown))}; valid scenes: {', '.join(SCENES)}")


def check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")


_PAINTERS: dict[str, Callable[[Canvas], dict[str, Any]]] = {
    "farmland": draw_farmland, "residential": draw_residential, "forest": draw_forest,
    "river": draw_river, "lake": draw_lake, "beach": draw_beach, "airport": draw_airport,
    "parking": draw_parking, "industrial": draw_industrial, "desert": draw_desert,
}
_BACKGROUND = {"farmland": CROP, "residential": GRASS, "forest": TREE, "river": GRASS, "lake": GRASS,
               "beach": SAND, "airport": GRASS, "parking": PAVEMENT, "industrial": PAVEMENT, "desert": SAND}


def _colourise(canvas: Canvas) -> np.ndarray:
    """Turn the mask into an RGB image: base colours x tint x shade x texture, plus shadows."""
    rng, size, mask = canvas.rng, canvas.size, canvas.mask
    n_classes = len(LAND_COVER)
    colours = canvas.colours * rng.uniform(0.92, 1.08, (n_classes, 1)) * rng.uniform(0.96, 1.04, (n_classes, 3))
    coarse = canvas.noise(3, 3).astype(np.float32)
    fine = canvas.noise(24).astype(np.float32)
    texture = 1.0 + COARSE_AMPLITUDE[mask] * coarse + FINE_AMPLITUDE[mask] * fine
    crowns = canvas.noise(int(rng.integers(12, 18))).astype(np.float32)
    crown_shading = np.where(crowns < -0.55, np.float32(0.6), 0.9 + 0.25 * crowns)  # round crowns, dark gaps
    texture = np.where(mask == TREE, texture * crown_shading, texture)

    tall = CASTS_SHADOW[mask]
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


def draw(scene: str, size: int, rng: np.random.Generator) -> tuple[Canvas, dict[str, Any]]:
    """Draw the land cover of a scene; returns the canvas and the scene's layout facts."""
    canvas = Canvas(size, rng, _BACKGROUND[scene])
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
    check_scenes([scene])
    check_size(size)
    canvas, layout = draw(scene, size, rng)
    return SceneSample(image=_colourise(canvas), mask=canvas.mask, layout=layout)
