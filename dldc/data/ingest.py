"""The ``ingest`` stage: read a dataset, check every image and caption, write the manifest.

Outputs in ``out``:

* ``manifest.parquet`` — valid pairs (schema in :mod:`dldc.data.manifest`);
* ``rejects.parquet`` — every pair (or source record) that was not kept, with a reason;
* ``ingest.json`` — dataset metadata and counts per reason, scene and split.

Every input pair lands in exactly one of the two Parquet files. Reason codes: image-level
``missing_file``, ``empty_file``, ``not_an_image``, ``corrupt_image``, ``too_large``,
``too_small``, ``path_escape``, ``duplicate_image`` (same bytes as a kept image),
``near_duplicate`` (perceptual hash within the configured distance or, for low-texture
images, the same coarse colours), ``duplicate_entry``
(the same image listed twice); caption-level ``empty_caption``, ``undecodable_caption``,
``invalid_caption`` (not a string); record-level ``bad_record``.
"""

from __future__ import annotations

import os
import posixpath
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dldc.config import IngestConfig
from dldc.data import images as img
from dldc.data.manifest import (
    EmptyManifestError,
    ManifestMeta,
    image_id_for,
    pair_id_for,
    write_manifest,
    write_rejects,
)
from dldc.data.readers import SourceDataset, read_folder, read_karpathy
from dldc.data.source import is_url, stage_dataset
from dldc.io import write_json

DUPLICATE_IMAGE = "duplicate_image"
NEAR_DUPLICATE = "near_duplicate"
DUPLICATE_ENTRY = "duplicate_entry"
EMPTY_CAPTION = "empty_caption"
UNDECODABLE_CAPTION = "undecodable_caption"
INVALID_CAPTION = "invalid_caption"
CAPTION_SOURCE_ORIGINAL = "original"

MANIFEST_FILE = "manifest.parquet"
REJECTS_FILE = "rejects.parquet"
REPORT_FILE = "ingest.json"


@dataclass
class IngestResult:
    """Paths written by :func:`ingest` and its report (the content of ``ingest.json``)."""

    manifest: Path
    rejects: Path
    report_path: Path
    report: dict[str, Any]


def read_source(cfg: IngestConfig, root: Path | None = None) -> SourceDataset:
    """Read the configured dataset with the matching reader (from ``root``, default ``cfg.root``)."""
    root = Path(cfg.root) if root is None else root
    if cfg.format == "karpathy":
        return read_karpathy(
            root,
            annotations=cfg.annotations,
            image_dir=cfg.image_dir,
            scenes=cfg.scenes,
            scene_source=cfg.scene_source,
            split_ratios=cfg.split_ratios,
        )
    return read_folder(root, annotations=cfg.annotations, scene_source=cfg.scene_source, split_ratios=cfg.split_ratios)


def caption_problem(caption: Any) -> tuple[str, str] | None:
    """A ``(reason, detail)`` when a caption cannot be used, else ``None``."""
    if not isinstance(caption, str):
        return INVALID_CAPTION, f"caption is {type(caption).__name__}, not text"
    try:
        caption.encode("utf-8")  # fails exactly on lone surrogates (U+D800..U+DFFF): one C pass, not one per character
        undecodable = "\ufffd" in caption
    except UnicodeEncodeError:
        undecodable = True
    if undecodable:
        return UNDECODABLE_CAPTION, "caption holds bytes that are not valid UTF-8"
    if not caption.strip():
        return EMPTY_CAPTION, "caption is empty or whitespace"
    return None


def _storable(caption: Any) -> str | None:
    """A rejected caption as it can be written to Parquet: lone surrogates (JSON ``\\udcff`` escapes,
    undecodable bytes) become visible ``\\udcff`` text instead of failing the write."""
    if not isinstance(caption, str):
        return None
    return caption.encode("utf-8", "backslashreplace").decode("utf-8")


def check_images(
    root: Path, relative_paths: list[str], cfg: IngestConfig, progress: bool = True
) -> list[img.ImageCheck]:
    """Open and decode every image (in parallel processes), in input order."""
    checks: list[img.ImageCheck | None] = [None] * len(relative_paths)
    todo: list[tuple[int, Path]] = []
    for index, relative in enumerate(relative_paths):
        try:
            todo.append((index, img.resolve_inside(root, relative)))
        except img.PathEscapeError as err:
            checks[index] = img.ImageCheck(False, img.PATH_ESCAPE, str(err))
    inspect = partial(_inspect, max_pixels=cfg.max_pixels, min_side=cfg.min_side)
    workers = cfg.workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc="ingest: decoding images", unit="img", disable=not progress)
    if workers == 1 or len(todo) < 64:
        results = map(inspect, todo)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(inspect, todo, chunksize=32)
    try:
        for index, check in results:
            checks[index] = check
            bar.update()
    finally:
        bar.close()
        if workers != 1 and len(todo) >= 64:
            pool.shutdown()
    return checks  # type: ignore[return-value]


