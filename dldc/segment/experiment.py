"""``dldc segment``: does synthetic data from the cleaned fine-tune make a better segmenter?

Arms (the same segmenter, steps, batch size, learning rate and seed for every arm)
    * ``real``: trained on the real training split only (shared by both protocols);
    * one arm per ``cfg.arms`` entry (``base``, ``raw``, ``clean`` in the demo): real training
      patches + that model's synthetic images, drawn uniformly from the union, masks from the
      protocol (:mod:`dldc.segment.synthetic`).

The segmenter of the ``real`` arm also judges every synthetic image: its *layout agreement* is the
share of the source mask's labelled pixels where that segmenter's prediction matches the layout
the prompt asked for, and an arm's mean is its *layout fidelity* (``results.json`` →
``synthetic.<arm>.layout_fidelity``). ``layout-prompt`` keeps only images that agree on at least
``cfg.layout_filter`` of their pixels (the rest are in ``rejects.parquet``): an image that does not
show its layout would teach the segmenter wrong masks.

Every arm is scored on the same real test split (tiles never seen in training): mIoU, mAcc,
aAcc, per-class IoU / Acc, the confusion matrix, and bootstrap intervals over test tiles.

Output contract (``cfg.out`` = ``DIR``)::

    DIR/
      results.json        config, data (tiles / patches per split, rejects), classes, and per
                          protocol and arm: metrics, intervals, per-class values, confusion matrix
      results.md          one table: protocol, arm, training patches, mIoU [CI], mAcc [CI], ΔmIoU
      per_class.parquet   protocol, arm, class, IoU, Acc (one row per class)
      segment.json        headline numbers (DVC metrics): <protocol>.<arm>.mIoU / mAcc
      split.json          tile → split
      rejects.parquet     image, reason, detail (nothing is dropped silently)
      runs/real/, runs/<protocol>/<arm>/   train.json, model.safetensors, checkpoint.pt
      synthetic/          prompts and generated images (see dldc.segment.synthetic)

Same inputs, nothing recomputed: runs whose fingerprint (settings + data) matches are reused,
generated images are reused while their arm's settings hold. ``DIR`` is locked while a run
writes it (:func:`dldc.io.output_lock`): a second run on the same folder is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dldc.config import SegmentConfig
from dldc.data.class_tables import load_class_table
from dldc.io import atomic_path, output_lock, png_intact, remove_stale_temps, write_json, write_parquet
from dldc.segment.datasets import LAYOUTS, SPLITS, LabelSpace, Layout, PatchSet, list_pairs, load_patches
from dldc.segment.datasets import split_tiles as make_split
from dldc.segment.metrics import bootstrap_intervals, scores
from dldc.segment.synthetic import (
    DiffusersRenderer,
    Renderer,
    layout_prompts,
    synthesize_arm,
    synthrs_scene,
    write_prompts,
)
from dldc.segment.trainer import load_segmenter, predict, tile_confusions, train_segmenter

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
PER_CLASS_FILE = "per_class.parquet"
SUMMARY_FILE = "segment.json"
REAL_ARM = "real"


def layout_of(cfg: SegmentConfig) -> Layout:
    """The dataset layout of ``cfg`` (a preset, or the ``folder`` settings), with ``cfg.classes`` applied."""
    if cfg.dataset == "folder":
        base = Layout(cfg.image_glob, cfg.mask_pattern, cfg.mask_replace, cfg.classes or "", cfg.binarize)
        if not cfg.classes:
            raise ValueError("segment.dataset 'folder' needs segment.classes (a class table name or JSON path)")
        return base
    preset = LAYOUTS[cfg.dataset]
    return Layout(preset.image_glob, preset.mask_pattern, preset.mask_replace, cfg.classes or preset.table,
                  preset.binarize or cfg.binarize)


def load_splits(cfg: SegmentConfig) -> tuple[LabelSpace, dict[str, PatchSet], dict[str, str], list[dict[str, str]]]:
    """Read the dataset, split it by tile and cut each split into patches.

    Returns:
        ``(label space, {split: patches}, {tile: split}, rejects)``.
    """
    layout = layout_of(cfg)
    space = LabelSpace.from_table(load_class_table(layout.table), cfg.ignore_index)
    listing = list_pairs(cfg.root, layout, cfg.split_by)
    if not listing.pairs:
        raise FileNotFoundError(f"no image of {cfg.root} has a mask ({len(listing.rejects)} rejected); see rejects")
    assignment = make_split([p.tile for p in listing.pairs], cfg.split_ratios, cfg.split_seed)
    rejects = list(listing.rejects)
    splits = {}
    for split in SPLITS:
        pairs = [p for p in listing.pairs if assignment[p.tile] == split]
        train = split == "train"
        splits[split] = load_patches(
            cfg.root, pairs, space, cfg.patch_size, cfg.stride if train else cfg.patch_size, cfg.scale,
            layout.binarize, cfg.max_pixels, rejects, exclusive=not train,
        )  # fmt: skip
    if len(splits["train"]) == 0 or len(splits["test"]) == 0:
        raise ValueError(f"the split has no training or no test patch ({len(listing.pairs)} images); add images")
    return space, splits, assignment, rejects


def evaluate_run(
    run: Path, space: LabelSpace, test: PatchSet, cfg: SegmentConfig, report: dict[str, Any]
) -> dict[str, Any]:
    """Test-split metrics of a trained run: scores, bootstrap intervals, confusion matrix."""
    model = load_segmenter(run, space.num_classes, cfg)
    matrices = tile_confusions(model, test, space.num_classes, cfg.ignore_index)
    total = sum(matrices.values())
    values = scores(total)
    return {
        "mIoU": values["mIoU"],
        "mAcc": values["mAcc"],
        "aAcc": values["aAcc"],
        "ci": bootstrap_intervals(matrices, cfg.bootstrap, cfg.ci, cfg.seed),
        "IoU": dict(zip(space.names, values["IoU"])),
        "Acc": dict(zip(space.names, values["Acc"])),
        "confusion": total.tolist(),
        "test_tiles": len(matrices),
        "train_patches": report["train_patches"],
        "extra_patches": report.get("extra_patches", 0),  # synthetic patches among train_patches
        "final_loss": report["final_loss"],
        "val_curve": report["val_curve"],
        "reused": report.get("reused", False),
    }


def run_segment(
    cfg: SegmentConfig,
    progress: bool = True,
    renderer: Renderer | None = None,
    on_log: Callable[[str, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Run every arm of every protocol and write the results (see the module docstring).

    Args:
        cfg: the segment section.
        renderer: makes the synthetic images (default: :class:`DiffusersRenderer` of ``cfg``).
        on_log: ``(run name, step, values)`` for the training curves.

    Returns:
        The content of ``results.json``.

    Raises:
        FileNotFoundError: the dataset, the base or an adapter is missing.
        ValueError: a mask that does not fit the class table, or an empty split.
        dldc.io.OutputLockedError: another process is writing ``cfg.out``.
    """
    with output_lock(cfg.out):
        return _run_segment(cfg, progress, renderer, on_log)


