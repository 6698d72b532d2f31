"""Training the in-domain scorer's K cross-fitted fold models (:func:`train_indomain`).

Every unique image is decoded once to a ``uint8`` tensor at the model's image size and kept
in memory. An *epoch* visits every training image once, paired with one of its captions drawn
at random: batches never hold the same image twice, and the cost does not grow with the
number of captions per image. Loss: symmetric CLIP InfoNCE with a learnable logit scale;
identical caption texts in a batch are not used as negatives of each other (RSICD repeats
captions across images). AdamW (no decay on gains, biases, embeddings of positions and the
logit scale), linear warmup then cosine decay to a tenth of the peak learning rate
(:func:`dldc.schedule.lr_at`), gradient clipping at norm 1, random flips and 90° rotations (a
top-down tile has no "up").

Settings (measured on 2 CPU cores, ``benchmarks/iel_noise_auroc.py``)
    ``indomain-tiny`` is open_clip's ModifiedResNet (layers 1-1-1-1, width 16) at 64 px with a
    2-layer, 128-wide text transformer: ~1.3M vision and ~0.4M text parameters besides the 6.3M
    token embedding. With few images the models overfit quickly: held-out alignment peaks near
    8 epochs on RSICD-dev (1,488 training images per fold at batch 128, ~90 steps) and declines
    after; SynthRS-400 (320 training images per fold) needs smaller batches for enough steps
    (batch 32, ~20 epochs). The zoom of :func:`augment` did not help on RSICD-dev and is off.

The output folder's files are listed in :mod:`dldc.iel.indomain`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dldc.config import IndomainConfig
from dldc.data.images import load_rgb
from dldc.data.manifest import dataset_root, read_manifest
from dldc.device import resolve_device
from dldc.iel.base import l2_normalise
from dldc.iel.folds import assign_folds, group_folds, ids_digest, stable_hash, text_keys
from dldc.iel.indomain_arch import (
    FOLDS_FILE,
    OPEN_CLIP_CONFIG_FILE,
    REPORT_FILE,
    TEXTS_FILE,
    create_indomain_model,
    encode_tokens,
    fold_weights_file,
    image_size_of,
    image_to_uint8,
    normalise_pixels,
    resolve_architecture,
    scene_model_file,
)
from dldc.iel.scene_text import SceneCaptionModel, content_tokens
from dldc.io import atomic_dir, file_sha256, output_lock, remove_stale_temps, write_json, write_safetensors
from dldc.schedule import lr_at

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 100

_log = logging.getLogger(__name__)


def augment(pixels: torch.Tensor, generator: torch.Generator, min_crop: float = 1.0) -> torch.Tensor:
    """Random flip and 90° rotation of each image (the 8 symmetries of a square), and a zoom.

    Top-down imagery has no canonical orientation, so these are free, label-preserving views.
    Captions that name directions ("at the top left") become slightly wrong; at scene level,
    which is what noise detection needs, they do not. The zoom crops a random square of side
    ``min_crop``..1 of the image and resizes it back (``min_crop=1`` turns it off).
    """
    n, _, size, _ = pixels.shape
    codes = torch.randint(0, 8, (n,), generator=generator).tolist()
    sides = (torch.empty(n).uniform_(min_crop, 1.0, generator=generator) * size).round().long().clamp(1, size)
    corners = torch.rand(n, 2, generator=generator)
    out = torch.empty_like(pixels)
    for index, (code, side) in enumerate(zip(codes, sides.tolist())):
        view = pixels[index]
        if side < size:
            y, x = (corners[index] * (size - side + 1)).long().clamp(max=size - side).tolist()
            crop = view[:, y : y + side, x : x + side].unsqueeze(0).float()
            view = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]
            view = view.round().clamp(0, 255).to(torch.uint8)
        view = torch.rot90(view, k=code % 4, dims=(1, 2))
        out[index] = view.flip(2) if code >= 4 else view
    return out


# --------------------------------------------------------------------------- training data


@dataclass
class TrainingData:
    """Everything training needs, decoded once and kept in memory.

    Attributes:
        image_ids: unique image ids, sorted (index ``i`` ↔ ``pixels[i]``).
        scenes: scene of each image.
        pixels: ``(n_images, 3, S, S)`` uint8 at the model's image size.
        captions: unique caption texts, sorted (index ``c`` ↔ ``tokens[c]``).
        tokens: ``(n_captions, context_length)`` token ids.
        pair_image: image index of each manifest pair.
        pair_caption: caption index of each manifest pair.
        pairs_of_image: pair indices of each image.
        decode_seconds: time spent decoding images.
        caption_keys: each caption as the tokenizer normalises it (:func:`text_keys`): captions
            with the same key are the same text to the model, and to the fold rules.
    """

    image_ids: list[str]
    scenes: list[str]
    pixels: torch.Tensor
    captions: list[str]
    tokens: torch.Tensor
    pair_image: np.ndarray
    pair_caption: np.ndarray
    pairs_of_image: list[np.ndarray] = field(repr=False)
    decode_seconds: float = 0.0
    caption_keys: list[str] = field(default_factory=list, repr=False)

    def pair_keys(self) -> np.ndarray:
        """The normalised text of each pair (object array aligned with ``pair_image``)."""
        return np.asarray(self.caption_keys, dtype=object)[self.pair_caption]


def _decode(path: Path, size: int) -> torch.Tensor:
    try:
        return image_to_uint8(load_rgb(path), size)
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read {path}: {err} (re-run ingest?)") from err


def prepare_data(manifest: str | Path, image_size: int, tokenizer: Any, progress: bool = False) -> TrainingData:
    """Read a manifest, decode every unique image once and tokenize every unique caption.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: the manifest has no pairs.
        OSError: an image cannot be read.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found; run `dldc ingest` first")
    frame, meta = read_manifest(manifest)
    if frame.empty:
        raise ValueError(f"manifest {manifest} has no pairs to train on")
    root = dataset_root(manifest, meta)
    images = frame.drop_duplicates("image_id").sort_values("image_id")
    image_ids = images["image_id"].tolist()
    start = time.perf_counter()
    paths = [root / relative for relative in images["image"]]
    # Pillow releases the GIL while decoding, so threads use every core without pickling.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(
            tqdm(
                pool.map(_decode, paths, [image_size] * len(paths)),
                total=len(paths),
                desc="decode images",
                disable=not progress,
            )
        )
    decode_seconds = time.perf_counter() - start
    captions = sorted(set(frame["caption"]))
    caption_index = {text: index for index, text in enumerate(captions)}
    image_index = {image_id: index for index, image_id in enumerate(image_ids)}
    pair_image = frame["image_id"].map(image_index).to_numpy(dtype=np.int64)
    pair_caption = frame["caption"].map(caption_index).to_numpy(dtype=np.int64)
    order = np.argsort(pair_image, kind="stable")
    bounds = np.searchsorted(pair_image[order], np.arange(len(image_ids) + 1))
    return TrainingData(
        image_ids=image_ids,
        scenes=images["scene"].tolist(),
        pixels=torch.stack(decoded),
        captions=captions,
        tokens=tokenizer(captions),
        pair_image=pair_image,
        pair_caption=pair_caption,
        pairs_of_image=[order[bounds[i] : bounds[i + 1]] for i in range(len(image_ids))],
        decode_seconds=decode_seconds,
        caption_keys=text_keys(tokenizer, captions),
    )


