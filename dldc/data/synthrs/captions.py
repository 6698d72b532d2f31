"""SynthRS captions: clean captions written from a scene's layout facts, and caption noise.

Places are told with the layout words of :mod:`dldc.data.vocabulary` (the 3x3 grid, "on the
left", "at the top right"), the same words the mask descriptions use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from dldc.data.synthrs.scenes import SCENES, check_scenes, draw
from dldc.data.vocabulary import CELLS, at, count_words

NOISE_KINDS: tuple[str, ...] = ("other_scene", "generic", "truncated", "wrong_layout")

GENERIC_CAPTIONS: tuple[str, ...] = (
    "an aerial image",
    "a remote sensing image of an area",
    "a satellite view of the ground",
    "an image taken from above",
    "a top down view of a place",
    "an aerial photograph of a scene",
    "a picture of the earth from high above",
)

# Side of the throw-away scene rendered to caption an ``other_scene`` noisy caption.
OTHER_SCENE_SIZE = 32

# A grid cell, optionally with the preposition ``at`` puts before it ("on the left").
_CELL_PATTERN = re.compile(r"\b(?:(?:in|on|at) the )?(" + "|".join(sorted(CELLS, key=len, reverse=True)) + r")\b")


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``12, "car"`` -> ``"twelve cars"``, ``0`` -> ``"no cars"``, ``47`` -> ``"about fifty cars"``.

    Counts above twenty are rounded to tens: a caption reader cannot tell 47 cars from 50.
    """
    return count_words(n, plural or noun + "s", noun, exact_up_to=20)


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
        captions.append(f"a farmhouse {at(cell)} surrounded by {pick('fields', 'crop fields', 'farmland')}")
        if layout["road"]:
            captions.append(f"farm buildings {at(cell)} and a road from the {layout['road']['from']} "
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
        f"a residential area with a small park {at(park)}",
        f"a {pick('neighbourhood', 'residential area')} of {houses} and a green park {at(park)}",
        f"{pick('dense', 'quiet', 'tidy')} residential blocks with {trees}",
        f"rows of {pick('detached houses', 'family houses', 'houses')} with gardens seen from above",
        f"a suburb with streets, houses and a park {at(park)}",
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
        captions.append(f"a forest with a grassy clearing {at(cell)}")
        captions.append(f"{pick('thick', 'dense')} woodland with an opening {at(cell)}")
    if layout["track"]:
        a, b = layout["track"]["from"], layout["track"]["to"]
        captions.append(f"a dirt track winds through the forest from the {a} to the {b}")
        if layout["clearing"]:
            captions.append(f"a track crosses the forest and a clearing lies {at(layout['clearing'])}")
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
        f"a lake {at(cell)} surrounded by {surroundings}",
        f"a {size} lake {at(cell)}",
        f"an irregular lake with {surroundings} all around",
        f"{pick('calm', 'still', 'dark')} water of a lake {at(cell)}",
        f"{surroundings} around a {size} lake {at(cell)}",
        f"a {size} {pick('pond', 'lake')} of still water among {surroundings}",
        f"a lake seen from above with {surroundings} around it",
    ]
    if layout["sandy_shore"]:
        captions.append(f"a lake with a sandy shore {at(cell)}")
    return captions


def _beach_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    side, land_side = layout["sea_side"], layout["land_side"]
    land = {"trees": "trees", "grass": "green grass", "buildings": "buildings"}[layout["land"]]
    a, b = layout["coast"]["from"], layout["coast"]["to"]
    captions = [
        f"a beach with the sea {at(side)} and {land} {at(land_side)}",
        f"a sandy beach between the sea {at(side)} and {land}",
        f"waves wash onto a strip of sand with the sea {at(side)}",
        f"a long sandy shoreline running from the {a} to the {b}",
        f"{pick('blue', 'turquoise', 'clear')} sea water {at(side)} meets yellow sand",
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
        f"an airport with a runway from the {a} to the {b} and terminal buildings {at(terminal)}",
        f"{runways} on grass with a terminal {at(terminal)}",
        f"an {pick('airfield', 'airport')} with a grey runway running from the {a} to the {b}",
        f"an airport with terminal buildings and an apron {at(terminal)}",
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
        captions.append(f"{_count(layout['n_planes'], 'plane')} parked near the airport terminal {at(terminal)}")
    return captions


def _parking_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    cars, side, fullness = _count(layout["n_cars"], "car"), layout["grass_side"], layout["fullness"]
    many = "many" if layout["n_cars"] > 20 else "a few"
    return [
        f"{cars} parked in rows",
        f"a parking lot with {cars} in {_count(layout['n_rows'], 'row')}",
        f"a {fullness} parking lot with a strip of grass and trees {at(side)}",
        f"rows of parked cars on grey {pick('pavement', 'asphalt')}",
        f"{many} {pick('colourful', 'parked')} cars side by side in a {pick('large', 'big')} lot",
        f"a car park with a grass border {at(side)}",
        f"a paved parking area that is {fullness}",
        f"parking spaces marked with white lines and {cars}",
    ]


def _industrial_captions(layout: dict, pick: Callable[..., str]) -> list[str]:
    buildings = _count(layout["n_buildings"], "large building")
    warehouses = _count(layout["n_buildings"], "warehouse")
    tanks, cell = _count(layout["n_tanks"], "storage tank"), layout["tanks"]
    captions = [
        f"an industrial area with {buildings} and {tanks}",
        f"{_count(layout['n_tanks'], 'round storage tank')} {at(cell)} beside warehouses",
        f"{pick('large', 'big')} flat roofed factory buildings {at(layout['buildings'])}",
        "an industrial zone with warehouses, storage tanks and paved yards",
        f"{pick('white', 'round', 'circular')} storage tanks grouped {at(cell)}",
        f"{warehouses} on paved ground with tanks {at(cell)}",
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
        captions.append(f"dry desert with rocky ground {at(layout['rocks'])}")
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
    check_scenes([scene])
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
        return cell if match.group(0) == match.group(1) else at(cell)

    return _CELL_PATTERN.sub(replace, caption)


def noisy_caption(kind: str, scene: str, layout: dict, clean: str,
                   rng: np.random.Generator) -> tuple[str, str | None]:
    """A noisy replacement for ``clean``; returns it and the scene it was written for."""
    if kind == "other_scene":
        source_scene = str(rng.choice([other for other in SCENES if other != scene]))
        _, other_layout = draw(source_scene, OTHER_SCENE_SIZE, rng)
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
