"""Class tables: how to read a dataset's segmentation masks, and what its classes are called.

The tables are data shipped with the package (``dldc/data/classes/<name>.json``); the SynthRS
generator (:mod:`dldc.data.synthrs`), the EGL's mask2text captioner and layout check, and the
segmentation stage all read them from here, so a class has one name, colour and set of words.

A table maps mask values (``mode: index``, e.g. SynthRS palette PNGs) or colours (``mode: rgb``,
e.g. dubai-seg) to class names and the words used in text::

    {"name": "synthrs", "mode": "index", "classes": [
        {"value": 0, "name": "bare_soil", "color": "#966e50", "words": "bare soil", "thing": false,
         "aliases": ["soil", "dirt"]}, ...]}

Optional keys per class: ``words`` (default the name), ``singular``, ``plural``, ``thing``
(countable objects such as buildings), ``ignore`` (unlabelled pixels: left out of shares and
training labels) and ``aliases`` (other words that name the class in captions).

Example:
    >>> table = load_class_table("synthrs")
    >>> table.mode, table.classes[1].name, table.classes[1].color
    ('index', 'water', (30, 90, 170))
    >>> "synthrs" in list_class_tables()
    True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

__all__ = ["MAX_SIDE", "TABLE_DIR", "ClassTable", "MaskClass", "hash_table", "list_class_tables", "load_class_table"]

TABLE_DIR = Path(__file__).resolve().parent / "classes"
MAX_SIDE = 256  # layout on a 3x3 grid needs no more pixels; keeps big tiles fast
UNKNOWN_COLOUR_LIMIT = 0.005  # more unknown-colour pixels than this is a wrong class table, not noise


def list_class_tables() -> list[str]:
    """The names of the shipped class tables."""
    return sorted(path.stem for path in TABLE_DIR.glob("*.json"))


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
        raise FileNotFoundError(
            f"class table {name_or_path!r}: {path} not found (shipped tables: {list_class_tables()})"
        )
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
    return hashlib.sha256(repr(table).encode()).hexdigest()[:12]
