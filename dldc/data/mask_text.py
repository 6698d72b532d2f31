"""Mask → text: deterministic layout facts of a segmentation mask, and their description.

RemoteCLIP turned segmentation labels into captions with rules; this is the same idea. The EGL's
mask2text captioner (:mod:`dldc.egl.mask2text`) describes each image's mask with it, and the
segmentation stage writes its layout prompts with it (:mod:`dldc.segment.synthetic`). Masks are
read with a class table (:mod:`dldc.data.class_tables`); places and counts are told with the
layout words of :mod:`dldc.data.vocabulary`.

Facts (:func:`describe_mask`), on the mask shrunk (nearest neighbour) to at most 256 px a side
    * per class: share of the labelled pixels, share of each cell of a 3×3 grid (top left … bottom
      right), the cell holding most of it, its connected regions (8-connected, tiny specks
      ignored) and the cell of the largest one; for *things* (buildings, vehicles) the count of
      instances, where a region up to 4× the median region size counts as that many touching
      instances (a semantic mask merges a row of touching houses into one region);
    * a *crossing*: the largest component meets the image border in exactly two separate runs
      → it runs from the cell of one to the cell of the other ("from the top to the bottom");
    * *surrounded by*: the class covering most of the ring of pixels around a compact region;
    * a relation between the two most salient regions (left of / right of / above / below).

Text (:func:`render_description`), variant ``full`` or ``brief`` (the loop's "alternate prompt")::

    a lake scene with water at the top left, surrounded by trees. land cover: trees 71%, water 18%
    and grass 11%. water lies above grass.

Example:
    >>> import numpy as np
    >>> from dldc.data.class_tables import load_class_table
    >>> table = load_class_table("synthrs")
    >>> mask = np.full((30, 30), 2, np.uint8)   # trees everywhere
    >>> mask[2:9, 2:9] = 1                       # a pond at the top left
    >>> render_description(describe_mask(mask, table, scene="lake"), "brief")
    'a lake scene with water at the top left, surrounded by trees.'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dldc.data.class_tables import ClassTable
from dldc.data.vocabulary import CELLS, at, cell_of, count_words, reading_order, scene_words

__all__ = [
    "FORMAT_VERSION",
    "VARIANTS",
    "ClassFacts",
    "MaskFacts",
    "describe_mask",
    "label_components",
    "label_regions",
    "render_description",
]

VARIANTS = ("full", "brief", "cover", "places", "counts")
FORMAT_VERSION = 2  # bump when the facts or the text change: cached generations are then redone
MIN_SHARE = 0.02  # classes below this share of the image are not mentioned
BACKGROUND_SHARE = 0.4  # a class this large is the background: coverage, not a located feature
MAX_MERGED = 4  # touching things counted apart: at most this many per region (see describe_mask)


@dataclass
class ClassFacts:
    """What one class does in the image (see the module docstring)."""

    index: int
    name: str
    words: str
    thing: bool
    singular: str | None
    plural: bool
    share: float
    cell_shares: list[float]
    main_cell: str
    components: int
    largest_share: float
    largest_cell: str
    largest_centre: tuple[float, float]
    crossing: tuple[str, str] | None = None
    border_runs: int = 0
    surrounded_by: str | None = None


@dataclass
class MaskFacts:
    """The layout facts of one mask."""

    scene: str
    height: int
    width: int
    ignored_share: float
    classes: list[ClassFacts] = field(default_factory=list)

    def by_name(self, name: str) -> ClassFacts | None:
        """The facts of class ``name``, if it is in the image."""
        return next((c for c in self.classes if c.name == name), None)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected regions of equal value (values < 0 are background), in one pass for all classes.

    Row runs of one value are joined with the touching runs of the same value in the row above
    (union-find); no scipy needed.

    Returns:
        ``(labels, value_of)``: ``labels`` is 0 on background and 1..R on regions; ``value_of[r]``
        is region ``r``'s value (``value_of[0]`` is -1).

    Example:
        >>> labels, value_of = label_regions(np.array([[1, 1, 2], [2, 1, 2], [2, -1, -1]]))
        >>> int(labels.max()), value_of.tolist()
        (3, [-1, 1, 2, 2])
    """
    mask = np.asarray(mask)
    height, width = mask.shape
    labels = np.zeros((height, width), np.int64)
    parent, value_of = [0], [-1]

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    previous: list[tuple[int, int, int, int]] = []  # (start, end, value, label) of the row above
    for y in range(mask.shape[0]):
        row = mask[y]
        cuts = np.flatnonzero(np.diff(row)) + 1
        starts = np.concatenate(([0], cuts)).tolist()
        ends = np.concatenate((cuts, [width])).tolist()
        current, k = [], 0
        for start, end in zip(starts, ends):
            value = int(row[start])
            if value < 0:
                continue
            while k < len(previous) and previous[k][1] < start:  # runs that end before this one's reach
                k += 1
            label, i = 0, k
            while i < len(previous) and previous[i][0] <= end:  # touching, diagonals included
                if previous[i][2] == value:
                    root = find(previous[i][3])
                    if label == 0:
                        label = root
                    elif root != label:
                        parent[root] = label
                i += 1
            if label == 0:
                label = len(parent)
                parent.append(label)
                value_of.append(value)
            labels[y, start:end] = label
            current.append((start, end, value, label))
        previous = current
    roots = np.array([find(i) for i in range(len(parent))])
    unique, compact = np.unique(roots, return_inverse=True)
    return compact[labels], np.asarray(value_of)[unique]


