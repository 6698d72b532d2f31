"""The parity gate: an exported scorer must embed and rank a calibration set like its source.

Figures (:func:`parity_figures`), computed on a calibration set of real pairs
(:func:`calibration_set`: a seeded sample of a manifest's pairs, images decoded once), each
side pre-processing with its *own* pipeline — so the recorded pre-processing is checked too:

* ``cosine_min`` / ``cosine_mean`` — cosine between the source's and the export's embedding of the
  same image or caption (each fold model of a cross-fitted scorer on every item);
* ``spearman`` — rank correlation of the pairs' scores (cosine of the pair's image and caption
  embeddings, by the fold model that owns the pair);
* ``flip_rate`` — share of pairs whose kept/dropped decision changes when, per scene, the
  ``drop_ratio`` lowest-scoring pairs are dropped (what ratio selection does);
* ``max_abs_score_diff``.

Gates (:class:`Gates`, defaults from the issue): cosine ≥ 0.9999 (fp32), ≥ 0.999 (fp16), ≥ 0.99
(int8, a loose floor: int8 is judged on ranking); Spearman ≥ 0.995 and flip rate ≤ 0.5% for all.
A flip-rate gate needs enough pairs to mean anything: one swap of two neighbouring pairs at a
scene's drop boundary flips two decisions, which is more than 0.5% of fewer than 400 pairs, so
one such swap (2 flips) is always tolerated; use ≥ 400 calibration pairs (the default is 1024)
for the 0.5% to be the binding limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from dldc.iel.base import CrossFitScorer, Scorer


@dataclass(frozen=True)
class Gates:
    """Thresholds an export must meet (see the module docstring)."""

    min_cosine_fp32: float = 0.9999
    min_cosine_fp16: float = 0.999
    min_cosine_int8: float = 0.99
    min_spearman: float = 0.995
    max_flip_rate: float = 0.005
    drop_ratio: float = 0.2

    def min_cosine(self, precision: str) -> float:
        return {"fp32": self.min_cosine_fp32, "fp16": self.min_cosine_fp16, "int8": self.min_cosine_int8}[precision]


@dataclass
class CalibrationSet:
    """Pairs to compare on: decoded images, distinct captions and which pair uses which.

    Attributes:
        images: decoded RGB images (one per distinct image file).
        image_ids: the manifest ``image_id`` of each image (for fold routing).
        texts: distinct captions.
        pair_image, pair_text: per pair, indices into ``images`` / ``texts``.
        scenes: per pair, its scene.
        source: where the pairs came from.
    """

    images: list[Image.Image]
    image_ids: list[str]
    texts: list[str]
    pair_image: np.ndarray
    pair_text: np.ndarray
    scenes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.pair_image)


def calibration_set(manifest: str, pairs: int, seed: int = 0) -> CalibrationSet:
    """A seeded sample of ``pairs`` pairs of a manifest, with their images decoded.

    Args:
        manifest: a ``manifest.parquet``.
        pairs: how many pairs (all of them when the manifest has fewer).
        seed: the sample's seed.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: the manifest has no pairs.
    """
    from dldc.data.images import load_rgb
    from dldc.data.manifest import dataset_root, read_manifest

    frame, meta = read_manifest(manifest)
    if frame.empty:
        raise ValueError(f"{manifest} has no pairs to calibrate on")
    root = dataset_root(manifest, meta)
    if len(frame) > pairs:
        frame = frame.sample(n=pairs, random_state=seed).sort_index()
    images = frame.drop_duplicates("image_sha256")
    image_index = {sha: i for i, sha in enumerate(images["image_sha256"])}
    texts = list(dict.fromkeys(frame["caption"]))
    text_index = {text: i for i, text in enumerate(texts)}
    return CalibrationSet(
        images=[load_rgb(root / path) for path in images["image"]],
        image_ids=images["image_id"].tolist(),
        texts=texts,
        pair_image=frame["image_sha256"].map(image_index).to_numpy(),
        pair_text=frame["caption"].map(text_index).to_numpy(),
        scenes=frame["scene"].astype(str).tolist(),
        source=f"{manifest}: {len(frame)} pairs (seed {seed})",
    )


def embed(scorer: Scorer, calib: CalibrationSet, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings of a calibration set under one scorer (its own pre-processing)."""
    images = []
    for start in range(0, len(calib.images), batch_size):
        pixels = torch.stack([scorer.preprocess(im) for im in calib.images[start : start + batch_size]])
        images.append(scorer.encode_images(pixels))
    texts = [scorer.encode_texts(calib.texts[i : i + batch_size]) for i in range(0, len(calib.texts), batch_size)]
    return torch.cat(images), torch.cat(texts)


