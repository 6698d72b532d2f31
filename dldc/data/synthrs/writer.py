"""Writing SynthRS to disk: argument checks, the stratified split, JSON and PNG files.

See :mod:`dldc.data.synthrs` for the files :func:`write_synthrs` writes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dldc.data.synthrs.captions import NOISE_KINDS, clean_captions, noisy_caption
from dldc.data.synthrs.landcover import LAND_COVER
from dldc.data.synthrs.scenes import SCENES, check_scenes, check_size, render_scene

SPLITS: tuple[str, ...] = ("train", "val", "test")

DATASET_NAME = "synthrs"
FORMAT_VERSION = 1

# Independent random streams per image: np.random.default_rng([seed, stream, index]).
_RENDER_STREAM, _CAPTION_STREAM, _NOISE_STREAM, _SPLIT_STREAM = range(4)


def _check_rate(name: str, rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {rate!r}")


def _check_noise_kinds(noise_kinds: Sequence[str] | None) -> tuple[str, ...]:
    if noise_kinds is None:
        return NOISE_KINDS
    if isinstance(noise_kinds, str):
        raise ValueError(f"noise_kinds must be a list of kinds, not the string {noise_kinds!r}")
    unknown = [kind for kind in noise_kinds if kind not in NOISE_KINDS]
    if unknown or not noise_kinds or len(set(noise_kinds)) != len(noise_kinds):
        raise ValueError(f"noise_kinds must list distinct kinds of {', '.join(NOISE_KINDS)} (at least one), "
                         f"got {list(noise_kinds)!r}")
    return tuple(noise_kinds)


def _check_arguments(n_images: int, size: int, noise_rate: float, seed: int, captions_per_image: int,
                     scenes: Sequence[str], noise_rate_by_scene: Mapping[str, float],
                     split_ratios: Sequence[float]) -> None:
    if isinstance(scenes, str):
        raise ValueError(f"scenes must be a list of scene names, not the string {scenes!r}")
    if not scenes:
        raise ValueError(f"scenes must name at least one scene; valid scenes: {', '.join(SCENES)}")
    check_scenes(scenes)
    duplicates = sorted(scene for scene, count in Counter(scenes).items() if count > 1)
    if duplicates:
        raise ValueError(f"scenes lists {', '.join(duplicates)} more than once")
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < len(scenes):
        raise ValueError(f"n_images must be an integer of at least the number of scenes ({len(scenes)}), "
                         f"got {n_images!r}")
    check_size(size)
    _check_rate("noise_rate", noise_rate)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(captions_per_image, bool) or not isinstance(captions_per_image, (int, np.integer)) \
            or captions_per_image < 1:
        raise ValueError(f"captions_per_image must be a positive integer, got {captions_per_image!r}")
    check_scenes(list(noise_rate_by_scene))
    for scene, rate in noise_rate_by_scene.items():
        _check_rate(f"noise_rate_by_scene[{scene!r}]", rate)
    if len(split_ratios) != 3 or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not r >= 0
                                     for r in split_ratios):
        raise ValueError(f"split_ratios must be three non-negative numbers (train, val, test), got {split_ratios!r}")
    if abs(sum(split_ratios) - 1.0) > 1e-6:
        raise ValueError(f"split_ratios must sum to 1, got {tuple(split_ratios)} (sum {sum(split_ratios):g})")


def _split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of ``n`` items to the splits."""
    exact = [n * ratio for ratio in ratios]
    counts = [int(math.floor(value)) for value in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:n - sum(counts)]:
        counts[i] += 1
    return counts


def _assign_splits(image_scenes: Sequence[str], ratios: Sequence[float], seed: int) -> list[str]:
    """Stratified, seeded split per scene."""
    splits = [""] * len(image_scenes)
    for scene in dict.fromkeys(image_scenes):
        members = [i for i, s in enumerate(image_scenes) if s == scene]
        rng = np.random.default_rng([seed, _SPLIT_STREAM, SCENES.index(scene)])
        shuffled = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for split, count in zip(SPLITS, _split_counts(len(members), ratios)):
            for i in shuffled[start:start + count]:
                splits[i] = split
            start += count
    return splits


def _tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", caption.lower())