def label_components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean image.

    Returns:
        ``(labels, count)``: ``labels`` is 0 outside, 1..count inside.

    Example:
        >>> grid = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]], bool)
        >>> label_components(grid)[1]
        3
    """
    labels, _ = label_regions(np.where(binary, 1, -1))
    return labels, int(labels.max())


def _perimeter(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of the image border, clockwise from the top left corner."""
    ys = np.concatenate([np.zeros(width), np.arange(1, height), np.full(width - 1, height - 1),
                         np.arange(height - 2, 0, -1)]).astype(np.int64)  # fmt: skip
    xs = np.concatenate([np.arange(width), np.full(height - 1, width - 1), np.arange(width - 2, -1, -1),
                         np.zeros(height - 2)]).astype(np.int64)  # fmt: skip
    return ys, xs


def _border_runs(region: np.ndarray) -> list[tuple[float, float]]:
    """Where a region meets the image border: the centre (x, y in [0, 1]) of each contiguous run."""
    height, width = region.shape
    ys, xs = _perimeter(height, width)
    on = region[ys, xs]
    if not on.any():
        return []
    if on.all():
        return [(0.5, 0.5)]
    shift = int(np.flatnonzero(~on)[0])  # start the walk outside the region so no run wraps around
    on, ys, xs = np.roll(on, -shift), np.roll(ys, -shift), np.roll(xs, -shift)
    edges = np.diff(np.concatenate(([0], on.astype(np.int8), [0])))
    centres = []
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        middle = (start + end - 1) // 2
        centres.append(((xs[middle] + 0.5) / width, (ys[middle] + 0.5) / height))
    return centres