def parity_figures(
    source: Scorer | CrossFitScorer,
    candidate: Scorer | CrossFitScorer,
    calib: CalibrationSet,
    drop_ratio: float = 0.2,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Compare an exported scorer with its source on a calibration set (see the module docstring).

    Returns:
        ``cosine_min``, ``cosine_mean``, ``cosine_image_min``, ``cosine_text_min``, ``spearman``,
        ``flip_rate``, ``flipped_pairs``, ``max_abs_score_diff``, ``pairs``, ``images``, ``texts``.
    """
    crossfit = isinstance(source, CrossFitScorer) and not isinstance(source, Scorer)
    folds = list(range(source.n_folds)) if crossfit else [None]
    pair_fold = (
        np.array([source.fold_of(calib.image_ids[i]) for i in calib.pair_image]) if crossfit else np.zeros(len(calib))
    )
    source_scores = np.zeros(len(calib))
    candidate_scores = np.zeros(len(calib))
    image_cos, text_cos = [], []
    for fold in tqdm(folds, desc="parity: models", disable=not progress or len(folds) == 1):
        src = source.fold_model(fold) if crossfit else source
        cand = candidate.fold_model(fold) if crossfit else candidate
        src_img, src_txt = embed(src, calib, batch_size)
        cand_img, cand_txt = embed(cand, calib, batch_size)
        image_cos.append((src_img * cand_img).sum(-1))
        text_cos.append((src_txt * cand_txt).sum(-1))
        mine = pair_fold == (fold or 0)
        source_scores[mine] = _pair_scores(src_img, src_txt, calib.pair_image[mine], calib.pair_text[mine])
        candidate_scores[mine] = _pair_scores(cand_img, cand_txt, calib.pair_image[mine], calib.pair_text[mine])
    image_cos_all, text_cos_all = torch.cat(image_cos), torch.cat(text_cos)
    all_cos = torch.cat([image_cos_all, text_cos_all])
    flipped = _decision_flips(source_scores, candidate_scores, calib.scenes, drop_ratio)
    return {
        "cosine_min": _round(all_cos.min().item()),
        "cosine_mean": _round(all_cos.mean().item()),
        "cosine_image_min": _round(image_cos_all.min().item()),
        "cosine_text_min": _round(text_cos_all.min().item()),
        "spearman": _round(spearman(source_scores, candidate_scores)),
        "flip_rate": _round(flipped / len(calib)),
        "flipped_pairs": int(flipped),
        "drop_ratio": drop_ratio,
        "max_abs_score_diff": _round(float(np.abs(source_scores - candidate_scores).max())),
        "pairs": len(calib),
        "images": len(calib.images),
        "texts": len(calib.texts),
        "models": len(folds),
    }


def gate_failures(figures: dict[str, Any], precision: str, gates: Gates) -> list[str]:
    """The gates a set of figures misses, as readable sentences (empty = passed)."""
    failures = []
    min_cosine = gates.min_cosine(precision)
    if not figures["cosine_min"] >= min_cosine:
        failures.append(f"embedding cosine {figures['cosine_min']:.6f} < {min_cosine} ({precision})")
    if not figures["spearman"] >= gates.min_spearman:
        failures.append(f"Spearman of pair scores {figures['spearman']:.5f} < {gates.min_spearman}")
    # One swap of two neighbours at a scene's boundary flips two decisions; below 400 pairs that
    # alone would exceed 0.5%, so one swap is always tolerated (the figures still count it).
    allowed = max(gates.max_flip_rate * figures["pairs"], 2)
    if not figures["flipped_pairs"] <= allowed:
        failures.append(
            f"kept/dropped flip rate {figures['flip_rate']:.4%} > {gates.max_flip_rate:.2%} "
            f"({figures['flipped_pairs']} of {figures['pairs']} pairs at drop ratio {figures['drop_ratio']})"
        )
    return failures


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 1.0 for two constant series."""
    ranks_a = pd.Series(a).rank().to_numpy()
    ranks_b = pd.Series(b).rank().to_numpy()
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return 1.0 if np.array_equal(ranks_a, ranks_b) else 0.0
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def dropped(scores: np.ndarray, scenes: list[str], drop_ratio: float) -> np.ndarray:
    """Per scene, mark the ``floor(drop_ratio * n)`` lowest-scoring pairs (ties broken by position)."""
    marks = np.zeros(len(scores), dtype=bool)
    frame = pd.DataFrame({"score": scores, "scene": scenes, "position": np.arange(len(scores))})
    for _, group in frame.groupby("scene", sort=False):
        count = math.floor(drop_ratio * len(group))
        if count:
            marks[group.sort_values(["score", "position"]).position.to_numpy()[:count]] = True
    return marks


def _decision_flips(a: np.ndarray, b: np.ndarray, scenes: list[str], drop_ratio: float) -> int:
    return int((dropped(a, scenes, drop_ratio) != dropped(b, scenes, drop_ratio)).sum())


def _pair_scores(images: torch.Tensor, texts: torch.Tensor, pair_image: np.ndarray, pair_text: np.ndarray):
    index_i, index_t = torch.as_tensor(np.array(pair_image)), torch.as_tensor(np.array(pair_text))
    return (images[index_i] * texts[index_t]).sum(-1).double().numpy()


def _round(value: float) -> float:
    return float(round(value, 7))
