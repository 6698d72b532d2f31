"""Layout check: do the places a caption names hold what it says is there? Read from the segmentation mask.

For datasets with masks (those mask2text describes), the *claims* of a caption — an object and a
place on the 3×3 grid: "the sea on the left", "a lake at the top right", "a river flows from the
top to the bottom" — are checked against the mask. A claim holds when one of the object's classes
covers at least ``min_share`` of a named cell's labelled pixels; a bare side ("on the left", "at
the top") names its three cells, and any of them will do. A caption's *agreement* is the share of
its claims that hold, ``NaN`` when it makes none (nothing to check: "an aerial image").

Objects are the words of the class table (:mod:`dldc.data.class_tables`): each class's ``words``,
``singular`` and ``aliases`` (SynthRS: "sea", "lake", "river" → water; "park" → grass). The object
of a place is the nearest object word before it in the same sentence; for a route ("from the A to
the B") it is the sentence's first object word, the thing that runs. A negated object ("no
trees") claims nothing.

The contrastive scorers of the IEL see an image as a whole and barely notice a caption that puts
the right things in the wrong places; the mask does. The loop (:mod:`dldc.egl.loop`,
``caption.layout_check``) therefore takes a contradiction as hard evidence: a caption that
contradicts its mask is regenerated whatever its IEL score, and a candidate that contradicts the
mask never replaces one that does not.

Example:
    >>> import numpy as np
    >>> table = load_class_table("synthrs")
    >>> mask = np.full((30, 30), 2)          # trees everywhere
    >>> mask[:, :10] = 1                      # water on the left third
    >>> cover = cell_cover(mask, len(table.classes))
    >>> vocabulary = object_vocabulary(table)
    >>> agreement("a beach with the sea on the left and trees on the right", cover, vocabulary)
    1.0
    >>> agreement("a beach with the sea on the right and trees in the center", cover, vocabulary)
    0.5
    >>> agreement("an aerial image", cover, vocabulary)
    nan
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dldc.data.class_tables import ClassTable, load_class_table
from dldc.data.images import resolve_inside
from dldc.data.vocabulary import CELLS
from dldc.egl.mask2text import mask_path_for

__all__ = ["Claim", "LayoutChecker", "agreement", "caption_claims", "cell_cover", "object_vocabulary"]

MIN_SHARE = 0.02  # an object "at" a cell covers at least this much of it (a few stray pixels do not count)
PREPOSITIONS = frozenset({"at", "on", "in", "to", "from", "towards", "toward", "near", "along", "across"})
_ALIASES = {"centre": "center", "middle": "center", "upper": "top", "lower": "bottom"}
SIDES = {
    "left": ("top left", "left", "bottom left"),
    "right": ("top right", "right", "bottom right"),
    "top": ("top left", "top", "top right"),
    "bottom": ("bottom left", "bottom", "bottom right"),
    "center": ("center",),
}
_SENTENCE = re.compile(r"[.;!?]+")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Claim:
    """One checkable statement: one of ``classes`` lies in one of ``cells``."""

    word: str
    classes: frozenset[int]
    cells: tuple[str, ...]


def object_vocabulary(table: ClassTable) -> dict[str, frozenset[int]]:
    """Object word → the class positions it may mean (``words``' last word, ``singular``, ``aliases``)."""
    found: dict[str, set[int]] = {}
    for position, item in enumerate(table.classes):
        if item.ignore:
            continue
        words = [*item.words.split()[-1:], *([item.singular] if item.singular else []), *item.aliases]
        for word in words:
            found.setdefault(word.lower(), set()).add(position)
    return {word: frozenset(classes) for word, classes in found.items()}


def _place(tokens: list[str], start: int) -> tuple[tuple[str, ...], int] | None:
    """The cells named by the place phrase after a preposition at ``start - 1``, and where it ends."""
    j = start + (1 if start < len(tokens) and tokens[start] == "the" else 0)
    words = [_ALIASES.get(t, t) for t in tokens[j : j + 2]]
    if len(words) == 2 and f"{words[0]} {words[1]}" in CELLS:
        return (f"{words[0]} {words[1]}",), j + 2
    if words and words[0] in SIDES:
        return SIDES[words[0]], j + 1
    return None


def caption_claims(caption: str, vocabulary: Mapping[str, frozenset[int]]) -> list[Claim]:
    """The claims of a caption (see the module docstring).

    Example:
        >>> vocab = object_vocabulary(load_class_table("synthrs"))
        >>> [(c.word, c.cells) for c in caption_claims("a river flows from the top to the bottom left", vocab)]
        [('river', ('top left', 'top', 'top right')), ('river', ('bottom left',))]
    """
    claims: list[Claim] = []
    for sentence in _SENTENCE.split(caption.lower()):
        tokens = _WORD.findall(sentence)
        objects = [(i, t) for i, t in enumerate(tokens) if t in vocabulary and (i == 0 or tokens[i - 1] != "no")]
        i = 0
        while i < len(tokens):
            found = _place(tokens, i + 1) if tokens[i] in PREPOSITIONS else None
            if found is None:
                i += 1
                continue
            cells, end = found
            route = tokens[i] == "from" and end < len(tokens) and tokens[end] == "to" and _place(tokens, end + 1)
            before = [(k, t) for k, t in objects if k < i]
            if route and before:
                # What runs from A to B is the sentence's first object ("a road crosses the sand from …")
                # or the nearest one ("a bridge crosses a river that flows from …"): either may hold.
                words = dict.fromkeys([before[0][1], before[-1][1]])
                classes = frozenset().union(*(vocabulary[w] for w in words))
                word = "/".join(words)
                claims += [Claim(word, classes, cells), Claim(word, classes, route[0])]
                i = route[1]
                continue
            if before:
                word = before[-1][1]
                claims.append(Claim(word, vocabulary[word], cells))
            i = end
    return claims


def cell_cover(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, 9)``: the share of each grid cell's labelled pixels (mask value ``>= 0``) per class."""
    height, width = mask.shape
    rows = np.minimum(2, (np.arange(height) * 3) // max(height, 1))
    cols = np.minimum(2, (np.arange(width) * 3) // max(width, 1))
    cells = rows[:, None] * 3 + cols[None, :]
    labelled = mask >= 0
    counts = np.zeros((n_classes, 9))
    np.add.at(counts, (mask[labelled], cells[labelled]), 1.0)
    totals = counts.sum(axis=0)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def agreement(
    caption: str, cover: np.ndarray, vocabulary: Mapping[str, frozenset[int]], min_share: float = MIN_SHARE
) -> float:
    """Share of a caption's claims that the mask's ``cover`` (:func:`cell_cover`) confirms; ``NaN``: no claim."""
    checked = held = 0
    labelled = cover.sum(axis=0) > 0
    for claim in caption_claims(caption, vocabulary):
        cells = [CELLS.index(cell) for cell in claim.cells if labelled[CELLS.index(cell)]]
        if not cells:
            continue  # nothing labelled there: unverifiable
        checked += 1
        held += any(cover[c, cell] >= min_share for c in claim.classes for cell in cells)
    return held / checked if checked else math.nan


class LayoutChecker:
    """Agreement of (image, caption) pairs with the images' masks; each mask is read once.

    Args:
        table: class table name or path (as for ``mask2text``).
        root: the dataset root the images' paths are relative to.
        mask_from, mask_to, mask_suffix: where an image's mask is (:func:`dldc.egl.mask2text.mask_path_for`).
        min_share: the least cover of a cell that confirms a claim.
    """

    def __init__(
        self,
        table: str,
        root: str | Path,
        mask_from: str = "images",
        mask_to: str = "masks",
        mask_suffix: str = ".png",
        min_share: float = MIN_SHARE,
    ):
        self.table = load_class_table(table)
        self.vocabulary = object_vocabulary(self.table)
        self.root = Path(root)
        self.mask_from, self.mask_to, self.mask_suffix = mask_from, mask_to, mask_suffix
        self.min_share = min_share
        self._cover: dict[str, np.ndarray | None] = {}
        self.problems: dict[str, str] = {}  # image -> why it has no cover (reported by the loop)

    def cover(self, image: str) -> np.ndarray | None:
        """The cell cover of an image's mask; ``None`` (reason in :attr:`problems`) when there is none to read.

        Raises:
            PathEscapeError: the mask path leaves the dataset root.
        """
        if image not in self._cover:
            relative = mask_path_for(image, self.mask_from, self.mask_to, self.mask_suffix)
            path = resolve_inside(self.root, relative)
            try:
                with Image.open(path) as handle:
                    mask = self.table.decode(handle, where=relative)
                self._cover[image] = cell_cover(mask, len(self.table.classes))
            except (FileNotFoundError, ValueError, OSError) as err:
                self._cover[image] = None
                self.problems[image] = f"{type(err).__name__}: {err}"
        return self._cover[image]

    def __call__(self, images: Sequence[str], captions: Sequence[str | None]) -> np.ndarray:
        """Agreement per pair; ``NaN`` without a mask, a caption or a claim."""
        out = np.full(len(images), math.nan)
        for k, (image, caption) in enumerate(zip(images, captions)):
            cover = self.cover(image)
            if cover is not None and isinstance(caption, str) and caption:
                out[k] = agreement(caption, cover, self.vocabulary, self.min_share)
        return out