def ingest(cfg: IngestConfig, progress: bool = True) -> IngestResult:
    """Run the ingest stage (see the module docstring).

    Args:
        cfg: the ``ingest`` section of the configuration.
        progress: show a progress bar while decoding images.

    Returns:
        The written paths and the report.

    Raises:
        dldc.data.readers.DatasetFormatError: the dataset's annotation file is unreadable.
    """
    out = Path(cfg.out)
    root = stage_dataset(cfg.root, out, copy=cfg.copy_dataset)  # a URL or copy_dataset: <out>/dataset
    source = read_source(cfg, root)

    kept_rows: list[dict[str, Any]] = []
    reject_rows: list[dict[str, Any]] = [
        {
            "pair_id": None,
            "image_id": None,
            "image": i.image,
            "caption": _storable(i.caption),
            "scene": i.scene,
            "split": i.split,
            "reason": i.reason,
            "detail": i.detail,
        }
        for i in source.issues
    ]

    # One entry per distinct image; a repeated entry is rejected, its captions included.
    listed: set[str] = set()
    entries = []
    image_reasons: Counter[str] = Counter()
    for entry in source.images:
        if entry.image in listed:
            _reject_entry(reject_rows, entry, (DUPLICATE_ENTRY, f"{entry.where}: {entry.image} is listed earlier"))
            image_reasons[DUPLICATE_ENTRY] += 1
            continue
        listed.add(entry.image)
        entries.append(entry)

    checks = check_images(root, [e.image for e in entries], cfg, progress)
    image_verdict: list[tuple[str, str] | None] = [None if c.ok else (c.reason or "", c.detail) for c in checks]

    # Exact duplicates first (same bytes), then near-duplicates among the remaining images.
    # The first occurrence in source order is kept, so the choice is reproducible.
    first_by_sha: dict[str, int] = {}
    for index, check in enumerate(checks):
        if not check.ok:
            continue
        if check.sha256 in first_by_sha:
            image_verdict[index] = (DUPLICATE_IMAGE, f"same bytes as {entries[first_by_sha[check.sha256]].image}")
        else:
            first_by_sha[check.sha256] = index
    candidates = [i for i, v in enumerate(image_verdict) if v is None]
    near = img.near_duplicate_of(
        [checks[i].fingerprint for i in candidates],
        cfg.near_duplicate_max_distance,
        min_texture=cfg.near_duplicate_min_texture,
        colour_tolerance=cfg.near_duplicate_colour_tolerance,
    )
    for position, duplicate in near.items():
        kept = entries[candidates[duplicate.kept]].image
        image_verdict[candidates[position]] = (NEAR_DUPLICATE, duplicate.describe(kept))

    repeated_caption_images = 0
    for entry, check, verdict in zip(entries, checks, image_verdict):
        if verdict is not None:
            _reject_entry(reject_rows, entry, verdict)
            image_reasons[verdict[0]] += 1
            continue
        image_id = image_id_for(entry.image)
        texts = [c.strip() for c in entry.captions if isinstance(c, str) and c.strip()]
        repeated_caption_images += len(texts) > 1 and len(set(texts)) == 1
        for k, caption in enumerate(entry.captions):
            base = {
                "pair_id": pair_id_for(image_id, k),
                "image_id": image_id,
                "image": entry.image,
                "scene": entry.scene,
                "split": entry.split,
            }
            problem = caption_problem(caption)
            if problem is not None:
                reject_rows.append({**base, "caption": _storable(caption), "reason": problem[0], "detail": problem[1]})
                continue
            kept_rows.append(
                {
                    **base,
                    "image_sha256": check.sha256,
                    "width": check.width,
                    "height": check.height,
                    "caption": caption.strip(),
                    "caption_source": CAPTION_SOURCE_ORIGINAL,
                }
            )

    modes = Counter(c.mode for c, v in zip(checks, image_verdict) if v is None)
    kept_splits = Counter(e.split for e, v in zip(entries, image_verdict) if v is None)
    report = _report(cfg, source, kept_rows, reject_rows, image_reasons, kept_splits, modes, repeated_caption_images)
    meta = ManifestMeta(
        source_format=source.format,
        root=_portable_root(root, out),
        counts=report["counts"],
        dldc_version=report["dldc_version"],
        extra={"root_absolute": str(root.resolve()), "source": cfg.root, **source.details},
    )
    out.mkdir(parents=True, exist_ok=True)
    write_rejects(out / REJECTS_FILE, reject_rows)
    write_json(out / REPORT_FILE, report)
    if not kept_rows:
        # No manifest at all, so no later stage can start from an empty (or an earlier run's) one;
        # rejects.parquet and ingest.json stay as the record of why.
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        raise EmptyManifestError(_nothing_kept_message(root, reject_rows, out))
    write_manifest(out / MANIFEST_FILE, kept_rows, meta)
    return IngestResult(out / MANIFEST_FILE, out / REJECTS_FILE, out / REPORT_FILE, report)


