"""Dataset readers: turn a dataset on disk into source records for ``ingest``.

Two layouts are read:

* **karpathy** — ``{"images": [{"filename", "split", "sentences": [{"raw"}, ...]}]}``, the
  format RSICD, UCM-Captions and Sydney-Captions are distributed in. Images live in
  ``images/`` (or the configured ``image_dir``). Scene classes come from ``<Scene>.txt``
  lists in a ``txtclasses_*`` folder, from the file-name prefix (``airport_12.jpg`` →
  ``airport``), or are ``unknown``.
* **folder** — ``<root>/<scene>/<image>`` with ``captions.jsonl`` (``{"image", "caption"[,
  "split", "scene"]}`` per line) or ``captions.csv`` (same columns). Several lines for one
  image give several captions, in file order.

A file that cannot be parsed at all raises :class:`DatasetFormatError` with one message naming
the file and the problem. A single bad record becomes a :class:`SourceIssue` and ends up in
``rejects.parquet``; it never stops the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dldc.data.json_stream import ArrayElements, DuplicateKeyError, NotAnObjectError, iter_members
from dldc.data.manifest import UNKNOWN_SCENE

BAD_RECORD = "bad_record"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
SPLITS = ("train", "val", "test")


class DatasetFormatError(ValueError):
    """A dataset file that cannot be read at all."""


@dataclass
class SourceImage:
    """One image and its captions as the dataset states them.

    Attributes:
        image: path relative to the dataset root (POSIX, normalised; may still escape).
        split: the dataset's split for this image.
        scene: scene class, or ``unknown``.
        captions: raw caption values in source order (non-strings are rejected later).
        where: where the record sits in the source, for reject details.
    """

    image: str
    split: str
    scene: str
    captions: list[Any]
    where: str


@dataclass
class SourceIssue:
    """A source record that cannot become a pair (it goes straight to the rejects)."""

    reason: str
    detail: str
    image: str | None = None
    caption: str | None = None
    scene: str | None = None
    split: str | None = None


@dataclass
class SourceDataset:
    """Everything a reader found."""

    format: str
    images: list[SourceImage]
    issues: list[SourceIssue] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def hash_split(image: str, ratios: tuple[float, float, float]) -> str:
    """A stable split for datasets without one: a hash of the path mapped onto the ratios."""
    position = int(hashlib.sha256(image.encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000
    bound = 0.0
    for name, share in zip(SPLITS, ratios):
        bound += share
        if position < bound:
            return name
    return SPLITS[-1]


def scene_from_prefix(filename: str) -> str:
    """``airport_12.jpg`` → ``airport``; names without a ``<prefix>_<number>`` stem → unknown.

    Example:
        >>> scene_from_prefix("dense_residential_3.png"), scene_from_prefix("00012.jpg")
        ('dense_residential', 'unknown')
    """
    match = re.fullmatch(r"(.+?)[_-]?\d+", Path(filename).stem)
    return match.group(1).lower() if match and not match.group(1).isdigit() else UNKNOWN_SCENE


def read_scene_lists(folder: Path) -> tuple[dict[str, str], int]:
    """Read ``<Scene>.txt`` lists: file name → scene (the list's stem).

    Returns:
        The mapping and the number of names listed under more than one scene (the first
        list in sorted order wins).
    """
    if not folder.is_dir():
        raise DatasetFormatError(f"scene-class folder {folder} does not exist")
    mapping: dict[str, str] = {}
    conflicts = 0
    for txt in sorted(folder.glob("*.txt")):
        for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
            name = line.strip()
            if not name:
                continue
            if name in mapping and mapping[name] != txt.stem:
                conflicts += 1
                continue
            mapping[name] = txt.stem
    if not mapping:
        raise DatasetFormatError(f"scene-class folder {folder} holds no <Scene>.txt lists")
    return mapping, conflicts


def read_karpathy(
    root: Path,
    *,
    annotations: str | None = None,
    image_dir: str | None = None,
    scenes: str | None = None,
    scene_source: str = "auto",
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> SourceDataset:
    """Read a Karpathy-format caption dataset (see the module docstring).

    Raises:
        DatasetFormatError: the annotation file is missing, ambiguous, not JSON, or not
            shaped like ``{"images": [...]}``.
    """
    ann_path = _find_annotations(root, annotations)
    if image_dir is None:
        image_dir = "images" if (root / "images").is_dir() else ""
    scene_of, scene_details = _scene_lookup(root, scenes, scene_source)
    named = ann_path.relative_to(root).as_posix() if ann_path.is_relative_to(root) else ann_path.name
    details = {"annotations": named, "image_dir": image_dir, **scene_details}
    dataset = SourceDataset(format="karpathy", images=[], details=details)
    splits_assigned = 0
    shape_error = DatasetFormatError(f'{ann_path}: expected an object with an "images" list (Karpathy format)')
    seen_images = False
    # Entry by entry (dldc.data.json_stream): the document itself is never held whole.
    try:
        with ann_path.open(encoding="utf-8", newline="") as handle:
            for key, value in iter_members(handle, "images"):
                if key != "images":
                    continue
                if not isinstance(value, ArrayElements):
                    raise shape_error
                seen_images = True
                for index, entry in enumerate(value):
                    splits_assigned += _read_karpathy_entry(
                        dataset, entry, f"{ann_path.name} images[{index}]", image_dir, scene_of, split_ratios
                    )
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{ann_path}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            f"{ann_path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except NotAnObjectError:
        raise shape_error from None
    except DuplicateKeyError as err:
        raise DatasetFormatError(f"{ann_path}: {err}; keep one") from None
    if not seen_images:
        raise shape_error
    dataset.details["splits_assigned_by_hash"] = splits_assigned
    return dataset


def _read_karpathy_entry(
    dataset: SourceDataset,
    entry: Any,
    where: str,
    image_dir: str,
    scene_of: Any,
    split_ratios: tuple[float, float, float],
) -> int:
    """Add one ``images[i]`` entry to ``dataset`` (or an issue); returns 1 if its split was assigned by hash."""
    filename = entry.get("filename") if isinstance(entry, dict) else None
    if not isinstance(filename, str) or not filename.strip():
        dataset.issues.append(SourceIssue(BAD_RECORD, f"{where}: no filename"))
        return 0
    sub = entry.get("filepath") if isinstance(entry.get("filepath"), str) else ""
    image = _normalise(posixpath.join(image_dir, sub, filename))
    split = entry.get("split")
    assigned = 0
    if not isinstance(split, str) or not split:
        split = hash_split(image, split_ratios)
        assigned = 1
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        dataset.issues.append(SourceIssue(BAD_RECORD, f"{where}: no sentences list", image=image, split=split))
        return assigned
    captions = [_sentence_text(sentence) for sentence in sentences]
    dataset.images.append(SourceImage(image, split, scene_of(Path(filename).name), captions, where))
    return assigned


def read_folder(
    root: Path,
    *,
    annotations: str | None = None,
    scene_source: str = "auto",
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> SourceDataset:
    """Read a ``<scene>/<image>`` folder with ``captions.jsonl`` or ``captions.csv``.

    Raises:
        DatasetFormatError: no caption file, or a CSV without ``image`` and ``caption`` columns.
    """
    if annotations is None:
        found = [name for name in ("captions.jsonl", "captions.csv") if (root / name).is_file()]
        if not found:
            raise DatasetFormatError(f"{root}: no captions.jsonl or captions.csv (folder format)")
        annotations = found[0]
    ann_path = root / annotations
    if not ann_path.is_file():
        raise DatasetFormatError(f"caption file {ann_path} does not exist")
    records, issues = (_jsonl_records if ann_path.suffix == ".jsonl" else _csv_records)(ann_path)

    by_image: dict[str, SourceImage] = {}
    for where, record in records:
        image = _normalise(str(record["image"]))
        if image not in by_image:
            split = record.get("split") or hash_split(image, split_ratios)
            scene = record.get("scene") or _folder_scene(image, scene_source)
            by_image[image] = SourceImage(image, str(split), str(scene), [], where)
        by_image[image].captions.append(record.get("caption"))

    listed = {Path(p).name for p in by_image}
    uncaptioned = sum(
        1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and p.name not in listed
    )
    details = {"annotations": ann_path.name, "scene_source": scene_source, "images_without_captions": uncaptioned}
    return SourceDataset(format="folder", images=list(by_image.values()), issues=issues, details=details)


def _find_annotations(root: Path, annotations: str | None) -> Path:
    if not root.is_dir():
        raise DatasetFormatError(f"dataset root {root} is not a directory")
    if annotations is not None:
        path = root / annotations
        if not path.is_file():
            raise DatasetFormatError(f"annotation file {path} does not exist")
        return path
    candidates = sorted(root.glob("dataset*.json"))
    if len(candidates) != 1:
        found = [c.name for c in candidates] or "none"
        raise DatasetFormatError(
            f"{root}: expected exactly one dataset*.json Karpathy file, found {found}; set ingest.annotations"
        )
    return candidates[0]


def _scene_lookup(root: Path, scenes: str | None, scene_source: str) -> tuple[Any, dict[str, Any]]:
    if scene_source == "none":
        return (lambda name: UNKNOWN_SCENE), {"scene_source": "none"}
    folder = Path(scenes) if scenes else None
    if folder is None and scene_source in ("auto", "txtclasses"):
        lists = sorted(p for p in root.glob("txtclasses_*") if p.is_dir())
        folder = lists[0] if lists else None
    if folder is not None and scene_source != "prefix":
        mapping, conflicts = read_scene_lists(folder)
        details = {"scene_source": "txtclasses", "scene_lists": folder.name, "scene_list_conflicts": conflicts}
        return (lambda name: mapping.get(name, UNKNOWN_SCENE)), details
    if scene_source == "txtclasses":
        raise DatasetFormatError(
            f"{root}: scene_source is txtclasses but no txtclasses_* folder was found; pass --scenes"
        )
    return scene_from_prefix, {"scene_source": "prefix"}


def _folder_scene(image: str, scene_source: str) -> str:
    parts = image.split("/")
    if scene_source == "none":
        return UNKNOWN_SCENE
    if scene_source != "prefix" and len(parts) >= 2:
        return parts[-2]
    return scene_from_prefix(parts[-1])


def _sentence_text(sentence: Any) -> Any:
    if isinstance(sentence, dict):
        if "raw" in sentence:
            return sentence["raw"]
        tokens = sentence.get("tokens")
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            return " ".join(tokens)
        return None
    return sentence if isinstance(sentence, str) else None


def _normalise(path: str) -> str:
    cleaned = posixpath.normpath(path.replace("\\", "/"))
    return cleaned[2:] if cleaned.startswith("./") else cleaned


def _jsonl_records(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[SourceIssue]]:
    records: list[tuple[str, dict[str, Any]]] = []
    issues: list[SourceIssue] = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path.name} line {number}"
        if not raw.strip():
            continue
        # Decode line by line so one bad byte costs one caption, not the file; the
        # replacement character marks it as undecodable downstream.
        text = raw.decode("utf-8", errors="replace")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            issues.append(SourceIssue(BAD_RECORD, f"{where}: invalid JSON ({err.msg})"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            issues.append(SourceIssue(BAD_RECORD, f'{where}: expected an object with an "image" string'))
            continue
        records.append((where, record))
    return records, issues


def _csv_records(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[SourceIssue]]:
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
        raise DatasetFormatError(f"{path}: CSV needs 'image' and 'caption' columns, found {reader.fieldnames}")
    records: list[tuple[str, dict[str, Any]]] = []
    issues: list[SourceIssue] = []
    for number, row in enumerate(reader, start=2):
        where = f"{path.name} line {number}"
        row = {key: _unsurrogate(value) for key, value in row.items() if key is not None}
        if not row.get("image"):
            issues.append(SourceIssue(BAD_RECORD, f"{where}: empty image column", caption=row.get("caption")))
            continue
        records.append((where, row))
    return records, issues


def _unsurrogate(value: str | None) -> str | None:
    # Undecodable bytes survive as surrogates; turn them into U+FFFD so they are flagged.
    if value is None:
        return None
    return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
