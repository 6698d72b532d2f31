"""Training and evaluating one segmenter: a readable, seeded, resumable loop.

Loop
    AdamW with a cosine learning-rate decay over ``cfg.steps``; pixel cross-entropy with
    ``ignore_index``, weighted per class by ``cfg.class_weighting`` (:func:`class_weights`, from
    the real training pixels, so every arm weighs classes alike). Batch ``s`` is
    ``cfg.batch_size`` patches drawn with ``np.random.default_rng([seed, s])`` (with replacement)
    and flipped horizontally and/or vertically by the same stream, so a batch depends only on the
    step: a resumed run sees the very batches an uninterrupted one would.

Paired arms
    The real patches and the ``extra`` (synthetic) ones are drawn with common random numbers:
    each batch slot takes one uniform number that picks the source (extra with probability
    ``n_extra / (n_real + n_extra)``, so the union is sampled uniformly) and another that picks
    the patch within it. Two arms with the same seed therefore see the same real patch in
    every slot where both draw a real one, and the real-only arm's batches are the real slots
    of every other arm's. Differences between arms then come from the synthetic patches more
    than from batch order, which alone moved a 300-step run's mIoU by several points.

Checkpoints
    ``checkpoint.pt`` (model, optimizer, scheduler, step, curves, fingerprint) is written
    atomically every ``cfg.checkpoint_every`` steps, its sha256 beside it
    (``checkpoint.pt.sha256``), and read back with ``torch.load(weights_only=True)``
    (:func:`dldc.io.load_tensors`: a file with other pickled objects is refused). A checkpoint of
    other settings or other data (another fingerprint), or one that does not match its checksum
    (damaged, or written by a killed run), is ignored. The final weights are ``model.safetensors``;
    a finished run is reused only while they match the sha256 recorded in ``train.json``.

Example::

    report = train_segmenter(train, val, num_classes=10, cfg=SegmentConfig(steps=50), out="runs/real")
    model = load_segmenter("runs/real", num_classes=10, cfg=cfg)
    matrices = tile_confusions(model, test, 10, 255)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn import functional as F
from tqdm.auto import tqdm

from dldc.config import SegmentConfig
from dldc.device import resolve_device, set_threads
from dldc.io import (
    atomic_path,
    checksum_ok,
    file_sha256,
    finished_report,
    load_tensors,
    write_checksum,
    write_json,
    write_safetensors,
    write_torch,
)
from dldc.segment.datasets import PatchSet
from dldc.segment.metrics import confusion_matrix, scores
from dldc.segment.models import create_segmenter, normalise

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
REPORT_FILE = "train.json"
TRAIN_FIELDS = ("model", "widths", "steps", "batch_size", "lr", "weight_decay", "class_weighting", "seed",
                "ignore_index")
MAX_CLASS_WEIGHT = 10.0
SAMPLER = "paired-v1"  # the batch sampler (part of the fingerprint: old checkpoints are not resumed)

log = logging.getLogger(__name__)


def data_digest(*parts: PatchSet) -> str:
    """sha256 of the patches' pixels and labels (what a checkpoint must have been trained on)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(np.ascontiguousarray(part.images).tobytes())
        digest.update(np.ascontiguousarray(part.labels).tobytes())
    return digest.hexdigest()