def _nothing_kept_message(root: Path, reject_rows: list[dict[str, Any]], out: Path) -> str:
    """Why no pair was kept: the top rejection reasons with counts and one example each."""
    if not reject_rows:
        return f"{root}: the dataset lists no image-caption pairs; nothing was kept"
    reasons = Counter(row["reason"] for row in reject_rows)
    examples = {}
    for row in reject_rows:
        examples.setdefault(row["reason"], row)
    top = "; ".join(
        f"{reason} x{count} (e.g. {examples[reason]['image'] or '?'}: {examples[reason]['detail']})"
        for reason, count in reasons.most_common(3)
    )
    return f"{root}: kept 0 of {len(reject_rows)} pairs. Top reasons: {top}. Every rejection is in {out / REJECTS_FILE}"


def _inspect(item: tuple[int, Path], max_pixels: int, min_side: int) -> tuple[int, img.ImageCheck]:
    index, path = item
    return index, img.inspect_image(path, max_pixels, min_side)


def _reject_entry(rows: list[dict[str, Any]], entry: Any, verdict: tuple[str, str]) -> None:
    image_id = image_id_for(entry.image)
    for k, caption in enumerate(entry.captions):
        rows.append(
            {
                "pair_id": pair_id_for(image_id, k),
                "image_id": image_id,
                "image": entry.image,
                "caption": _storable(caption),
                "scene": entry.scene,
                "split": entry.split,
                "reason": verdict[0],
                "detail": verdict[1],
            }
        )
    if not entry.captions:
        rows.append(
            {
                "pair_id": None,
                "image_id": image_id,
                "image": entry.image,
                "caption": None,
                "scene": entry.scene,
                "split": entry.split,
                "reason": verdict[0],
                "detail": verdict[1],
            }
        )


def _portable_root(root: Path, out: Path) -> str:
    # Relative to the manifest's folder, so a project tree can be moved or cloned as a whole.
    try:
        return posixpath.relpath(root.resolve().as_posix(), out.resolve().as_posix())
    except ValueError:
        return str(root.resolve())


def _report(
    cfg: IngestConfig,
    source: SourceDataset,
    kept_rows: list[dict[str, Any]],
    reject_rows: list[dict[str, Any]],
    image_reasons: Counter[str],
    kept_splits: Counter[str],
    modes: Counter[str],
    repeated_caption_images: int,
) -> dict[str, Any]:
    from dldc import __version__

    reasons = Counter(row["reason"] for row in reject_rows)
    kept_images = {row["image_id"] for row in kept_rows}
    counts = {
        "input_images": len(source.images),
        "input_pairs": len(kept_rows) + len(reject_rows),
        "kept_pairs": len(kept_rows),
        "kept_images": len(kept_images),
        "rejected_pairs": len(reject_rows),
        "rejected_pairs_by_reason": dict(sorted(reasons.items())),
        "rejected_images_by_reason": dict(sorted(image_reasons.items())),
        "scenes": len({row["scene"] for row in kept_rows}),
        "pairs_by_scene": dict(sorted(Counter(row["scene"] for row in kept_rows).items())),
        "pairs_by_split": dict(sorted(Counter(row["split"] for row in kept_rows).items())),
        "images_by_split": dict(sorted(kept_splits.items())),
        "images_with_one_repeated_caption": int(repeated_caption_images),
        "image_modes": dict(sorted(modes.items())),
    }
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dldc_version": __version__,
        "source_format": source.format,
        "root": cfg.root if is_url(cfg.root) else str(Path(cfg.root).resolve()),
        "config": cfg.model_dump(mode="json"),
        "source": source.details,
        "counts": counts,
    }