# --------------------------------------------------------------------------- training


def plan_folds(data: TrainingData, n_folds: int, seed: int, fold_groups: str = "text") -> tuple[np.ndarray, dict]:
    """The fold of each image (aligned with ``data.image_ids``) and the record of the rule used.

    ``fold_groups="text"``: :func:`dldc.iel.folds.group_folds` over the normalised caption texts;
    ``"image"``: :func:`dldc.iel.folds.assign_folds` (by image only; texts may leak).
    """
    if fold_groups == "image":
        assignment = assign_folds(data.image_ids, data.scenes, n_folds, seed)
        return np.array([assignment[i] for i in data.image_ids]), {"fold_groups": "image"}
    if fold_groups != "text":
        raise ValueError(f"fold_groups must be 'text' or 'image', got {fold_groups!r}")
    keys = np.asarray(data.caption_keys, dtype=object)
    texts = [sorted(set(keys[data.pair_caption[pairs]])) for pairs in data.pairs_of_image]
    plan = group_folds(data.image_ids, data.scenes, texts, n_folds, seed)
    record = {
        "fold_groups": "text",
        "components": plan.components,
        "largest_component": plan.largest_component,
        "max_group": plan.max_group,
        "split_components": plan.split_components,
        "cut_texts": len(plan.cut_texts),
        "spanning_texts": len(plan.spanning_texts()),
    }
    return np.array([plan.folds[i] for i in data.image_ids]), record