def describe_mask(
    mask: np.ndarray, table: ClassTable, scene: str = "unknown", min_share: float = MIN_SHARE
) -> MaskFacts:
    """Layout facts of a decoded mask (class positions, ``-1`` ignored).

    Args:
        mask: ``(H, W)`` integer array of positions in ``table.classes``, ``-1`` for ignored
            pixels (what :meth:`ClassTable.decode` returns).
        table: the class table.
        scene: the image's scene class (``unknown`` when the dataset has none).
        min_share: classes below this share of the labelled pixels are left out.

    Raises:
        ValueError: the mask is not 2-D or has no labelled pixel.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be a 2-D array of classes, got shape {mask.shape}")
    height, width = mask.shape
    labelled = mask >= 0
    total = int(labelled.sum())
    if total == 0:
        raise ValueError("the mask has no labelled pixel (all ignored or unknown)")
    rows = np.minimum(2, ((np.arange(height) + 0.5) * 3 / height).astype(np.int64))
    columns = np.minimum(2, ((np.arange(width) + 0.5) * 3 / width).astype(np.int64))
    cell_index = rows[:, None] * 3 + columns[None, :]
    cell_sizes = np.bincount(cell_index[labelled], minlength=9).astype(np.float64)
    min_pixels = max(2, int(0.0005 * height * width))
    labels, region_value = label_regions(mask)
    region_sizes = np.bincount(labels.ravel(), minlength=len(region_value))
    facts = MaskFacts(scene=scene, height=height, width=width, ignored_share=round(1 - total / mask.size, 4))
    for index, mask_class in enumerate(table.classes):
        region = mask == index
        count = int(region.sum())
        if mask_class.ignore or count == 0 or count / total < min_share:
            continue
        per_cell = np.bincount(cell_index[region], minlength=9).astype(np.float64)
        own = np.flatnonzero(region_value == index)  # this class's regions
        sizes = region_sizes[own]
        kept = sizes[sizes >= min_pixels]
        # Touching instances of a thing (a row of houses) merge into one region of a semantic mask:
        # a region up to MAX_MERGED times the median size counts as size / median instances; a
        # larger one is one big object (a warehouse among storage tanks), not many small ones.
        typical = float(np.median(kept)) if kept.size else 1.0
        merged = np.where(kept <= MAX_MERGED * typical, np.maximum(1, np.round(kept / typical)), 1)
        instances = int(merged.sum()) if mask_class.thing else len(kept)
        largest_region = labels == own[int(np.argmax(sizes))]
        ys, xs = np.nonzero(largest_region)
        centre = ((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height)
        runs = _border_runs(largest_region)
        class_facts = ClassFacts(
            index=index,
            name=mask_class.name,
            words=mask_class.words,
            thing=mask_class.thing,
            singular=mask_class.singular,
            plural=mask_class.plural,
            share=round(count / total, 4),
            cell_shares=[round(v, 4) for v in (per_cell / np.maximum(cell_sizes, 1)).tolist()],
            main_cell=CELLS[int(np.argmax(per_cell))],
            components=instances,
            largest_share=round(float(sizes.max()) / total, 4),
            largest_cell=cell_of(*centre),
            largest_centre=(round(float(centre[0]), 4), round(float(centre[1]), 4)),
            border_runs=len(runs),
        )
        if len(runs) == 2:
            a, b = (cell_of(*point) for point in runs)
            if a != b:
                class_facts.crossing = reading_order(a, b)
        if class_facts.crossing is None and class_facts.share < BACKGROUND_SHARE:
            class_facts.surrounded_by = _surrounding_class(mask, largest_region, table)
        facts.classes.append(class_facts)
    facts.classes.sort(key=lambda c: (-c.share, c.index))
    return facts


def _surrounding_class(mask: np.ndarray, region: np.ndarray, table: ClassTable, majority: float = 0.6) -> str | None:
    """The class that covers at least ``majority`` of the 1-pixel ring around ``region``."""
    grown = region.copy()
    grown[1:, :] |= region[:-1, :]
    grown[:-1, :] |= region[1:, :]
    grown[:, 1:] |= region[:, :-1]
    grown[:, :-1] |= region[:, 1:]
    ring = mask[grown & ~region]
    ring = ring[ring >= 0]
    if ring.size == 0:
        return None
    counts = np.bincount(ring, minlength=len(table.classes))
    best = int(np.argmax(counts))
    return table.classes[best].name if counts[best] >= majority * ring.size else None


# --------------------------------------------------------------------------- text


def _words_of(facts: MaskFacts, name: str | None) -> str:
    found = facts.by_name(name) if name else None
    return found.words if found else (name or "").replace("_", " ")


def _feature(facts: MaskFacts, item: ClassFacts) -> str | None:
    """A located phrase for one class, or ``None`` for the background."""
    if item.thing:
        where = item.main_cell if item.components > 1 else item.largest_cell
        mostly = "mostly " if item.components > 2 else ""
        return f"{count_words(max(item.components, 1), item.words, item.singular)} {mostly}{at(where)}"
    if item.crossing:
        return f"{item.words} running from the {item.crossing[0]} to the {item.crossing[1]}"
    if item.share >= BACKGROUND_SHARE:
        return None
    compact = item.largest_share >= 0.5 * item.share
    phrase = f"{item.words} {at(item.largest_cell if compact else item.main_cell)}"
    if item.surrounded_by and compact:
        phrase += f", surrounded by {_words_of(facts, item.surrounded_by)}"
    return phrase


def _relation(first: ClassFacts, second: ClassFacts) -> str | None:
    (x1, y1), (x2, y2) = first.largest_centre, second.largest_centre
    dx, dy = x2 - x1, y2 - y1
    if max(abs(dx), abs(dy)) < 0.2:
        return None
    horizontal = "left of" if dx > 0 else "right of"
    where = horizontal if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")
    return f"{first.words} {'are' if first.plural else 'is'} {where} {second.words}"


def render_description(facts: MaskFacts, variant: str = "full") -> str:
    """Write the layout description of ``facts`` (most salient first, one idea per sentence).

    Args:
        facts: from :func:`describe_mask`.
        variant: which sentences, in which order (the same facts, differently told):

            * ``full``: scene sentence with two features, the other features, land cover,
              region counts, a relation;
            * ``brief``: the scene sentence with up to three features;
            * ``cover``: the scene sentence with the main feature, then land cover;
            * ``places``: the scene sentence, then every feature as its own sentence;
            * ``counts``: the scene sentence with two features, region counts, a relation.

    Raises:
        ValueError: unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown mask2text variant {variant!r}; use one of {VARIANTS}")
    located = [(item, phrase) for item in facts.classes if (phrase := _feature(facts, item))]
    scene = scene_words(facts.scene)
    opening = f"{'an' if scene[:1] in 'aeiou' else 'a'} {scene} scene" if scene else "an aerial image"
    size = {"brief": 3, "cover": 1, "places": 0}.get(variant, 2)
    head = located[:size]
    if head:
        phrases = [phrase for _, phrase in head]
        separator = "; " if any("," in phrase for phrase in phrases) else ", "  # keep "surrounded by" unambiguous
        listed = phrases[0] if len(phrases) == 1 else separator.join(phrases[:-1]) + " and " + phrases[-1]
        sentences = [f"{opening} with {listed}."]
    elif variant == "places" and located:
        sentences = [f"{opening}."]
    else:
        sentences = [f"{opening} covered by {facts.classes[0].words}." if facts.classes else f"{opening}."]
    if variant == "brief":
        return " ".join(sentences)

    coverage = [f"{item.words} {round(100 * item.share)}%" for item in facts.classes[:4]]
    cover = [f"land cover: {', '.join(coverage[:-1])} and {coverage[-1]}."] if len(coverage) > 1 else []
    counts = [
        f"{count_words(item.components, 'separate areas')} of {item.words}."
        for item in facts.classes
        if not item.thing and item.components >= 2
    ][:1]
    relation = _relation(located[0][0], located[1][0]) if len(located) >= 2 else None
    relations = [f"{relation}."] if relation else []
    if variant == "cover":
        return " ".join(sentences + cover)
    if variant == "places":
        return " ".join(sentences + [f"{phrase}." for _, phrase in located[:5]])
    if variant == "counts":
        return " ".join(sentences + counts + relations)
    return " ".join(sentences + [f"{phrase}." for _, phrase in located[2:5]] + cover + counts + relations)
