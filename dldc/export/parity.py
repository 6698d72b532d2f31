"""The parity gate: an exported scorer must embed and rank a calibration set like its source.

Figures (:func:`parity_figures`), computed on a calibration set of real pairs
(:func:`calibration_set`: a seeded sample of a manifest's pairs, images decoded once), each
side pre-processing with its *own* pipeline — so the recorded pre-processing is checked too:

* ``cosine_min`` / ``cosine_mean`` — cosine between the source's and the export's embedding of the
  same image or caption (each fold model of a cross-fitted scorer on every item);
* ``spearman`` — rank correlation of the pairs' scores (cosine of the pair's image and caption
  embeddings, by the fold model that owns the pair);
* ``flip_rate`` — share of pairs whose kept/dropped decision changes when, per scene, the
  ``drop_ratio`` lowest-scoring pairs are dropped (what ratio selection does), with its 95%
  interval ``flip_rate_low`` .. ``flip_rate_high`` (:func:`flip_rate_interval`);
* ``max_abs_score_diff``, ``mean_abs_score_diff`` — how far the export moves the pair scores.

Gates (:class:`Gates`): cosine ≥ 0.9999 (fp32), ≥ 0.999 (fp16), ≥ 0.99 (int8, a loose floor:
int8 is judged on ranking); Spearman ≥ 0.995 for all; and the flip rate is **shown** to be at
most 0.5%: the gate passes only when the upper end of the flip rate's 95% interval is ≤ 0.5%.

Why the upper end: the gate must keep exports that change cleaning decisions out, so the doubt a
finite sample leaves counts against the export, not for it (a point-estimate rule passed or failed
on one or two swaps at a scene's boundary). The interval is Wilson's (:func:`wilson_interval`,
good coverage down to zero events) on the number of boundary *swaps*: within a scene the
dropped count is fixed, so flips come in pairs (one kept→dropped, one dropped→kept), and
``flipped / 2`` swaps out of ``pairs / 2`` is the honest count of independent events. A sample
of a larger manifest shrinks the interval by the finite-population correction; calibrating on a
whole manifest is a census of its decisions, and the interval is the measured rate itself.

What that asks of the calibration set: with no flip at all, a sample of a large manifest must
hold ≥ 1,530 pairs for the upper end to reach 0.5% (:func:`pairs_to_show`); the default, 4,096
pairs, passes up to 3 swaps (upper end 0.43%) and refuses from 4 on (0.501%); a manifest smaller
than the sample is taken whole. A sample too small to ever pass is refused with that advice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
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
    confidence: float = 0.95

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
        population: pairs in the manifest the sample was drawn from (``None``: unknown, e.g. pairs
            assembled by hand; the flip-rate interval then assumes an unlimited population).
    """

    images: list[Image.Image]
    image_ids: list[str]
    texts: list[str]
    pair_image: np.ndarray
    pair_text: np.ndarray
    scenes: list[str]
    source: str
    population: int | None = None

    def __len__(self) -> int:
        return len(self.pair_image)