def training_pairs(data: TrainingData, folds: np.ndarray, fold: int, fold_groups: str = "text") -> np.ndarray:
    """Which pairs fold model ``fold`` (and its scene head) trains on, as a bool mask over pairs.

    Pairs of images outside the fold; with ``fold_groups="text"`` also minus every pair whose
    normalised text occurs on an image of the fold (the drop rule: only texts that span folds,
    those of components too large to keep whole, lose pairs). So no fold model trains on a text
    it will score, whichever image the text sits on.
    """
    outside = folds[data.pair_image] != fold
    if fold_groups == "image":
        return outside
    keys = data.pair_keys()
    in_fold = set(keys[~outside].tolist())
    return outside & ~np.isin(keys, list(in_fold))


def texts_trained_by(data: TrainingData, folds: np.ndarray, n_folds: int, fold_groups: str = "text") -> dict[str, int]:
    """``{normalised text: bitmask of the fold models that trained on it}`` (0: none did)."""
    keys = data.pair_keys()
    trained = dict.fromkeys(data.caption_keys, 0)
    for fold in range(n_folds):
        for key in set(keys[training_pairs(data, folds, fold, fold_groups)].tolist()):
            trained[key] |= 1 << fold
    return trained


def fold_seed(seed: int, fold: int) -> int:
    """Seed of fold model ``fold``'s initialisation, batches and augmentation."""
    return stable_hash(f"fold{fold}", seed) % (2**31)