def _dump_json(path: Path, data: Any, indent: int | None = None) -> None:
    separators = (",", ": ") if indent else (",", ":")
    path.write_text(json.dumps(data, sort_keys=True, indent=indent, separators=separators, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def _dump_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")


def _palette_json() -> list[dict[str, Any]]:
    return [{"index": index, "name": name, "color": "#{:02x}{:02x}{:02x}".format(*rgb)}
            for index, name, rgb in LAND_COVER]


_PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}
_MASK_PALETTE = [channel for _, _, rgb in LAND_COVER for channel in rgb]


def save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, **_PNG_OPTIONS)


def save_mask(mask: np.ndarray, path: Path) -> None:
    picture = Image.fromarray(mask)
    picture.putpalette(_MASK_PALETTE)
    picture.save(path, **_PNG_OPTIONS)


def _looks_like_synthrs(folder: Path) -> bool:
    return (folder / "synthrs.json").is_file() or (folder / f"dataset_{DATASET_NAME}.json").is_file()


def write_synthrs(
    out: str | Path,
    *,
    n_images: int = 400,
    size: int = 64,
    noise_rate: float = 0.3,
    seed: int = 0,
    captions_per_image: int = 5,
    scenes: Sequence[str] | None = None,
    noise_rate_by_scene: Mapping[str, float] | None = None,
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    noise_kinds: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """Generate SynthRS into ``out`` (Karpathy layout, see the module docstring).

    The dataset is built in a temporary sibling folder and then moved into place, replacing
    an existing ``out`` that holds an earlier SynthRS. Same arguments, byte-identical files.

    Args:
        out: output folder.
        n_images: number of images, spread round-robin over the scenes.
        size: image side in pixels (at least 16).
        noise_rate: probability that a caption is replaced by a noisy one.
        seed: random seed (non-negative integer).
        captions_per_image: captions wanted per image; fewer if a layout gives fewer distinct
            captions (never fewer than ``MIN_CAPTIONS_PER_SCENE``).
        scenes: scene classes to generate, in round-robin order; default all of ``SCENES``.
        noise_rate_by_scene: per-scene overrides of ``noise_rate``.
        split_ratios: train/val/test shares, stratified per scene.
        noise_kinds: the kinds a noisy caption is drawn from (uniformly); default all of
            ``NOISE_KINDS`` (same draws, hence the same files, as before this option existed).
        progress: show a tqdm progress bar.

    Returns:
        The summary also written to ``synthrs.json``: parameters and counts per scene, per
        split and of noisy captions per kind.

    Raises:
        ValueError: for invalid arguments, or when ``out`` exists and is not a SynthRS folder.
    """
    scenes = list(SCENES if scenes is None else scenes)
    noise_rate_by_scene = dict(noise_rate_by_scene or {})
    _check_arguments(n_images, size, noise_rate, seed, captions_per_image, scenes, noise_rate_by_scene,
                     split_ratios)
    kinds = _check_noise_kinds(noise_kinds)
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _looks_like_synthrs(out))):
        raise ValueError(f"{out} exists and is not a SynthRS folder; refusing to replace it")

    n_images, size, seed, captions_per_image = int(n_images), int(size), int(seed), int(captions_per_image)
    rates = {scene: float(noise_rate_by_scene.get(scene, noise_rate)) for scene in scenes}
    image_scenes = [scenes[index % len(scenes)] for index in range(n_images)]
    splits = _assign_splits(image_scenes, split_ratios, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        summary = _write_into(staging, image_scenes, splits, rates, size=size, seed=seed,
                              captions_per_image=captions_per_image, noise_kinds=kinds, progress=progress)
        summary["params"] = {
            "n_images": n_images, "size": size, "noise_rate": float(noise_rate), "seed": seed,
            "captions_per_image": captions_per_image, "scenes": scenes,
            "noise_rate_by_scene": {scene: float(rate) for scene, rate in sorted(noise_rate_by_scene.items())},
            "split_ratios": [float(ratio) for ratio in split_ratios],
            "noise_kinds": list(kinds),
        }
        _dump_json(staging / "synthrs.json", summary, indent=2)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _write_into(folder: Path, image_scenes: Sequence[str], splits: Sequence[str], rates: Mapping[str, float], *,
                size: int, seed: int, captions_per_image: int, noise_kinds: Sequence[str],
                progress: bool) -> dict[str, Any]:
    for sub in ("images", "masks", f"txtclasses_{DATASET_NAME}", "truth"):
        (folder / sub).mkdir(parents=True)
    scenes = list(dict.fromkeys(image_scenes))
    indices = range(len(image_scenes))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="SynthRS", unit="img")

    numbers: Counter[str] = Counter()
    records, noise_rows, layout_rows = [], [], []
    files_by_scene: dict[str, list[str]] = {scene: [] for scene in scenes}
    noisy_by_kind = Counter({kind: 0 for kind in NOISE_KINDS})
    noisy_by_scene = Counter({scene: 0 for scene in scenes})
    sentid = 0
    for index in indices:
        scene = image_scenes[index]
        numbers[scene] += 1
        filename = f"{scene}_{numbers[scene]:04d}.png"
        sample = render_scene(scene, size, np.random.default_rng([seed, _RENDER_STREAM, index]))
        save_png(sample.image, folder / "images" / filename)
        save_mask(sample.mask, folder / "masks" / filename)
        files_by_scene[scene].append(filename)
        layout_rows.append({"filename": filename, "scene": scene, "layout": sample.layout})

        clean = clean_captions(scene, sample.layout, captions_per_image,
                               np.random.default_rng([seed, _CAPTION_STREAM, index]))
        noise_rng = np.random.default_rng([seed, _NOISE_STREAM, index])
        is_noisy = noise_rng.random(len(clean)) < rates[scene]
        kinds = noise_rng.integers(len(noise_kinds), size=len(clean))
        sentences, captions = [], list(clean)
        for k, caption in enumerate(clean):
            kind, source_scene = None, None
            if is_noisy[k]:
                kind = noise_kinds[kinds[k]]
                for _ in range(20):  # a noisy caption differs from every caption of the image
                    candidate, source_scene = noisy_caption(kind, scene, sample.layout, caption, noise_rng)
                    if candidate not in captions:
                        break
                captions[k] = candidate
                noisy_by_kind[kind] += 1
                noisy_by_scene[scene] += 1
            sentences.append({"raw": captions[k], "tokens": _tokens(captions[k]), "imgid": index, "sentid": sentid})
            noise_rows.append({"filename": filename, "sentid": sentid, "noisy": bool(is_noisy[k]), "kind": kind,
                               "clean": caption, "source_scene": source_scene})
            sentid += 1
        records.append({"filename": filename, "imgid": index, "split": splits[index], "sentences": sentences,
                        "sentids": [sentence["sentid"] for sentence in sentences]})

    _dump_json(folder / f"dataset_{DATASET_NAME}.json", {"dataset": DATASET_NAME, "images": records})
    for scene, filenames in files_by_scene.items():
        (folder / f"txtclasses_{DATASET_NAME}" / f"{scene}.txt").write_text("\n".join(filenames) + "\n",
                                                                             encoding="utf-8")
    _dump_json(folder / "palette.json", _palette_json(), indent=2)
    _dump_jsonl(folder / "truth" / "noise_labels.jsonl", noise_rows)
    _dump_jsonl(folder / "truth" / "layouts.jsonl", layout_rows)

    per_scene_split = {scene: {split: 0 for split in SPLITS} for scene in scenes}
    for scene, split in zip(image_scenes, splits):
        per_scene_split[scene][split] += 1
    n_noisy = sum(noisy_by_kind.values())
    return {
        "dataset": DATASET_NAME,
        "format_version": FORMAT_VERSION,
        "n_images": len(image_scenes),
        "n_captions": sentid,
        "n_noisy_captions": n_noisy,
        "noisy_share": round(n_noisy / sentid, 6) if sentid else 0.0,
        "images_per_scene": {scene: len(files) for scene, files in files_by_scene.items()},
        "images_per_split": {split: sum(1 for s in splits if s == split) for split in SPLITS},
        "images_per_scene_split": per_scene_split,
        "noisy_captions_per_kind": dict(noisy_by_kind),
        "noisy_captions_per_scene": dict(noisy_by_scene),
        "land_cover": [name for _, name, _ in LAND_COVER],
    }