def calibration_set(manifest: str, pairs: int, seed: int = 0) -> CalibrationSet:
    """A seeded sample of ``pairs`` pairs of a manifest, with their images decoded.

    Args:
        manifest: a ``manifest.parquet``.
        pairs: how many pairs (all of them when the manifest has fewer: a census of its decisions).
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
    population = len(frame)
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
        source=f"{manifest}: {len(frame)} of {population} pairs (seed {seed})",
        population=population,
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
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare an exported scorer with its source on a calibration set (see the module docstring).

    Returns:
        ``cosine_min``, ``cosine_mean``, ``cosine_image_min``, ``cosine_text_min``, ``spearman``,
        ``flip_rate`` with its ``confidence`` interval ``flip_rate_low`` .. ``flip_rate_high``,
        ``flipped_pairs``, ``max_abs_score_diff``, ``mean_abs_score_diff``, ``pairs``, ``population``
        (pairs of the manifest sampled; ``None`` when unknown), ``images``, ``texts``.
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
    low, high = flip_rate_interval(flipped, len(calib), calib.population, confidence)
    return {
        "cosine_min": _round(all_cos.min().item()),
        "cosine_mean": _round(all_cos.mean().item()),
        "cosine_image_min": _round(image_cos_all.min().item()),
        "cosine_text_min": _round(text_cos_all.min().item()),
        "spearman": _round(spearman(source_scores, candidate_scores)),
        "flip_rate": _round(flipped / len(calib)),
        "flip_rate_low": _round(low),
        "flip_rate_high": _round(high),
        "flip_confidence": confidence,
        "flipped_pairs": int(flipped),
        "drop_ratio": drop_ratio,
        "max_abs_score_diff": _round(float(np.abs(source_scores - candidate_scores).max())),
        "mean_abs_score_diff": _round(float(np.abs(source_scores - candidate_scores).mean())),
        "pairs": len(calib),
        "population": calib.population,
        "images": len(calib.images),
        "texts": len(calib.texts),
        "models": len(folds),
    }


def gate_failures(figures: dict[str, Any], precision: str, gates: Gates) -> list[str]:
    """The gates a set of figures misses, as readable sentences (empty = passed).

    The flip-rate gate is decided on the interval: it passes when ``flip_rate_high`` (the upper
    end of the flip rate's interval, from :func:`parity_figures`) is ≤ ``gates.max_flip_rate``.
    """
    failures = []
    min_cosine = gates.min_cosine(precision)
    if not figures["cosine_min"] >= min_cosine:
        failures.append(f"embedding cosine {figures['cosine_min']:.6f} < {min_cosine} ({precision})")
    if not figures["spearman"] >= gates.min_spearman:
        failures.append(f"Spearman of pair scores {figures['spearman']:.5f} < {gates.min_spearman}")
    if not figures["flip_rate_high"] <= gates.max_flip_rate:
        failure = (
            f"kept/dropped flip rate not shown to be ≤ {gates.max_flip_rate:.2%}: {figures['flip_rate']:.2%}, "
            f"{figures.get('flip_confidence', gates.confidence):.0%} interval {figures['flip_rate_low']:.2%}"
            f"..{figures['flip_rate_high']:.2%} ({figures['flipped_pairs']} of {figures['pairs']} pairs at drop ratio "
            f"{figures['drop_ratio']})"
        )
        needed = pairs_to_show(gates.max_flip_rate, gates.confidence)
        if figures["flipped_pairs"] == 0 and figures["pairs"] < needed:
            failure += f"; even no flip cannot show it on fewer than {needed} sampled pairs: calibrate on more"
        failures.append(failure)
    return failures


def wilson_interval(successes: float, trials: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / trials``.

    Counts may be fractional (effective counts, as :func:`flip_rate_interval` passes). Known
    answers (Newcombe 1998, *Statistics in Medicine* 17:857, Table I, method 3):

    >>> [round(x, 4) for x in wilson_interval(81, 263)]
    [0.2553, 0.3662]
    >>> [round(x, 4) for x in wilson_interval(0, 20)]
    [0.0, 0.1611]

    Raises:
        ValueError: ``trials`` ≤ 0, ``successes`` outside ``[0, trials]`` or ``confidence`` outside (0, 1).
    """
    if not trials > 0 or not 0 <= successes <= trials or not 0 < confidence < 1:
        raise ValueError(f"need 0 <= successes <= trials, trials > 0, 0 < confidence < 1; got "
                         f"{successes}, {trials}, {confidence}")  # fmt: skip
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def flip_rate_interval(
    flipped: int, pairs: int, population: int | None = None, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval of the kept/dropped flip rate ``flipped / pairs`` (see the module docstring).

    Wilson's interval on ``flipped / 2`` boundary swaps out of ``pairs / 2``; for a sample of a
    ``population`` of pairs, that effective count grows by the finite-population correction
    ``(N - 1) / (N - n)``, and a census (``pairs >= population``) has no sampling error.

    >>> [round(x, 4) for x in flip_rate_interval(4, 240)]
    [0.0046, 0.0587]
    >>> flip_rate_interval(4, 240, population=240)
    (0.016666666666666666, 0.016666666666666666)
    """
    rate = flipped / pairs
    if population is not None and pairs >= population:
        return rate, rate
    effective = pairs / 2
    if population is not None and population > 1:
        effective *= (population - 1) / (population - pairs)
    return wilson_interval(rate * effective, effective, confidence)


def pairs_to_show(max_flip_rate: float, confidence: float = 0.95) -> int:
    """Fewest sampled pairs (of a large manifest) whose interval can end at ``max_flip_rate`` with no flip.

    >>> pairs_to_show(0.005)
    1530
    """
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    # Wilson's upper end for 0 of m is z² / (m + z²); pairs = 2m.
    return 2 * math.ceil(z * z * (1 - max_flip_rate) / max_flip_rate)


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