def _optimizer(model: torch.nn.Module, cfg: IndomainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (open_clip / nanoGPT practice)."""
    no_decay_names = {"positional_embedding", "logit_scale"}
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.ndim < 2 or name.split(".")[-1] in no_decay_names or "positional_embedding" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel runs on CPU and CUDA and is several times faster than the per-tensor loop.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, positive: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP InfoNCE with several positives per row (soft targets).

    With one distinct text per image and no repeated texts this is exactly CLIP's loss. A text
    that is a caption of several batch images (RSICD repeats captions) is a positive of each of
    them rather than a false negative.

    Args:
        image_features: ``(B, D)`` L2-normalised image features.
        text_features: ``(M, D)`` L2-normalised features of distinct texts.
        logit_scale: the learned log temperature.
        positive: ``(B, M)`` bool, text ``m`` is a caption of image ``b``; every row and column
            has at least one ``True``.
    """
    logits = logit_scale.exp() * image_features @ text_features.T
    targets = positive.float()
    image_to_text = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def batch_texts(
    data: TrainingData, images: np.ndarray, chosen_pairs: list[int] | None
) -> tuple[np.ndarray, torch.Tensor]:
    """The distinct caption texts of a batch and which images each one describes.

    Args:
        data: the decoded dataset.
        images: image indices of the batch.
        chosen_pairs: one pair per image to take its text from, or ``None`` for every caption.

    Returns:
        ``(caption_ids, positive)``: sorted unique caption indices and the ``(B, M)`` bool matrix
        "caption ``m`` is one of image ``b``'s captions".
    """
    all_pairs = [data.pairs_of_image[i] for i in images]
    chosen = np.concatenate(all_pairs) if chosen_pairs is None else np.asarray(chosen_pairs)
    caption_ids = np.unique(data.pair_caption[chosen])
    rows = np.repeat(np.arange(len(images)), [len(p) for p in all_pairs])
    captions = data.pair_caption[np.concatenate(all_pairs)]
    column = np.searchsorted(caption_ids, captions)
    known = (column < len(caption_ids)) & (caption_ids[np.minimum(column, len(caption_ids) - 1)] == captions)
    positive = torch.zeros(len(images), len(caption_ids), dtype=torch.bool)
    positive[rows[known], column[known]] = True
    return caption_ids, positive


@torch.no_grad()
def embed_images(model: torch.nn.Module, pixels: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    """L2-normalised float32 CPU features of uint8 ``(N, 3, S, S)`` images (eval mode, no aug)."""
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    model.eval()
    out = [
        l2_normalise(model.encode_image(normalise_pixels(pixels[i : i + batch], mean, std).to(device)))
        for i in range(0, len(pixels), batch)
    ]
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.no_grad()
def embed_tokens(model: torch.nn.Module, tokens: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """L2-normalised float32 CPU features of token ids (eval mode)."""
    model.eval()
    out = [l2_normalise(encode_tokens(model, tokens[i : i + batch].to(device))) for i in range(0, len(tokens), batch)]
    return torch.cat(out) if out else torch.empty(0, 0)


def rank_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2).

    The Mann–Whitney U statistic from average ranks; ``nan`` without both classes.

    Example:
        >>> rank_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
        0.75
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def heldout_metrics(model: torch.nn.Module, data: TrainingData, heldout: np.ndarray, device: torch.device) -> dict:
    """How well a fold model matches its held-out images and captions.

    Returns:
        ``cos_matched`` / ``cos_mismatched``: mean cosine of the held-out pairs / of held-out images
        with the captions of the other held-out images; ``gap`` their difference;
        ``t2i_recall_at_1`` / ``_at_5``: a caption's own image ranks first / in the top 5 among
        the held-out images; ``t2i_scene_top1``: the top image has the caption's scene;
        ``auroc_vs_other_scene``: how often a held-out pair outscores a held-out image paired with
        a caption of a held-out image of another scene (what caption-swap detection needs).
    """
    if len(heldout) == 0:
        return {}
    image_features = embed_images(model, data.pixels[heldout], device)
    pairs = np.concatenate([data.pairs_of_image[i] for i in heldout])
    text_features = embed_tokens(model, data.tokens[data.pair_caption[pairs]], device)
    local = {image: row for row, image in enumerate(heldout)}
    owner = torch.tensor([local[i] for i in data.pair_image[pairs]])
    similarity = text_features @ image_features.T  # (held-out pairs, held-out images)
    own = torch.zeros_like(similarity, dtype=torch.bool)
    own[torch.arange(len(pairs)), owner] = True
    matched = similarity[own]
    mismatched = similarity[~own]
    ranking = similarity.argsort(dim=1, descending=True)
    scenes = np.asarray(data.scenes)[heldout]
    top_scene = scenes[ranking[:, 0].numpy()]
    # What caption-swap detection needs: own captions must beat captions of other-scene images.
    other_scene = torch.from_numpy(scenes[None, :] != scenes[owner.numpy()][:, None])
    swapped = similarity[other_scene].numpy()
    swap_auroc = rank_auroc(
        np.concatenate([matched.numpy(), swapped]), np.arange(len(matched) + len(swapped)) < len(matched)
    )
    return {
        "pairs": len(pairs),
        "cos_matched": round(float(matched.mean()), 4),
        "cos_mismatched": round(float(mismatched.mean()), 4) if mismatched.numel() else None,
        "gap": round(float(matched.mean() - mismatched.mean()), 4) if mismatched.numel() else None,
        "t2i_recall_at_1": round(float((ranking[:, 0] == owner).float().mean()), 4),
        "t2i_recall_at_5": round(float((ranking[:, :5] == owner[:, None]).any(dim=1).float().mean()), 4),
        "t2i_scene_top1": round(float(np.mean(top_scene == scenes[owner.numpy()])), 4),
        "auroc_vs_other_scene": round(swap_auroc, 4) if not math.isnan(swap_auroc) else None,
    }


def train_fold(
    model_name: str,
    data: TrainingData,
    folds: np.ndarray,
    fold: int,
    cfg: IndomainConfig,
    progress: bool = False,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train fold model ``fold`` on every image whose fold differs (all their captions).

    Args:
        model_name: the registered open_clip model name.
        data: the decoded dataset.
        folds: fold of each image, aligned with ``data.image_ids``.
        fold: the fold to hold out.
        cfg: epochs, batch size, optimiser settings, seed and device.
        progress: show a tqdm bar.

    Returns:
        ``(model, stats)``: the trained model (eval mode, on ``cfg.device``) and its training
        record (training image ids digest, steps, mean loss per epoch, held-out metrics, seconds).
    """
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    seed = fold_seed(cfg.seed, fold)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = create_indomain_model(model_name, device=device)
    model.train()
    optimizer = _optimizer(model, cfg, device)

    allowed = training_pairs(data, folds, fold, cfg.fold_groups)
    outside_images = np.flatnonzero(folds != fold)
    # The drop rule can leave an image without a caption to train on: it then sits out.
    pairs_of = {i: data.pairs_of_image[i][allowed[data.pairs_of_image[i]]] for i in outside_images}
    train_images = np.array([i for i in outside_images if len(pairs_of[i])], dtype=np.int64)
    heldout_images = np.flatnonzero(folds == fold)
    batch_size = min(cfg.batch_size, len(train_images))
    if batch_size < 2:
        left_out = len(outside_images) - len(train_images)
        dropped = f", {left_out} left out by the drop rule" if cfg.fold_groups == "text" else ""
        raise ValueError(
            f"fold {fold}: {len(train_images)} training image(s){dropped}; contrastive training needs 2"
            + (
                " (every caption text outside the fold also occurs in it: vary the captions, or use "
                "indomain.fold_groups=image and accept that repeated text leaks)"
                if dropped
                else ""
            )
        )
    steps_per_epoch = len(train_images) // batch_size  # drop the ragged tail; shuffling rotates it
    total_steps = steps_per_epoch * cfg.epochs
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=device)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=device)
    pair_counts = torch.tensor([len(pairs_of[i]) for i in train_images])

    epoch_losses: list[float] = []
    bar = tqdm(total=total_steps, desc=f"fold {fold}/{len(set(folds.tolist()))}", disable=not progress, leave=False)
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(train_images), generator=generator)
        # One caption per image per epoch, drawn uniformly among the image's pairs.
        pick = (torch.rand(len(train_images), generator=generator) * pair_counts).long()
        losses = []
        for batch_start in range(0, steps_per_epoch * batch_size, batch_size):
            rows = order[batch_start : batch_start + batch_size]
            images = train_images[rows.numpy()]
            chosen = [pairs_of[i][p] for i, p in zip(images, pick[rows].tolist())]
            caption_ids, positive = batch_texts(data, images, chosen)
            pixels = augment(data.pixels[images], generator) if cfg.augment == "dihedral" else data.pixels[images]
            for group in optimizer.param_groups:
                # The floor is reached at step total_steps, one past the last (dldc.schedule.lr_at).
                group["lr"] = lr_at(step, total_steps, cfg.lr, cfg.warmup_steps, decay_end=total_steps)
            image_features = F.normalize(model.encode_image(normalise_pixels(pixels.to(device), mean, std)), dim=-1)
            text_features = F.normalize(encode_tokens(model, data.tokens[caption_ids].to(device)), dim=-1)
            loss = contrastive_loss(image_features, text_features, model.logit_scale, positive.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        epoch_losses.append(round(float(np.mean(losses)), 4))
    bar.close()
    model.eval()
    train_ids = [data.image_ids[i] for i in train_images]
    stats = {
        "fold": fold,
        "seed": seed,
        "train_images": len(train_images),
        "train_pairs": int(allowed.sum()),
        # Pairs of images outside the fold withheld because their text occurs in the fold.
        "dropped_pairs": int((folds[data.pair_image] != fold).sum() - allowed.sum()),
        "train_image_ids_sha256": ids_digest(train_ids),
        "heldout_images": len(heldout_images),
        "steps": total_steps,
        "epoch_loss": epoch_losses,
        "final_loss": epoch_losses[-1] if epoch_losses else None,
        "logit_scale": round(model.logit_scale.exp().item(), 3),
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    stats["heldout"] = heldout_metrics(model, data, heldout_images, device)
    return model, stats


def fit_scene_model(
    data: TrainingData, folds: np.ndarray, fold: int, tokenizer: Any, alpha: float, fold_groups: str = "text"
) -> SceneCaptionModel:
    """Fit fold ``fold``'s caption–scene model on the pairs its contrastive model trains on
    (:func:`training_pairs`: the same drop rule)."""
    train_pairs = np.flatnonzero(training_pairs(data, folds, fold, fold_groups))
    tokens = data.tokens[data.pair_caption[train_pairs]]
    captions = content_tokens(tokens, tokenizer.sot_token_id, tokenizer.eot_token_id)
    scenes = [data.scenes[i] for i in data.pair_image[train_pairs]]
    return SceneCaptionModel.fit(captions, scenes, vocab_size=tokenizer.vocab_size, alpha=alpha)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Write a model's state dict as safetensors (same tensors and metadata → same bytes).

    safetensors keeps metadata in a hash map whose order varies between runs, so all of it goes
    into one ``dldc`` key as sorted JSON.
    """
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    write_safetensors(path, tensors, metadata={"dldc": json.dumps(metadata or {}, sort_keys=True)})


def train_indomain(cfg: IndomainConfig, progress: bool = True) -> dict[str, Any]:
    """Train the K cross-fitted fold models of the in-domain scorer and write them to ``cfg.out``.

    Args:
        cfg: manifest, output folder, architecture, folds, optimisation settings, seed, device.
        progress: show tqdm bars (decoding, one per fold).

    Returns:
        The training report (also written to ``indomain.json``), with ``out`` added.

    Raises:
        FileNotFoundError: missing manifest or architecture config.
        ValueError: empty manifest, or fewer images than folds.
        dldc.io.OutputLockedError: another process is writing ``cfg.out``.
    """
    with output_lock(cfg.out):
        return _train_indomain(cfg, progress)


def _train_indomain(cfg: IndomainConfig, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    name = Path(cfg.out).name  # atomic_dir's temporaries of a killed run sit beside the folder
    remove_stale_temps(Path(cfg.out).parent, (f".{name}.*.tmp", f".{name}.old-*"), recursive=False)
    manifest = Path(cfg.manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found; run `dldc ingest` first")
    model_name, model_cfg = resolve_architecture(cfg.architecture)
    image_size = image_size_of(model_cfg)
    context_length = int(model_cfg["text_cfg"].get("context_length", 77))
    tokenizer = open_clip.get_tokenizer(model_name, context_length=context_length)
    data = prepare_data(manifest, image_size, tokenizer, progress=progress)
    if len(data.image_ids) < cfg.folds:
        raise ValueError(f"{manifest} has {len(data.image_ids)} images, fewer than folds={cfg.folds}")
    folds, fold_rule = plan_folds(data, cfg.folds, cfg.seed, cfg.fold_groups)
    device = resolve_device(cfg.device)
    # The caption–scene head needs at least two scene labels (a scene-less dataset has none).
    scene_head = cfg.scene_head and len(set(data.scenes)) >= 2

    preprocess_cfg = {
        "size": image_size,
        "mode": "RGB",
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",  # see image_to_uint8: centre square crop, then resize
    }
    fold_stats = []
    with atomic_dir(cfg.out) as tmp:
        write_json(tmp / OPEN_CLIP_CONFIG_FILE, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
        folds_table = pa.table({"image_id": pa.array(data.image_ids, pa.string()), "fold": pa.array(folds, pa.int32())})
        pq.write_table(folds_table, tmp / FOLDS_FILE, compression="zstd")
        if cfg.fold_groups == "text":
            # Which fold models trained on each text, so that a text scored on another image (an
            # EGL candidate) can go to a fold model that has not (dldc.iel.folds.scoring_fold).
            trained = texts_trained_by(data, folds, cfg.folds)
            texts_table = pa.table(
                {
                    "text": pa.array(list(trained), pa.string()),
                    "trained_by": pa.array(list(trained.values()), pa.int64()),
                }
            )
            pq.write_table(texts_table, tmp / TEXTS_FILE, compression="zstd")
        for fold in range(cfg.folds):
            model, stats = train_fold(model_name, data, folds, fold, cfg, progress=progress)
            save_weights(model, tmp / fold_weights_file(fold), {"fold": fold, "architecture": model_name})
            if scene_head:
                scene_model = fit_scene_model(data, folds, fold, tokenizer, cfg.scene_alpha, cfg.fold_groups)
                scene_model.save(tmp / scene_model_file(fold))
            fold_stats.append(stats)
            heldout = stats["heldout"]
            _log.info("fold %d: loss %.3f, held-out gap %s", fold, stats["final_loss"] or 0, heldout.get("gap"))
            del model
        report = {
            "config": cfg.model_dump(mode="json"),
            "architecture": model_name,
            "model_cfg": model_cfg,
            "image_size": image_size,
            "device": str(device),
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
            "data": {
                "manifest": str(manifest),
                "images": len(data.image_ids),
                "pairs": len(data.pair_image),
                "unique_captions": len(data.captions),
                "scenes": len(set(data.scenes)),
            },
            "fold_sizes": np.bincount(folds, minlength=cfg.folds).tolist(),
            # Which fold rule applied and what it cost (dldc.iel.folds.group_folds).
            "fold_rule": {
                **fold_rule,
                "dropped_pairs": sum(s["dropped_pairs"] for s in fold_stats),
                "dropped_pairs_per_fold": {str(s["fold"]): s["dropped_pairs"] for s in fold_stats},
            },
            "scene_head": scene_head,
            "folds": fold_stats,
            "heldout_mean": _mean_metrics([s["heldout"] for s in fold_stats]),
            "timings": {
                "decode_s": round(data.decode_seconds, 2),
                "train_s": round(sum(s["train_seconds"] for s in fold_stats), 2),
                "total_s": round(time.perf_counter() - start, 2),
            },
            "files": {
                name: file_sha256(tmp / name)
                for name in sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != REPORT_FILE)
            },
        }
        write_json(tmp / REPORT_FILE, report)
    return {**report, "out": str(cfg.out)}


def _mean_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in (records[0] if records else {}) if k != "pairs"]
    return {
        k: round(float(np.mean([r[k] for r in records if r.get(k) is not None])), 4)
        for k in keys
        if any(r.get(k) is not None for r in records)
    }