def train_fingerprint(cfg: SegmentConfig, num_classes: int, digest: str) -> str:
    """What the weights depend on: the training settings, the sampler, the classes and the data."""
    settings = {name: getattr(cfg, name) for name in TRAIN_FIELDS}
    text = json.dumps({"settings": settings, "sampler": SAMPLER, "num_classes": num_classes, "data": digest},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def batch_for_step(
    seed: int, step: int, n_real: int, batch_size: int, n_extra: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch indices and horizontal / vertical flip flags of batch ``step`` (depends on the step only).

    Indices below ``n_real`` are real patches, the rest extra ones (see "Paired arms" above).

    Example:
        >>> real_only, _, _ = batch_for_step(0, 5, n_real=100, batch_size=8)
        >>> paired, _, _ = batch_for_step(0, 5, n_real=100, batch_size=8, n_extra=20)
        >>> bool(((paired == real_only) | (paired >= 100)).all())  # each slot: the same real patch, or an extra one
        True
    """
    rng = np.random.default_rng([seed, step])
    source, pick = rng.random(batch_size), rng.random(batch_size)
    hflip, vflip = rng.random(batch_size) < 0.5, rng.random(batch_size) < 0.5
    real = np.minimum((pick * n_real).astype(np.int64), n_real - 1)
    if not n_extra:
        return real, hflip, vflip
    extra = n_real + np.minimum((pick * n_extra).astype(np.int64), n_extra - 1)
    return np.where(source < n_extra / (n_real + n_extra), extra, real), hflip, vflip


def class_weights(labels: np.ndarray, num_classes: int, ignore_index: int, weighting: str) -> np.ndarray | None:
    """Loss weight per class: ``None`` for ``none``; for ``inverse_sqrt``, 1 / sqrt(pixel share).

    Normalised to a mean of 1 over the classes present and capped at :data:`MAX_CLASS_WEIGHT`;
    absent classes get 0 (nothing to weigh).

    Example:
        >>> labels = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 255]])
        >>> class_weights(labels, 3, 255, "inverse_sqrt").round(3).tolist()  # shares 13/15 and 2/15
        [0.563, 1.437, 0.0]
    """
    if weighting == "none":
        return None
    counts = np.bincount(labels[labels != ignore_index].ravel(), minlength=num_classes)[:num_classes].astype(float)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = 1.0 / np.sqrt(counts[present] / counts.sum())
    weights[present] /= weights[present].mean()
    return np.minimum(weights, MAX_CLASS_WEIGHT)


def _batch(data: PatchSet, index: np.ndarray, hflip: np.ndarray, vflip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data.images[index].copy(), data.labels[index].copy()
    images[hflip], labels[hflip] = images[hflip, :, ::-1], labels[hflip, :, ::-1]
    images[vflip], labels[vflip] = images[vflip, ::-1], labels[vflip, ::-1]
    return images, labels


def train_segmenter(
    train: PatchSet,
    val: PatchSet | None,
    num_classes: int,
    cfg: SegmentConfig,
    out: str | Path,
    progress: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    stop_after: int | None = None,
    desc: str = "segment",
    extra: PatchSet | None = None,
) -> dict[str, Any]:
    """Train a segmenter on ``train`` (+ ``extra``) for ``cfg.steps`` steps (see the module docstring).

    Args:
        train: training patches (labels in ``0..num_classes-1`` or ``cfg.ignore_index``).
        val: validation patches for the validation curve (``None`` or empty: no curve).
        num_classes: classes of the label space.
        cfg: the segment section (model, budget, seed, checkpoint period, device).
        out: run folder (``checkpoint.pt``, ``model.safetensors``, ``train.json``).
        on_log: called with ``(step, {"loss": mean since the last call})`` (about 200 times a run) and
            ``(step, {"val_mIoU": ...})``.
        stop_after: stop after this many steps without finishing (tests of resuming).
        extra: more training patches (synthetic ones), drawn paired with ``train`` (see "Paired arms").

    Returns:
        The report written to ``train.json`` (``fingerprint``, ``steps``, ``resumed_from``,
        ``losses``, ``val_curve``, ``final_loss``), or ``{"stopped_at": step}``.

    Raises:
        ValueError: no training patch, or a label outside the classes.
        dldc.io.UnsafeCheckpointError: ``checkpoint.pt`` holds pickled objects other than tensors.
    """
    if len(train) == 0:
        raise ValueError("no training patch: check the dataset root, layout and split ratios")
    n_real, n_extra = len(train), len(extra) if extra is not None else 0
    data = PatchSet.concat([train, extra]) if n_extra else train
    bad = (data.labels != cfg.ignore_index) & (data.labels >= num_classes)
    if bad.any():
        found = int(data.labels[bad].max())
        raise ValueError(f"training labels must be < {num_classes} or {cfg.ignore_index} (ignored); found {found}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = train_fingerprint(cfg, num_classes, data_digest(*([train, extra] if n_extra else [train])))
    report_path = out / REPORT_FILE
    previous = _finished(out, fingerprint)
    if previous is not None:
        return {**previous, "reused": True}
    device = resolve_device(cfg.device)
    weights = class_weights(train.labels, num_classes, cfg.ignore_index, cfg.class_weighting)  # real pixels only
    loss_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = create_segmenter(cfg.model, num_classes, cfg.widths).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    )
    start, losses, val_curve, resumed_from = 0, [], [], []
    checkpoint = out / CHECKPOINT_FILE
    if checkpoint.is_file() and not checksum_ok(checkpoint):
        log.warning("%s is damaged or unfinished; training %s from step 0", checkpoint, out)
    elif checkpoint.is_file():
        state = load_tensors(checkpoint, map_location=device)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            start, losses, val_curve = int(state["step"]), list(state["losses"]), [list(v) for v in state["val_curve"]]
            resumed_from.append(start)
    log_every = max(1, cfg.steps // 200)  # at most ~200 points per curve, each the mean loss since the last
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not progress)
    for step in range(start, cfg.steps):
        if stop_after is not None and step >= start + stop_after:
            bar.close()
            return {"stopped_at": step}
        model.train()
        images, labels = _batch(data, *batch_for_step(cfg.seed, step, n_real, cfg.batch_size, n_extra))
        x = normalise(torch.from_numpy(images).to(device))
        y = torch.from_numpy(labels).long().to(device)
        logits = model(x)
        if (y != cfg.ignore_index).any():
            loss = F.cross_entropy(logits, y, weight=loss_weight, ignore_index=cfg.ignore_index)
        else:  # a batch of unlabeled pixels only: nothing to learn, keep the step (same schedule)
            loss = logits.sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if on_log and (done % log_every == 0 or done == cfg.steps):
            on_log(step, {"loss": float(np.mean(losses[-log_every:]))})
        if val is not None and len(val) and (done % cfg.eval_every == 0 or done == cfg.steps):
            val_miou = scores(sum(tile_confusions(model, val, num_classes, cfg.ignore_index).values()))["mIoU"]
            val_curve.append([done, val_miou])
            if on_log:
                on_log(step, {"val_mIoU": val_miou})
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "step": done,
                "losses": losses,
                "val_curve": val_curve,
                "fingerprint": fingerprint,
            }
            with atomic_path(checkpoint) as tmp:
                write_torch(tmp, state)
            write_checksum(checkpoint)
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    with atomic_path(out / MODEL_FILE) as tmp:
        write_safetensors(tmp, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    report = {
        "fingerprint": fingerprint,
        "model": cfg.model,
        "model_sha256": file_sha256(out / MODEL_FILE),
        "num_classes": num_classes,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "train_patches": len(data),
        "extra_patches": n_extra,
        "class_weights": None if weights is None else [round(float(w), 4) for w in weights],
        "resumed_from": resumed_from,
        "losses": losses,
        "final_loss": losses[-1],
        "val_curve": val_curve,
    }
    write_json(report_path, report)
    return {**report, "reused": False}


def _finished(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """``train.json`` of a finished run of ``fingerprint`` whose weights still match their recorded sha256."""
    return finished_report(out / REPORT_FILE, "fingerprint", fingerprint, lambda r: {MODEL_FILE: r.get("model_sha256")})


def load_segmenter(run: str | Path, num_classes: int, cfg: SegmentConfig) -> torch.nn.Module:
    """The trained model of a run folder, in eval mode on ``cfg.device``."""
    model = create_segmenter(cfg.model, num_classes, cfg.widths)
    model.load_state_dict(load_file(str(Path(run) / MODEL_FILE)))
    return model.to(resolve_device(cfg.device)).eval()


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W, 3)`` uint8 → (labels ``(N, H, W)`` uint8, top-class probability ``(N, H, W)`` float32)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    labels, confidence = [], []
    for start in range(0, len(images), batch_size):
        x = normalise(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device))
        probs = model(x).float().softmax(1)
        top, index = probs.max(1)
        labels.append(index.to(torch.uint8).cpu().numpy())
        confidence.append(top.cpu().numpy())
    model.train(was_training)
    if not labels:
        return np.zeros((0, *images.shape[1:3]), np.uint8), np.zeros((0, *images.shape[1:3]), np.float32)
    return np.concatenate(labels), np.concatenate(confidence)


def tile_confusions(
    model: torch.nn.Module, data: PatchSet, num_classes: int, ignore_index: int
) -> dict[str, np.ndarray]:
    """One confusion matrix per tile of ``data`` (summed over its patches)."""
    predicted, _ = predict(model, data.images)
    matrices: dict[str, np.ndarray] = {}
    for i, tile in enumerate(data.tiles):
        cm = confusion_matrix(data.labels[i], predicted[i], num_classes, ignore_index)
        matrices[tile] = matrices[tile] + cm if tile in matrices else cm
    return matrices
