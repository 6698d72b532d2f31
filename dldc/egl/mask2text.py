"""mask2text: a deterministic layout description of an image from its segmentation mask.

RemoteCLIP turned segmentation labels into captions with rules; this is the same idea for the
EGL: for datasets that ship masks (SynthRS, ``../shared/data/dubai-seg``), describe what is where
without a model, so the loop has layout descriptions even offline and on the CPU.

Class tables (data, not code)
    ``dldc/egl/classes/<name>.json`` maps mask values (``mode: index``, e.g. SynthRS palette PNGs)
    or colours (``mode: rgb``, e.g. dubai-seg) to class names and the words used in text;
    ``ignore`` classes (unlabelled) are left out of shares. A path to such a JSON works too.

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
    >>> table = load_class_table("synthrs")
    >>> mask = np.full((30, 30), 2, np.uint8)   # trees everywhere
    >>> mask[2:9, 2:9] = 1                       # a pond at the top left
    >>> render_description(describe_mask(mask, table, scene="lake"), "brief")
    'a lake scene with water at the top left, surrounded by trees.'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from dldc.data.images import resolve_inside
from dldc.egl.base import Attempt, CaptionRequest, Proposal
from dldc.egl.prompts import scene_words

TABLE_DIR = Path(__file__).resolve().parent / "classes"
CELLS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
VARIANTS = ("full", "brief", "cover", "places", "counts")
FORMAT_VERSION = 2  # bump when the facts or the text change: cached generations are then redone
MAX_SIDE = 256  # layout on a 3x3 grid needs no more pixels; keeps big tiles fast
MIN_SHARE = 0.02  # classes below this share of the image are not mentioned
BACKGROUND_SHARE = 0.4  # a class this large is the background: coverage, not a located feature
MAX_MERGED = 4  # touching things counted apart: at most this many per region (see describe_mask)
UNKNOWN_COLOUR_LIMIT = 0.005  # more unknown-colour pixels than this is a wrong class table, not noise

_SMALL = (
    "no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


# --------------------------------------------------------------------------- class tables


@dataclass(frozen=True)
class MaskClass:
    """One class of a table: ``value`` (index masks) or ``color`` (RGB masks) → ``name``/``words``."""

    name: str
    words: str
    color: tuple[int, int, int]
    value: int | None = None
    singular: str | None = None
    plural: bool = False
    thing: bool = False
    ignore: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassTable:
    """How to read one dataset's masks.

    Attributes:
        name: table name (recorded as the captioner's model id).
        mode: ``index`` (pixel values are class values) or ``rgb`` (colours are).
        classes: the classes, in the order facts refer to them.
    """

    name: str
    mode: Literal["index", "rgb"]
    classes: tuple[MaskClass, ...]

    def decode(self, image: Image.Image, max_side: int = MAX_SIDE, where: str = "mask") -> np.ndarray:
        """A mask image → class positions (``-1`` = ignored), shrunk to at most ``max_side`` pixels.

        Raises:
            ValueError: values or colours the table does not know cover more than 0.5% of the mask
                (the message lists them: wrong table?). A few stray pixels count as ignored.
        """
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            image = image.resize(size, Image.Resampling.NEAREST)
        if self.mode == "index":
            if image.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(
                    f"{where}: class table {self.name!r} expects an index mask (mode P or L), got {image.mode}"
                )
            keys = np.asarray(image).astype(np.int64)
            known = {c.value: i for i, c in enumerate(self.classes)}
            describe = str
        else:
            rgb = np.asarray(image.convert("RGB")).astype(np.int64)
            keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            known = {(c.color[0] << 16) | (c.color[1] << 8) | c.color[2]: i for i, c in enumerate(self.classes)}
            describe = lambda key: f"#{key:06X}"  # noqa: E731
        values, inverse = np.unique(keys, return_inverse=True)
        lookup = np.array([known.get(int(v), -2) for v in values], dtype=np.int64)
        out = lookup[inverse.reshape(keys.shape)]
        unknown = out == -2
        if unknown.mean() > UNKNOWN_COLOUR_LIMIT:
            counts = {describe(int(v)): int((keys == v).sum()) for v in values if known.get(int(v)) is None}
            top = dict(sorted(counts.items(), key=lambda item: -item[1])[:8])
            raise ValueError(
                f"{where}: {unknown.mean():.1%} of the pixels have values not in class table {self.name!r} {top}; "
                "use the table that matches these masks or add the classes to it"
            )
        ignored = np.array([c.ignore for c in self.classes] + [True, True])
        out[unknown] = -1
        out[ignored[out]] = -1
        return out


def load_class_table(name_or_path: str) -> ClassTable:
    """Load a class table: a shipped name (``synthrs``, ``dubai-seg``) or a JSON file path.

    Raises:
        FileNotFoundError: no such table (the message lists the shipped ones).
        ValueError: the JSON is not a class table.
    """
    looks_like_path = name_or_path.endswith(".json") or "/" in name_or_path
    path = Path(name_or_path) if looks_like_path else TABLE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in TABLE_DIR.glob("*.json"))
        raise FileNotFoundError(f"class table {name_or_path!r}: {path} not found (shipped tables: {shipped})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        mode = raw["mode"]
        if mode not in ("index", "rgb"):
            raise ValueError(f"mode must be 'index' or 'rgb', got {mode!r}")
        classes = tuple(_mask_class(entry, mode) for entry in raw["classes"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not a mask class table ({{mode, classes: [{{name, color, ...}}]}}): {err}"
        ) from None
    return ClassTable(str(raw.get("name", path.stem)), mode, classes)


def _mask_class(entry: dict[str, Any], mode: str) -> MaskClass:
    colour = entry["color"].lstrip("#")
    if mode == "index" and not isinstance(entry.get("value"), int):
        raise ValueError(f"class {entry.get('name')!r} needs an integer 'value' in an index table")
    return MaskClass(
        name=str(entry["name"]),
        words=str(entry.get("words", entry["name"])),
        color=(int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)),
        value=entry.get("value"),
        singular=entry.get("singular"),
        plural=bool(entry.get("plural", False)),
        thing=bool(entry.get("thing", False)),
        ignore=bool(entry.get("ignore", False)),
        aliases=tuple(str(word) for word in entry.get("aliases", ())),
    )


def hash_table(table: ClassTable) -> str:
    """Short digest of a class table's content (part of the captioner's fingerprint)."""
    import hashlib

    return hashlib.sha256(repr(table).encode()).hexdigest()[:12]


def mask_path_for(image: str, mask_from: str = "images", mask_to: str = "masks", suffix: str = ".png") -> str:
    """The mask of an image: the last ``mask_from`` folder of its path becomes ``mask_to``, the suffix ``suffix``.

    Example:
        >>> mask_path_for("tile_1/images/image_part_001.jpg")
        'tile_1/masks/image_part_001.png'
    """
    parts = list(Path(image).parts)
    positions = [i for i, part in enumerate(parts[:-1]) if part == mask_from]
    if positions:
        parts[positions[-1]] = mask_to
    else:
        parts.insert(len(parts) - 1, mask_to)
    return Path(*parts).with_suffix(suffix).as_posix()


# --------------------------------------------------------------------------- facts


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


def cell_of(x: float, y: float) -> str:
    """Grid cell of a point in [0, 1]² (``x`` right, ``y`` down).

    Example:
        >>> cell_of(0.1, 0.9), cell_of(0.5, 0.5)
        ('bottom left', 'center')
    """
    column, row = min(2, max(0, int(x * 3))), min(2, max(0, int(y * 3)))
    return CELLS[row * 3 + column]


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


def _reading_order(first: str, second: str) -> tuple[str, str]:
    return (first, second) if CELLS.index(first) <= CELLS.index(second) else (second, first)


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
                class_facts.crossing = _reading_order(a, b)
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


def count_words(n: int, plural: str, singular: str | None = None) -> str:
    """``3, "buildings"`` → ``three buildings``; counts above twenty are rounded to tens.

    Example:
        >>> count_words(1, "buildings", "building"), count_words(47, "cars")
        ('one building', 'about fifty cars')
    """
    if n == 1:
        return f"one {singular or plural}"
    if n < 20:
        return f"{_SMALL[n]} {plural}"
    tens = int(round(n, -1))
    words = f"{_TENS[tens // 10]}" if tens < 100 else "more than a hundred"
    return f"about {words} {plural}"


def _at(cell: str) -> str:
    if cell == "center":
        return "in the center"
    if cell in ("left", "right"):
        return f"on the {cell}"
    return f"at the {cell}"


def _words_of(facts: MaskFacts, name: str | None) -> str:
    found = facts.by_name(name) if name else None
    return found.words if found else (name or "").replace("_", " ")


def _feature(facts: MaskFacts, item: ClassFacts) -> str | None:
    """A located phrase for one class, or ``None`` for the background."""
    if item.thing:
        where = item.main_cell if item.components > 1 else item.largest_cell
        mostly = "mostly " if item.components > 2 else ""
        return f"{count_words(max(item.components, 1), item.words, item.singular)} {mostly}{_at(where)}"
    if item.crossing:
        return f"{item.words} running from the {item.crossing[0]} to the {item.crossing[1]}"
    if item.share >= BACKGROUND_SHARE:
        return None
    compact = item.largest_share >= 0.5 * item.share
    phrase = f"{item.words} {_at(item.largest_cell if compact else item.main_cell)}"
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


# --------------------------------------------------------------------------- captioner


class Mask2TextCaptioner:
    """The :class:`~dldc.egl.base.Captioner` that describes each image's mask.

    Args:
        table: a class table name or path (see :func:`load_class_table`).
        mask_from, mask_to, mask_suffix: where an image's mask is (see :func:`mask_path_for`).

    The attempt's ``prompt_id`` picks the first variant to try (ids containing ``brief`` start
    with the brief one, all others with the full one); a variant whose text the request must
    avoid (already tried, or in use on the image) or that another pair of the same image got in
    this call is skipped for the next one, so several low pairs of one image get distinct
    descriptions. An image without a mask gets no candidate, with the reason in the detail.
    """

    backend = "mask2text"

    def __init__(
        self, table: str = "synthrs", mask_from: str = "images", mask_to: str = "masks", mask_suffix: str = ".png"
    ):
        self.table = load_class_table(table)
        self.model_id = self.table.name
        self.mask_from, self.mask_to, self.mask_suffix = mask_from, mask_to, mask_suffix
        self.fingerprint = f"mask2text:{self.table.name}:{FORMAT_VERSION}:{hash_table(self.table)}"
        self._facts: dict[tuple[str, str, str], MaskFacts] = {}  # an image's pairs share one description

    def describe(self, request: CaptionRequest) -> MaskFacts:
        """Read and describe the mask of a request's image.

        Raises:
            FileNotFoundError: the image has no mask file.
            ValueError: the mask does not fit the class table.
        """
        key = (str(request.root), request.image, request.scene)
        if key not in self._facts:
            relative = mask_path_for(request.image, self.mask_from, self.mask_to, self.mask_suffix)
            path = resolve_inside(request.root, relative)
            if not path.is_file():
                raise FileNotFoundError(f"no mask {relative} for {request.image}")
            with Image.open(path) as image:
                mask = self.table.decode(image, where=relative)
            self._facts[key] = describe_mask(mask, self.table, scene=request.scene)
        return self._facts[key]

    def caption(self, requests: Sequence[CaptionRequest], attempt: Attempt) -> list[Proposal]:
        """One description per request (variant chosen by ``attempt.prompt_id``)."""
        first = "brief" if "brief" in attempt.prompt_id else "full"
        order = [first, *(v for v in VARIANTS if v != first)]
        proposals = []
        given: dict[str, set[str]] = {}  # texts handed to each image's pairs in this call
        for request in requests:
            try:
                facts = self.describe(request)
            except (FileNotFoundError, ValueError, OSError) as err:
                proposals.append(Proposal(None, f"no description: {err}"))
                continue
            taken = given.setdefault(request.image_id, set())
            avoid = {_key(text) for text in request.avoid} | taken
            proposal = Proposal(None, f"every mask2text variant already tried or in use: {', '.join(order)}")
            for variant in order:
                text = render_description(facts, variant)
                if _key(text) not in avoid:
                    taken.add(_key(text))
                    proposal = Proposal(text, f"mask2text {variant}")
                    break
            proposals.append(proposal)
        return proposals


def _key(text: str) -> str:
    """How texts are compared for repeats: lower case, single spaces, no final period."""
    return " ".join(text.lower().split()).rstrip(" .")
