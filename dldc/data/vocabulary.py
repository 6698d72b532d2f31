"""Layout words: the 3x3 grid, position phrases, numbers and scene names as words.

The SynthRS captions (:mod:`dldc.data.synthrs`), the mask descriptions
(:mod:`dldc.data.mask_text`) and the EGL's layout check all place things with these words, so a
caption the generator writes and a description read from its mask say "at the top left" alike.

Example:
    >>> cell_of(0.1, 0.9), at("left"), at("top right"), reading_order("bottom", "top")
    ('bottom left', 'on the left', 'at the top right', ('top', 'bottom'))
    >>> count_words(1, "buildings", "building"), count_words(20, "cars"), count_words(20, "cars", exact_up_to=20)
    ('one building', 'about twenty cars', 'twenty cars')
"""

from __future__ import annotations

import re

__all__ = ["CELLS", "at", "cell_of", "count_words", "number_words", "reading_order", "scene_words"]

CELLS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip

_SMALL_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def cell_of(x: float, y: float) -> str:
    """Grid cell of a point in [0, 1]² (``x`` right, ``y`` down).

    Example:
        >>> cell_of(0.1, 0.9), cell_of(0.5, 0.5)
        ('bottom left', 'center')
    """
    column, row = min(2, max(0, int(x * 3))), min(2, max(0, int(y * 3)))
    return CELLS[row * 3 + column]


def at(cell: str) -> str:
    """Where a thing is: ``"in the center"``, ``"on the left"``, ``"at the top right"``."""
    if cell == "center":
        return "in the center"
    if cell in ("left", "right"):
        return f"on the {cell}"
    return f"at the {cell}"


def reading_order(first: str, second: str) -> tuple[str, str]:
    """Two cells in reading order (for things without a direction, such as roads)."""
    return (first, second) if CELLS.index(first) <= CELLS.index(second) else (second, first)


def number_words(n: int) -> str:
    """``0`` → ``zero`` … ``99`` → ``ninety nine``; a hundred and more → ``more than a hundred``."""
    if n < 20:
        return _SMALL_NUMBERS[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _SMALL_NUMBERS[ones])
    return "more than a hundred"


def count_words(n: int, plural: str, singular: str | None = None, exact_up_to: int = 19) -> str:
    """``3, "buildings"`` → ``three buildings``, ``0`` → ``no buildings``, ``47`` → ``about fifty``.

    Counts above ``exact_up_to`` are rounded to tens: a reader cannot tell 47 cars from 50.
    ``singular`` (default ``plural``) is used for one.
    """
    if n == 0:
        return f"no {plural}"
    if n == 1:
        return f"one {singular or plural}"
    if n > exact_up_to:
        return f"about {number_words(int(round(n, -1)))} {plural}"
    return f"{number_words(n)} {plural}"


def scene_words(scene: str) -> str:
    """A scene label as words: ``DenseResidential`` → ``dense residential``, ``storage_tanks`` → ``storage tanks``.

    Example:
        >>> scene_words("DenseResidential"), scene_words("storage_tanks"), scene_words("unknown")
        ('dense residential', 'storage tanks', '')
    """
    if scene.lower() == "unknown":
        return ""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", scene)
    return " ".join(re.sub(r"[_\-]+", " ", spaced).lower().split())