def _run_segment(
    cfg: SegmentConfig,
    progress: bool,
    renderer: Renderer | None,
    on_log: Callable[[str, int, dict[str, float]], None] | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # what killed runs left
    space, splits, assignment, rejects = load_splits(cfg)
    write_json(out / "split.json", assignment)
    train, val, test = splits["train"], splits["val"], splits["test"]

    def log_for(name: str) -> Callable[[int, dict[str, float]], None] | None:
        return (lambda step, values: on_log(name, step, values)) if on_log else None

    def train_and_evaluate(name: str, extra: PatchSet | None = None) -> dict[str, Any]:
        run = out / "runs" / name
        report = train_segmenter(train, val, space.num_classes, cfg, run, progress, log_for(name), desc=name,
                                 extra=extra)  # fmt: skip
        return evaluate_run(run, space, test, cfg, report)

    results: dict[str, dict[str, Any]] = {REAL_ARM: train_and_evaluate(REAL_ARM)}
    synthetic: dict[str, Any] = {}
    arms = dict(cfg.arms) if cfg.protocols else {}
    if arms:
        scene_of = synthrs_scene if cfg.dataset == "synthrs" else None
        prompts, prompt_rejects, picked = layout_prompts(train, space, cfg, scene_of)
        rejects += prompt_rejects
        if prompts.empty:
            raise ValueError("no training patch could be described for the layout prompts (all unlabeled?)")
        write_prompts(out / "synthetic", prompts)
        renderer = renderer or DiffusersRenderer(cfg)
        source_labels = train.labels[picked]
        # The segmenter trained on the real training split only: pseudo-labeller and layout judge.
        real_model = load_segmenter(out / "runs" / REAL_ARM, space.num_classes, cfg)
        ids = prompts["synth_id"].tolist()
        for arm, adapter in arms.items():
            # synthesize_arm reuses every image file that exists; a damaged one is made again instead.
            for image in sorted((out / "synthetic" / arm / "images").glob("*.png")):
                if not png_intact(image):
                    image.unlink()
            images, counts = synthesize_arm(
                out / "synthetic", arm, adapter, prompts, renderer, cfg.patch_size, cfg.gen_batch_size, progress
            )
            predicted, confidence = predict(real_model, images)
            agreement = layout_agreement(predicted, source_labels, cfg.ignore_index)
            synthetic[arm] = {"images": len(images), **counts, "layout_fidelity": _mean(agreement)}
            for protocol in cfg.protocols:
                keep = np.ones(len(images), dtype=bool)
                if protocol == "layout-prompt":
                    labels = source_labels
                    if cfg.layout_filter is not None:
                        keep = agreement >= cfg.layout_filter
                        rejects += [
                            {"image": f"synthetic:{arm}/{ids[i]}", "reason": "layout_filter",
                             "detail": f"segmenter agrees with the prompt's layout on {agreement[i]:.2f} of the "
                                       f"pixels < segment.layout_filter={cfg.layout_filter}"}
                            for i in np.flatnonzero(~keep)
                        ]  # fmt: skip
                        synthetic[arm]["layout_filter_kept"] = int(keep.sum())
                else:
                    unsure = confidence < cfg.pseudo_label_threshold
                    labels = np.where(unsure, cfg.ignore_index, predicted).astype(np.uint8)
                kept = np.flatnonzero(keep)
                extra = PatchSet(images[kept], labels[kept], [f"synthetic:{arm}"] * len(kept),
                                 [ids[i] for i in kept], [(0, 0)] * len(kept))  # fmt: skip
                name = f"{protocol}/{arm}"
                results[name] = train_and_evaluate(name, extra)
    write_parquet(
        out / "rejects.parquet",
        pa.Table.from_pylist(rejects, schema=pa.schema([("image", pa.string()), ("reason", pa.string()),
                                                        ("detail", pa.string())])),
    )  # fmt: skip
    report = {
        "config": cfg.model_dump(mode="json"),
        "protocols": list(cfg.protocols),
        "classes": list(space.names),
        "class_table": space.table.name,
        "data": {
            split: {"tiles": len(set(splits[split].tiles)), "patches": len(splits[split])} for split in SPLITS
        }
        | {"rejects": len(rejects)},
        "synthetic": synthetic,
        "runs": results,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out / RESULTS_FILE, _finite(report))
    with atomic_path(out / TABLE_FILE) as tmp:
        tmp.write_text(results_table(report), encoding="utf-8")
    per_class = [
        {"protocol": _protocol_of(name), "arm": _arm_of(name), "class": c, "IoU": run["IoU"][c], "Acc": run["Acc"][c]}
        for name, run in results.items()
        for c in space.names
    ]
    write_parquet(out / PER_CLASS_FILE, pa.Table.from_pandas(pd.DataFrame(per_class), preserve_index=False))
    write_json(out / SUMMARY_FILE, _finite(summary(report)))
    return report


def layout_agreement(predicted: np.ndarray, intended: np.ndarray, ignore_index: int) -> np.ndarray:
    """Per image, the share of the intended mask's labelled pixels where the prediction agrees (NaN: none labelled).

    Example:
        >>> intended = np.array([[[0, 1], [1, 255]]], dtype=np.uint8)
        >>> layout_agreement(np.array([[[0, 1], [0, 0]]], dtype=np.uint8), intended, 255).round(3).tolist()
        [0.667]
    """
    labelled = intended != ignore_index
    hits = ((predicted == intended) & labelled).reshape(len(intended), -1).sum(1)
    counts = labelled.reshape(len(intended), -1).sum(1)
    return np.divide(hits, counts, out=np.full(len(intended), np.nan), where=counts > 0)


def _mean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def _protocol_of(name: str) -> str:
    return name.split("/")[0] if "/" in name else "none"


def _arm_of(name: str) -> str:
    return name.split("/")[-1]


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers ``{run: {"mIoU", "mAcc", "mIoU_low", ...}}``; run: ``real`` or ``<protocol>.<arm>``."""
    out = {}
    for name, run in report["runs"].items():
        entry = {"mIoU": run["mIoU"], "mAcc": run["mAcc"]}
        for metric, (low, high) in run["ci"].items():
            entry[f"{metric}_low"], entry[f"{metric}_high"] = low, high
        out[name.replace("/", ".")] = entry
    return out


def results_table(report: dict[str, Any]) -> str:
    """The markdown results table (protocol named in each row; intervals in brackets)."""
    runs = report["runs"]
    real = runs[REAL_ARM]
    cfg = report["config"]
    lines = [
        f"# Downstream segmentation ({cfg['dataset']}, {cfg['model']}, {cfg['steps']} steps x batch "
        f"{cfg['batch_size']}, {report['data']['test']['tiles']} test tiles)",
        "",
        f"Intervals: {round(100 * cfg['ci'])}% bootstrap over test tiles ({cfg['bootstrap']} resamples). "
        "Every arm: same segmenter, budget and seed; synthetic arms add generated images to the real training split.",
        "",
        "| protocol | arm | training patches (real + synthetic) | mIoU | mAcc | ΔmIoU vs real |",
        "|---|---|---|---|---|---|",
    ]
    order = [REAL_ARM] + [f"{p}/{arm}" for p in report["protocols"] for arm in report["synthetic"]]
    for name in [n for n in order if n in runs]:
        run = runs[name]
        synthetic = run.get("extra_patches", 0)
        real_patches = run["train_patches"] - synthetic
        delta = "" if name == REAL_ARM else f"{100 * (run['mIoU'] - real['mIoU']):+.2f}"
        lines.append(
            f"| {_protocol_of(name)} | {_arm_of(name)} | {real_patches} + {synthetic} | "
            f"{_with_ci(run, 'mIoU')} | {_with_ci(run, 'mAcc')} | {delta} |"
        )
    if report["synthetic"]:
        fidelity = ", ".join(
            f"{arm} {arm_info['layout_fidelity']:.3f}" + (f" ({arm_info['layout_filter_kept']} kept)"
                                                           if "layout_filter_kept" in arm_info else "")
            for arm, arm_info in report["synthetic"].items()
        )  # fmt: skip
        lines += ["", f"Layout fidelity (the real-only segmenter's agreement with the prompts' layouts): {fidelity}."]
    names = report["classes"]
    lines += ["", "Per-class IoU (%):", "", "| run | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, run in runs.items():
        cells = ["" if _nan(run["IoU"][c]) else f"{100 * run['IoU'][c]:.1f}" for c in names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _with_ci(run: dict[str, Any], metric: str) -> str:
    value = run[metric]
    if _nan(value):
        return "n/a"
    text = f"{100 * value:.2f}"
    if metric in run["ci"]:
        low, high = run["ci"][metric]
        text += f" [{100 * low:.2f}, {100 * high:.2f}]"
    return text


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _finite(value: Any) -> Any:
    """NaN → ``None`` (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
