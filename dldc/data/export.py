"""Write the cleaned dataset back in the format it came in, with a provenance table.

The inverse of :mod:`dldc.data.readers`. From the ingest manifest (every pair, with its original
caption) and the cleaning's outputs (the cleaned manifest ``dldc select`` keeps, with EGL's
repaired captions in place, and the pairs it dropped), :func:`export_dataset` writes into
``out``:

``dataset_<name>.json`` (Karpathy) or ``captions.jsonl`` (folder layout)
    The kept pairs only. A Karpathy export keeps every image entry's own fields (``imgid``,
    ``split``, ``filename``, ``filepath``, ...) and each kept sentence's (``sentid``, ...), with a
    repaired caption's ``raw`` and ``tokens`` replaced; images with no kept caption are left out,
    ``sentids`` follow the kept sentences. A folder export writes one line per kept pair:
    ``{"image", "caption", "scene", "split"}``.
``images`` (the same relative paths as in the source), and the scene lists (``txtclasses_*``)
    Hard links to the source's files (copies across file systems, or with ``images: copy``),
    so that ``dldc ingest`` of ``out`` reads exactly the kept pairs.
``provenance.parquet``
    One row per pair of the source: ``pair_id``, ``image``, ``scene``, ``split``,
    ``original_caption``, ``final_caption``, ``caption_source`` (``original`` or
    ``egl:<backend>:<model>``), ``egl_round``, ``fused``, ``scene_percentile``, every scorer
    column of the scores, ``status`` (``kept``, ``dropped``, ``rejected``) and ``reason``
    (for a dropped pair its rank and its scene's ratio; for a rejected one the ingest reason).
``export.json``
    The inputs (paths and sha256), the format, and counts.

Re-ingesting the export gives the kept pairs: the same images (same relative paths, so the same
``image_id``), captions, scenes and splits. Pair ids are renumbered where an image lost a caption
(a pair id is ``<image_id>:<caption index in the source>``); the provenance table keeps the old ones.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dldc.data.images import PathEscapeError, resolve_inside
from dldc.data.json_stream import ArrayElements, DuplicateKeyError, iter_members
from dldc.data.manifest import dataset_root, ids_in, read_manifest
from dldc.io import atomic_dir, file_sha256, write_json, write_parquet

PROVENANCE_FILE = "provenance.parquet"
REPORT_FILE = "export.json"
FOLDER_CAPTIONS = "captions.jsonl"
FORMATS = ("source", "karpathy", "folder")
KEPT, DROPPED, REJECTED = "kept", "dropped", "rejected"


def export_dataset(
    original: str | Path,
    cleaned: str | Path,
    out: str | Path,
    *,
    dropped: str | Path | None = None,
    scores: str | Path | None = None,
    captions: str | Path | None = None,
    rejects: str | Path | None = None,
    fmt: str = "source",
    images: str = "link",
) -> dict[str, Any]:
    """Write the kept pairs of ``cleaned`` in the source's format into ``out`` (see the module docstring).

    Args:
        original: the ingest manifest (every pair with its original caption).
        cleaned: the cleaned manifest (``dldc select``'s ``cleaned_manifest.parquet``) or any manifest
            of kept pairs with their final captions.
        out: the export folder (replaced as a whole, atomically).
        dropped: ``dropped.parquet`` of the same selection (ranks and ratios of the dropped pairs).
        scores: the IEL scores the selection ranked by (``fused``, ``scene_percentile``, scorers).
        captions: EGL's ``captions.parquet`` (the round each repaired caption came from).
        rejects: ingest's ``rejects.parquet`` (pairs that never reached the manifest).
        fmt: ``source`` (the format ingest read), ``karpathy`` or ``folder``.
        images: ``link`` (hard links, copies where that fails) or ``copy``.

    Returns:
        The export report (also ``out/export.json``).

    Raises:
        ValueError: a bad format, or inputs that do not belong together (a kept pair that is not
            in the original manifest, a pair both kept and dropped).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if images not in ("link", "copy"):
        raise ValueError(f"images must be 'link' or 'copy', got {images!r}")
    for name, path in (("dropped", dropped), ("scores", scores), ("captions", captions), ("rejects", rejects)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(
                f"export_dataset.{name}: {path} does not exist (set it to null to export without it)"
            )
    source, meta = read_manifest(original)
    kept, _ = read_manifest(cleaned)
    root = dataset_root(original, meta)
    unknown = sorted(kept.loc[~ids_in(kept["pair_id"], source["pair_id"]), "pair_id"].tolist())
    if unknown:
        raise ValueError(
            f"{cleaned}: {len(unknown)} kept pairs are not in {original} (e.g. {unknown[0]}): "
            "the cleaned manifest comes from another dataset"
        )
    fmt = meta.source_format if fmt == "source" else fmt
    if fmt not in ("karpathy", "folder"):
        raise ValueError(f"{original}: source format {meta.source_format!r} has no writer; choose karpathy or folder")
    if fmt == "karpathy" and meta.source_format != "karpathy":
        raise ValueError(
            f"{original}: a Karpathy export keeps the source's own JSON entries, and this dataset came as "
            f"{meta.source_format!r}; export it as folder (captions.jsonl)"
        )

    table = provenance(source, kept, dropped=dropped, scores=scores, captions=captions, rejects=rejects)
    kept = kept.set_index("pair_id").loc[table.loc[table["status"] == KEPT, "pair_id"]].reset_index()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        written = _write_karpathy(root, meta.extra, kept, tmp) if fmt == "karpathy" else _write_folder(kept, tmp)
        linked = _place_images(root, sorted(set(kept["image"])), tmp, images)
        for folder in _scene_lists(root, meta.extra, fmt):
            shutil.copytree(folder, tmp / folder.name)
        write_parquet(tmp / PROVENANCE_FILE, pa.Table.from_pandas(table, preserve_index=False))
        report = {
            "format": fmt,
            "annotations": written,
            "inputs": {
                name: {"path": str(path), "sha256": file_sha256(path)}
                for name, path in (("original", original), ("cleaned", cleaned), ("dropped", dropped),
                                   ("scores", scores), ("captions", captions), ("rejects", rejects))
                if path is not None
            },  # fmt: skip
            "counts": {
                "pairs": int(len(table)),
                **{status: int((table["status"] == status).sum()) for status in (KEPT, DROPPED, REJECTED)},
                "repaired_kept": int(((table["status"] == KEPT) & (table["caption_source"] != "original")).sum()),
                "images": int(kept["image"].nunique()),
                "images_linked": linked,
            },
        }
        write_json(tmp / REPORT_FILE, report)
    return report


def provenance(
    source: pd.DataFrame,
    kept: pd.DataFrame,
    *,
    dropped: str | Path | None = None,
    scores: str | Path | None = None,
    captions: str | Path | None = None,
    rejects: str | Path | None = None,
) -> pd.DataFrame:
    """One row per pair: its original and final caption, where the final one came from, its scores, its fate.

    Example:
        >>> source = pd.DataFrame({"pair_id": ["a:0", "a:1"], "image_id": "a", "image": "a.png",
        ...                        "caption": ["a lake", "a road"], "caption_source": "original",
        ...                        "scene": "lake", "split": "train"})
        >>> kept = source.iloc[:1].assign(caption="a lake with trees", caption_source="egl:mask2text:synthrs")
        >>> provenance(source, kept)[["pair_id", "final_caption", "status", "reason"]].values.tolist()
        [['a:0', 'a lake with trees', 'kept', ''], ['a:1', None, 'dropped', 'not in the cleaned manifest']]
    """
    final = kept.set_index("pair_id")
    table = pd.DataFrame(
        {
            "pair_id": source["pair_id"],
            "image": source["image"],
            "scene": source["scene"],
            "split": source["split"],
            "original_caption": source["caption"],
            "final_caption": source["pair_id"].map(final["caption"]),
            "caption_source": source["pair_id"].map(final["caption_source"]).fillna("original"),
        }
    )
    is_kept = ids_in(table["pair_id"], final.index)
    table["status"] = [KEPT if k else DROPPED for k in is_kept]
    table["reason"] = ["" if k else "not in the cleaned manifest" for k in is_kept]
    if dropped is not None:
        why = pd.read_parquet(dropped).set_index("pair_id")
        both = sorted(why.index[ids_in(why.index, final.index)].tolist())
        if both:
            raise ValueError(f"{dropped}: {len(both)} pairs are both kept and dropped (e.g. {both[0]})")
        ratio = why["ratio"].map({r: f"{r:g}" for r in why["ratio"].unique()})  # a few ratios, formatted once
        reasons = (
            "rank " + why["rank"].astype(int).astype(str) + " of " + why["scene_size"].astype(int).astype(str)
            + " in " + why["scene"].astype(str) + ", below the cut of ratio " + ratio
        )  # fmt: skip
        was_dropped = ids_in(table["pair_id"], why.index)
        table.loc[was_dropped, "reason"] = table["pair_id"].map(reasons)
        # A dropped pair's final caption is the one its fused score was measured on (EGL's, if repaired).
        table["final_caption"] = table["final_caption"].fillna(table["pair_id"].map(why["caption"]))
        table["caption_source"] = table["pair_id"].map(why["caption_source"]).where(
            was_dropped, table["caption_source"]
        )
    if captions is not None:
        lineage = pd.read_parquet(captions, columns=["pair_id", "round", "selected"])
        rounds = lineage.loc[lineage["selected"].astype(bool)].set_index("pair_id")["round"]
        table["egl_round"] = table["pair_id"].map(rounds).astype("Int64")
    if scores is not None:
        schema = pq.read_schema(scores)  # only the float columns are copied: read no others
        columns = [f.name for f in schema if pa.types.is_floating(f.type) and f.name != "pair_id"]
        values = pd.read_parquet(scores, columns=["pair_id", *columns]).set_index("pair_id")
        for column in columns:
            table[column] = table["pair_id"].map(values[column])
    table["final_caption"] = table["final_caption"].astype(object).where(table["final_caption"].notna(), None)
    if rejects is not None:
        rejected = pd.read_parquet(rejects)
        table = pd.concat(
            [
                table,
                pd.DataFrame(
                    {
                        "pair_id": rejected["pair_id"],
                        "image": rejected["image"],
                        "scene": rejected["scene"],
                        "split": rejected["split"],
                        "original_caption": rejected["caption"],
                        "caption_source": "original",
                        "status": REJECTED,
                        "reason": rejected["reason"] + ": " + rejected["detail"].fillna(""),
                    }
                ),
            ],
            ignore_index=True,
        )
    return table


def _write_karpathy(root: Path, extra: dict[str, Any], kept: pd.DataFrame, out: Path) -> str:
    """The source's Karpathy JSON with only the kept sentences, repaired ones rewritten; returns its name.

    Source and export are streamed entry by entry (:mod:`dldc.data.json_stream`); the output has the
    bytes ``json.dumps`` of the whole edited document would have, members in the source's order.
    """
    name = extra.get("annotations") or "dataset.json"
    image_dir = extra.get("image_dir")
    if image_dir is None:  # manifests from before ingest recorded it: the reader's own default
        image_dir = "images" if (root / "images").is_dir() else ""
    # One pass over the kept pairs' columns (not a frame per image): (caption index, caption, source) per image.
    by_image: dict[str, list[tuple[int, str, str]]] = {}
    for image, pair_id, caption, source in zip(
        kept["image"].tolist(), kept["pair_id"].tolist(), kept["caption"].tolist(), kept["caption_source"].tolist()
    ):
        by_image.setdefault(image, []).append((int(pair_id.rsplit(":", 1)[1]), caption, source))
    target = resolve_inside(out, name)
    target.parent.mkdir(parents=True, exist_ok=True)  # annotations in a subfolder of the root
    source_file = resolve_inside(root, name)
    try:
        with source_file.open(encoding="utf-8", newline="") as source, target.open("w", encoding="utf-8") as handle:
            handle.write("{")
            for number, (key, value) in enumerate(iter_members(source, "images")):
                handle.write(f"{', ' if number else ''}{_dumps(key)}: ")
                if key != "images" or not isinstance(value, ArrayElements):
                    handle.write(_dumps(value))
                    continue
                handle.write("[")
                written = 0
                for entry in value:
                    kept_entry = _kept_entry(entry, image_dir, by_image)
                    if kept_entry is not None:
                        handle.write(f"{', ' if written else ''}{_dumps(kept_entry)}")
                        written += 1
                handle.write("]")
            handle.write("}")
    except DuplicateKeyError as err:  # json.loads would keep the last value; a stream has written the first
        raise ValueError(f"{name}: {err}; keep one") from None
    if by_image:
        missing = sorted(by_image)
        raise ValueError(f"{name}: {len(missing)} kept images are not in the annotation file (e.g. {missing[0]})")
    return name


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _kept_entry(entry: Any, image_dir: str, by_image: dict[str, list[tuple[int, str, str]]]) -> dict[str, Any] | None:
    """``entry`` with only its kept sentences (repaired ones rewritten), or ``None`` when none is kept.

    Takes the entry's rows out of ``by_image``, so what is left there at the end was never found.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        return None
    sub = entry.get("filepath") if isinstance(entry.get("filepath"), str) else ""
    image = posixpath.normpath(posixpath.join(image_dir, sub, entry["filename"]).replace("\\", "/"))
    image = image[2:] if image.startswith("./") else image
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):  # the reader skipped it too (bad_record)
        return None
    rows = by_image.pop(image, None)
    if rows is None:
        return None
    chosen = []
    for index, caption, source in rows:
        sentence = sentences[index]
        if source != "original":
            sentence = {**sentence, "raw": caption, "tokens": _tokens(caption)} if isinstance(
                sentence, dict) else caption  # fmt: skip
        chosen.append((index, sentence))
    chosen.sort(key=lambda item: item[0])
    entry = {**entry, "sentences": [s for _, s in chosen]}
    if isinstance(entry.get("sentids"), list):
        entry["sentids"] = [s["sentid"] for _, s in chosen if isinstance(s, dict) and "sentid" in s]
    return entry


def _write_folder(kept: pd.DataFrame, out: Path) -> str:
    """``captions.jsonl``: one line per kept pair, in the manifest's order."""
    with (out / FOLDER_CAPTIONS).open("w", encoding="utf-8") as handle:
        for row in kept.itertuples():
            record = {"image": row.image, "caption": row.caption, "scene": row.scene, "split": row.split}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return FOLDER_CAPTIONS


def _place_images(root: Path, images: list[str], out: Path, how: str) -> int:
    """Hard-link (or copy) each image to the same relative path under ``out``; returns how many were linked."""
    linked = 0
    root, out = root.resolve(), out.resolve()
    for image in images:
        source = resolve_inside(root, image, root_resolved=True)
        try:  # the same relative path, so it must stay inside the export too
            target = resolve_inside(out, image, root_resolved=True)
        except PathEscapeError:
            raise ValueError(
                f"image {image!r} is reached through a path that leaves the dataset folder; the export cannot "
                "put it under the same relative path (re-ingest with the images inside the root)"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        if how == "link":
            try:
                os.link(source, target)
                linked += 1
                continue
            except OSError:  # another file system, or links not allowed: copy
                pass
        shutil.copy2(source, target)
    return linked


def _scene_lists(root: Path, extra: dict[str, Any], fmt: str) -> list[Path]:
    """The ``txtclasses_*`` folder a Karpathy source took its scenes from (the export needs it to match)."""
    name = extra.get("scene_lists")
    if fmt != "karpathy" or extra.get("scene_source") != "txtclasses" or not name or not (root / name).is_dir():
        return []  # lists kept outside the dataset root (`--scenes`) go with the ingest settings, not the export
    return [resolve_inside(root, name)]


def _tokens(caption: str) -> list[str]:
    """Karpathy-style tokens: lower-case words without punctuation (what RSICD's files carry)."""
    return [word.strip(".,;:!?\"'()") for word in caption.lower().split() if word.strip(".,;:!?\"'()")]
