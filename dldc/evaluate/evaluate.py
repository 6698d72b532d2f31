"""``dldc evaluate``: generation quality of every arm against the real test images.

For each arm of the generations (``base``, ``raw``, ``clean``, ...), overall and per scene:

* ``FID`` / ``KID`` — Fréchet and kernel distance of Inception-2015-12-05 features (``evaluate.fid``);
* ``FD-<label>`` / ``KD-<label>`` — the same distances in an IEL image tower's space;
* ``FID-intra`` / ``FD-<label>-intra`` (scene ``all`` only) — the mean of the per-scene distances,
  which, unlike the pooled one, penalises an image of the wrong scene for its prompt;
* ``CLIPScore-<label>`` (100·max(cos, 0)) and ``cos-<label>`` (raw cosine) of generated images
  against their prompts; the real images against the same prompts are reported as the
  reference row ``real``.

Every number carries its protocol: N real and generated, feature dimension, resolution and
resize path. Intervals are bootstrap percentile intervals: real images and prompt keys
``(pair_id, seed)`` are resampled with replacement, with the *same* draws for every arm, so the
differences between arms (``delta_vs_base`` and :meth:`EvaluationResult.compare`) get paired
intervals. KID's interval is the spread of its subset estimates (torch-fidelity's convention).
Relative changes vs. the base arm are in the paper's framing (FID −35%, CLIP score +25%).

Output folder (written atomically)::

    results.json       protocol, extractors, scorers, arms, every metric row
    results.md         the same as tables: overall, change vs. base, per scene
    metrics.parquet    the metric rows (one per scene × arm × metric)
    per_image.parquet  prompt scores of every generated (and real reference) image
    bootstrap.parquet  scene, arm, metric, replicate, value (shared resamples across arms)
    evaluate.json      overall values and relative changes per arm (DVC metrics)

Example:
    >>> higher_is_better("FID"), higher_is_better("CLIPScore-clip"), higher_is_better("KD-indomain")
    (False, True, False)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from dldc.config import EvaluateConfig
from dldc.evaluate.distances import (
    frechet_distance,
    frechet_distance_resampled,
    kernel_distance,
    percentile_interval,
)
from dldc.evaluate.features import PromptScorer, ScorerFeatures, load_images
from dldc.evaluate.generations import REFERENCE_ARM, read_generations, real_images
from dldc.evaluate.report import render_markdown
from dldc.io import atomic_dir, file_sha256, write_json, write_parquet

ALL_SCENES = "all"
RESULTS_FILE = "results.json"
SUMMARY_FILE = "evaluate.json"
MARKDOWN_FILE = "results.md"
METRICS_FILE = "metrics.parquet"
PER_IMAGE_FILE = "per_image.parquet"
BOOTSTRAP_FILE = "bootstrap.parquet"
DISTANCE_METRICS = ("FID", "KID")
DISTANCE_PREFIXES = ("FD-", "KD-")
INTRA_SUFFIX = "-intra"  # mean of the per-scene values of a distance (intra-FID, Miyato & Koyama 2018)


def higher_is_better(metric: str) -> bool:
    """Direction of a metric: distances (``FID``, ``KID``, ``FD-*``, ``KD-*``, ``*-intra``) lower, scores higher.

    Example:
        >>> higher_is_better("FID"), higher_is_better("FID-intra"), higher_is_better("CLIPScore-indomain")
        (False, False, True)
    """
    metric = metric.removesuffix(INTRA_SUFFIX)
    return not (metric in DISTANCE_METRICS or metric.startswith(DISTANCE_PREFIXES))


@dataclass
class _Distance:
    """A feature extractor and the two metrics it gives."""

    fd_name: str
    kd_name: str
    label: str
    kind: str
    extractor: Any
    real: list[np.ndarray] = field(default_factory=list)  # per space, rows = real images
    generated: list[np.ndarray] = field(default_factory=list)  # per space, rows = generation rows


@dataclass
class _Prompts:
    """A prompt scorer and the cosines it gave."""

    label: str
    scorer: PromptScorer
    generated: np.ndarray | None = None  # per generation row
    reference: np.ndarray | None = None  # per reference prompt row


@dataclass
class EvaluationResult:
    """What :func:`evaluate_generations` computed.

    Attributes:
        out: the output folder (``None`` when nothing was written).
        results: the ``results.json`` content.
        table: the metric rows (columns as in ``metrics.parquet``).
        replicates: ``{(scene, arm, metric): bootstrap values}``; the draws are shared across arms.
        per_image: prompt scores per generated / reference image.
    """

    out: Path | None
    results: dict[str, Any]
    table: pd.DataFrame
    replicates: dict[tuple[str, str, str], np.ndarray]
    per_image: pd.DataFrame

    def value(self, arm: str, metric: str, scene: str = ALL_SCENES) -> float:
        """The point value of one metric (``KeyError`` when it was not computed)."""
        rows = self.table[(self.table.arm == arm) & (self.table.metric == metric) & (self.table.scene == scene)]
        if rows.empty:
            raise KeyError(f"no {metric} for arm {arm!r}, scene {scene!r}; have {sorted(set(self.table.metric))}")
        return float(rows.iloc[0]["value"])

    def compare(self, arm: str, other: str, metric: str, scene: str = ALL_SCENES) -> dict[str, Any]:
        """``arm`` minus ``other`` on one metric, with the paired bootstrap interval.

        Returns:
            ``delta``, ``ci_low``, ``ci_high``, ``better`` (``arm`` is better than ``other`` and the
            interval excludes zero on the better side) and ``higher_is_better``.

        Example:
            >>> # result.compare("clean", "raw", "FD-indomain") -> {"delta": -1.2, "ci_high": -0.3, "better": True, ...}
        """
        delta = self.value(arm, metric, scene) - self.value(other, metric, scene)
        a, b = self.replicates.get((scene, arm, metric)), self.replicates.get((scene, other, metric))
        low = high = float("nan")
        if a is not None and b is not None:
            low, high = percentile_interval(a - b, self.results["protocol"]["ci"])
        higher = higher_is_better(metric)
        better = (low > 0) if higher else (high < 0)
        return {
            "metric": metric,
            "scene": scene,
            "arm": arm,
            "other": other,
            "delta": delta,
            "ci_low": low,
            "ci_high": high,
            "higher_is_better": higher,
            "better": bool(better),
        }


def evaluate_generations(
    generations: Sequence[str | Path] | None = None,
    manifest: str | Path | None = None,
    out: str | Path | None = None,
    cfg: EvaluateConfig | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate generated images against the real test images (see the module docstring).

    Args:
        generations: ``dldc generate`` folders; default ``cfg.generations``.
        manifest: the manifest the prompts came from; default ``cfg.manifest``.
        out: output folder; default ``cfg.out``; ``""`` writes nothing (benchmarks, tests).
        cfg: the evaluation settings (extractors, scorers, bootstrap, ...); default the demo ones.
        progress: show a progress bar.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        FileNotFoundError: missing generations, manifest, images, scorer or Inception weights
            (the message says how to get them).
        ValueError: malformed generations (see :func:`~dldc.evaluate.generations.read_generations`)
            or an unknown base arm.
    """
    from dldc.iel.factory import create_scorer

    start = time.perf_counter()
    cfg = cfg or EvaluateConfig()
    folders = [Path(p) for p in (generations if generations is not None else cfg.generations)]
    manifest = Path(manifest if manifest is not None else cfg.manifest)
    out_dir = Path(out if out is not None else cfg.out) if out != "" else None

    gens = read_generations(folders)
    arms = sorted(gens["arm"].unique(), key=lambda arm: (arm != cfg.base_arm, arm))
    if cfg.base_arm not in arms:
        raise ValueError(f"base arm {cfg.base_arm!r} is not among the generations' arms {arms}; set evaluate.base_arm")
    real = real_images(manifest, gens, cfg.split)
    height, width = int(gens["height"].iloc[0]), int(gens["width"].iloc[0])
    size = (width, height)

    loaded: dict[str, Any] = {}

    def scorer_for(spec: str) -> Any:
        if spec not in loaded:
            loaded[spec] = create_scorer(
                spec, device=cfg.device, precision=cfg.precision, trust_remote_code=cfg.trust_remote_code
            )
        return loaded[spec]

    distances: list[_Distance] = []
    if cfg.fid:
        from dldc.device import resolve_device
        from dldc.evaluate.inception import InceptionFeatures

        inception = InceptionFeatures(cfg.inception_weights, resolve_device(cfg.device))
        distances.append(_Distance("FID", "KID", "inception", "inception", inception))
    for label, spec in cfg.feature_scorers.items():
        distances.append(
            _Distance(f"FD-{label}", f"KD-{label}", label, "scorer", ScorerFeatures(scorer_for(spec), spec))
        )
    prompts = [_Prompts(label, PromptScorer(scorer_for(spec), spec)) for label, spec in cfg.clip_scorers.items()]

    # Reference prompts: each (image, pair) once; the real image scored against its own prompt.
    reference = gens.drop_duplicates(["image_id", "pair_id"])[["image_id", "pair_id", "scene", "prompt"]]
    reference = reference.sort_values(["image_id", "pair_id"]).reset_index(drop=True)
    real_row = {image_id: row for row, image_id in enumerate(real.frame["image_id"])}

    total = len(real.frame) + len(gens)
    bar = tqdm(total=total, desc="evaluate: encode images", disable=not progress)
    real_embeddings: dict[str, list[np.ndarray]] = {p.label: [] for p in prompts}
    gen_embeddings: dict[str, list[np.ndarray]] = {p.label: [] for p in prompts}
    for frame, exact, embeddings in ((real.frame, False, real_embeddings), (gens, True, gen_embeddings)):
        for chunk in _chunks(len(frame), cfg.batch_size):
            rows = frame.iloc[chunk]
            images = load_images(rows["file"].tolist(), size, cfg.real_resize, exact=exact, workers=cfg.workers)
            ids = rows["image_id"].tolist()
            by_spec = {}
            for distance in distances:
                features = distance.extractor.extract(images, ids)
                _append(distance.generated if exact else distance.real, features)
                by_spec[getattr(distance.extractor, "spec", None)] = features
            for prompt in prompts:
                # A scorer that is also a distance's extractor already embedded these images.
                shared = by_spec.get(prompt.scorer.spec)
                chosen = prompt.scorer.select(shared, ids) if shared else prompt.scorer.image_embeddings(images, ids)
                embeddings[prompt.label].append(chosen)
            bar.update(len(rows))
    bar.close()
    for distance in distances:
        distance.real = [np.concatenate(blocks) for blocks in distance.real]
        distance.generated = [np.concatenate(blocks) for blocks in distance.generated]

    # Prompt embeddings: one per distinct (image, prompt), in the fold space of that image.
    text_keys = pd.concat([gens[["image_id", "prompt"]], reference[["image_id", "prompt"]]]).drop_duplicates()
    text_keys = text_keys.reset_index(drop=True)
    text_row = {key: row for row, key in enumerate(zip(text_keys["image_id"], text_keys["prompt"]))}
    gen_text = np.array([text_row[key] for key in zip(gens["image_id"], gens["prompt"])])
    ref_text = np.array([text_row[key] for key in zip(reference["image_id"], reference["prompt"])])
    ref_image = np.array([real_row[i] for i in reference["image_id"]])
    for prompt in prompts:
        texts = np.concatenate(
            [
                prompt.scorer.text_embeddings(
                    text_keys["prompt"].iloc[chunk].tolist(), text_keys["image_id"].iloc[chunk].tolist()
                )
                for chunk in _chunks(len(text_keys), cfg.batch_size)
            ]
        )
        generated_images = np.concatenate(gen_embeddings[prompt.label])
        real_images_ = np.concatenate(real_embeddings[prompt.label])
        prompt.generated = np.sum(generated_images * texts[gen_text], axis=1)
        prompt.reference = np.sum(real_images_[ref_image] * texts[ref_text], axis=1)

    groups = [ALL_SCENES] + (sorted(gens["scene"].unique()) if cfg.per_scene else [])
    rows_out: list[dict[str, Any]] = []
    replicates: dict[tuple[str, str, str], np.ndarray] = {}
    paired_everywhere = True
    resolution = f"{width}x{height}"
    real_resize = f"real: centre crop to {width}:{height}, PIL {cfg.real_resize} to {resolution}; generated: as saved"
    for group_index, scene in enumerate(tqdm(groups, desc="evaluate: metrics", disable=not progress)):
        group_rows, group_reps, paired = _evaluate_group(
            scene, group_index, gens, arms, real.frame, reference, distances, prompts, cfg
        )
        paired_everywhere &= paired
        for row in group_rows:
            row["resolution"] = resolution
            row["resize"] = f"{real_resize}; extractor: {row.pop('input')}"
        rows_out.extend(group_rows)
        replicates.update(group_reps)
    if len(groups) > 2:
        intra_rows, intra_reps = _intra_scene_rows(rows_out, replicates, arms, distances, groups[1:], cfg)
        rows_out.extend(intra_rows)
        replicates.update(intra_reps)

    table = _add_changes(pd.DataFrame(rows_out), replicates, cfg)
    results = {
        "schema": 1,
        "protocol": {
            "manifest": str(manifest),
            "manifest_sha256": file_sha256(manifest),
            "split": cfg.split,
            "base_arm": cfg.base_arm,
            "resolution": resolution,
            "real_resize": real_resize,
            "n_real": len(real.frame),
            "bootstrap": cfg.bootstrap,
            "ci": cfg.ci,
            "ci_method": "percentile bootstrap over real images and prompt keys (pair_id, seed), same draws for "
            "every arm; KID: spread of subset estimates",
            "kid": {
                "subsets": cfg.kid_subsets,
                "subset_size": cfg.kid_subset_size,
                "kernel": "(x.y / d + 1)^3",
                "estimator": "unbiased MMD^2",
            },
            "seed": cfg.seed,
            "paired": paired_everywhere,
            "fingerprint": _fingerprint(gens, real.frame, distances, prompts, cfg, resolution),
            "warnings": _protocol_warnings(gens, arms),
        },
        "extractors": {
            d.fd_name: {
                "kind": d.kind,
                "label": d.label,
                "metrics": [d.fd_name, d.kd_name],
                "extractor_id": d.extractor.extractor_id,
                "spec": getattr(d.extractor, "spec", None),
                "weights": getattr(d.extractor, "weights", None),
                "weights_sha256": getattr(d.extractor, "weights_sha256", None),
                "feature_dim": int(d.extractor.dim),
                "spaces": int(d.extractor.spaces),
                "input": d.extractor.input_description,
                "note": None
                if d.extractor.spaces == 1
                else "cross-fitted: distance computed in each fold model's space, then averaged",
            }
            for d in distances
        },
        "scorers": {
            p.label: {
                "spec": p.scorer.spec,
                "scorer_id": p.scorer.scorer_id,
                "metrics": [f"CLIPScore-{p.label}", f"cos-{p.label}"],
                "conventions": {"CLIPScore": "100*max(cos, 0)", "cos": "raw cosine of L2-normalised embeddings"},
                "crossfit": "fold model of the source test image (never trained on it or its captions)"
                if p.scorer.crossfit
                else None,
                "prompts_truncated": int(p.scorer.truncated_prompts),
                "context_length": p.scorer.context_length,
                "input": p.scorer.input_description,
            }
            for p in prompts
        },
        "arms": {arm: _arm_info(gens[gens["arm"] == arm]) for arm in arms},
        "metrics": _records(table),
        "seconds": round(time.perf_counter() - start, 2),
    }
    per_image = _per_image(gens, reference, prompts)
    result = EvaluationResult(out_dir, results, table, replicates, per_image)
    if out_dir is not None:
        write_evaluation(result, out_dir)
    return result


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _append(store: list[list[np.ndarray]], per_space: list[np.ndarray]) -> None:
    if not store:
        store.extend([] for _ in per_space)
    for blocks, block in zip(store, per_space):
        blocks.append(block)


def _fd_point(distance: _Distance, real_idx: np.ndarray, gen_idx: np.ndarray) -> float:
    """The distance of one real and one generated set, averaged over the extractor's spaces."""
    if len(real_idx) < 2 or len(gen_idx) < 2:
        return float("nan")
    pairs = zip(distance.real, distance.generated)
    return float(np.mean([frechet_distance(r[real_idx], g[gen_idx]) for r, g in pairs]))


def _fd_bootstrap(distance: _Distance, real_draws: np.ndarray, pos: np.ndarray, key_draws: np.ndarray) -> np.ndarray:
    """Distances of every resample: ``real_draws`` (B, n_real) rows, generations ``pos[key_draws]``."""
    if len(real_draws) == 0 or real_draws.shape[1] < 2:
        return np.full(len(real_draws), np.nan)
    gen_draws = pos[key_draws]
    if (gen_draws >= 0).all():  # the arm has every key: equal-size resamples, batched
        if gen_draws.shape[1] < 2:
            return np.full(len(real_draws), np.nan)
        pairs = zip(distance.real, distance.generated)
        return np.mean([frechet_distance_resampled(r, g, real_draws, gen_draws) for r, g in pairs], axis=0)
    # An arm that lacks some keys: resamples of different sizes, one at a time.
    return np.array([_fd_point(distance, rows, keys[keys >= 0]) for rows, keys in zip(real_draws, gen_draws)])


def _mean_bootstrap(values: np.ndarray, pos: np.ndarray, key_draws: np.ndarray) -> np.ndarray:
    """Mean of ``values[pos[k]]`` over each resample of keys (keys the arm lacks left out)."""
    picked = pos[key_draws]
    if (picked >= 0).all():
        return values[picked].mean(axis=1)
    return np.array([_mean(values[keys[keys >= 0]]) for keys in picked])


def _evaluate_group(
    scene: str,
    group_index: int,
    gens: pd.DataFrame,
    arms: list[str],
    real: pd.DataFrame,
    reference: pd.DataFrame,
    distances: list[_Distance],
    prompts: list[_Prompts],
    cfg: EvaluateConfig,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str], np.ndarray], bool]:
    """Point values and shared-draw bootstrap replicates of every metric for one scene (or all)."""
    in_group = gens if scene == ALL_SCENES else gens[gens["scene"] == scene]
    keys = sorted(set(zip(in_group["pair_id"], in_group["seed"])))
    key_index = {key: i for i, key in enumerate(keys)}
    real_ids = sorted(in_group["image_id"].unique())
    real_position = {image_id: i for i, image_id in enumerate(real["image_id"])}
    real_idx = np.array([real_position[i] for i in real_ids])
    positions: dict[str, np.ndarray] = {}
    for arm in arms:
        rows = in_group[in_group["arm"] == arm]
        pos = np.full(len(keys), -1, dtype=np.int64)
        for row, pair_id, seed in zip(rows.index, rows["pair_id"], rows["seed"]):
            pos[key_index[(pair_id, seed)]] = row
        positions[arm] = pos
    paired = all((pos >= 0).all() for pos in positions.values())
    ref_row = {pair_id: i for i, pair_id in enumerate(reference["pair_id"])}
    key_ref = np.array([ref_row[pair_id] for pair_id, _ in keys])

    out: list[dict[str, Any]] = []
    reps: dict[tuple[str, str, str], np.ndarray] = {}
    n_boot = cfg.bootstrap
    rng = np.random.default_rng([cfg.seed, group_index])
    real_draws = real_idx[rng.integers(0, len(real_idx), (n_boot, len(real_idx)))]
    key_draws = rng.integers(0, len(keys), (n_boot, len(keys)))
    every_key = np.arange(len(keys))

    def base_row(arm: str, metric: str, value: float, n_generated: int) -> dict[str, Any]:
        return {
            "scene": scene,
            "arm": arm,
            "metric": metric,
            "value": value,
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "ci_method": "bootstrap" if n_boot else "none",
            "std": float("nan"),
            "n_real": len(real_idx),
            "n_generated": n_generated,
            "higher_is_better": higher_is_better(metric),
        }

    for arm in arms:
        pos = positions[arm]
        gen_idx = pos[pos >= 0]
        for distance in distances:
            value = _fd_point(distance, real_idx, gen_idx)
            row = base_row(arm, distance.fd_name, value, len(gen_idx))
            row.update(feature_dim=distance.extractor.dim, spaces=distance.extractor.spaces)
            row["extractor"] = distance.extractor.extractor_id
            row["input"] = distance.extractor.input_description
            values = _fd_bootstrap(distance, real_draws, pos, key_draws)
            reps[(scene, arm, distance.fd_name)] = values
            row["ci_low"], row["ci_high"] = percentile_interval(values, cfg.ci)
            out.append(row)

            row = base_row(arm, distance.kd_name, float("nan"), len(gen_idx))
            row.update(feature_dim=distance.extractor.dim, spaces=distance.extractor.spaces, ci_method="subsets")
            row["extractor"] = distance.extractor.extractor_id
            row["input"] = distance.extractor.input_description
            if len(real_idx) >= 2 and len(gen_idx) >= 2:
                per_space = [
                    kernel_distance(r[real_idx], g[gen_idx], cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
                    for r, g in zip(distance.real, distance.generated)
                ]
                row["value"] = float(np.mean([k.mean for k in per_space]))
                row["std"] = float(np.mean([k.std for k in per_space]))
                row["ci_low"] = float(np.mean([k.low for k in per_space]))
                row["ci_high"] = float(np.mean([k.high for k in per_space]))
                row["kid_subset_size"] = per_space[0].subset_size
            out.append(row)
        for prompt in prompts:
            cosines = prompt.generated
            for metric, transform in _prompt_metrics(prompt.label):
                row = base_row(arm, metric, _mean(transform(cosines[gen_idx])), len(gen_idx))
                row["extractor"] = prompt.scorer.scorer_id
                row["input"] = prompt.scorer.input_description
                values = _mean_bootstrap(transform(cosines), pos, key_draws)
                reps[(scene, arm, metric)] = values
                row["ci_low"], row["ci_high"] = percentile_interval(values, cfg.ci)
                out.append(row)
    # The real images against the same prompts: what a perfect generator would score.
    for prompt in prompts:
        cosines = prompt.reference[key_ref]
        for metric, transform in _prompt_metrics(prompt.label):
            row = base_row(REFERENCE_ARM, metric, _mean(transform(cosines)), 0)
            row["extractor"] = prompt.scorer.scorer_id
            row["input"] = prompt.scorer.input_description
            values = _mean_bootstrap(transform(cosines), every_key, key_draws)
            reps[(scene, REFERENCE_ARM, metric)] = values
            row["ci_low"], row["ci_high"] = percentile_interval(values, cfg.ci)
            out.append(row)
    return out, reps, paired


def _intra_scene_rows(
    rows: list[dict[str, Any]],
    replicates: dict[tuple[str, str, str], np.ndarray],
    arms: list[str],
    distances: list[_Distance],
    scenes: list[str],
    cfg: EvaluateConfig,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str], np.ndarray]]:
    """Intra-scene distances: the mean over scenes of each scene's FD (``<FD name>-intra``, scene ``all``).

    The pooled FD only compares the two image distributions; an image of the wrong scene for its
    prompt still counts as a good sample. Averaging the per-scene distances asks for the right scene
    per prompt (intra-FID of class-conditional GANs). The scenes' bootstrap draws are independent, so
    the mean of their replicates is a stratified bootstrap of the mean.
    """
    by_key = {(r["scene"], r["arm"], r["metric"]): r for r in rows}
    out: list[dict[str, Any]] = []
    reps: dict[tuple[str, str, str], np.ndarray] = {}
    for distance in distances:
        name, metric = distance.fd_name, distance.fd_name + INTRA_SUFFIX
        for arm in arms:
            present = [s for s in scenes if np.isfinite(by_key.get((s, arm, name), {}).get("value", np.nan))]
            if not present:
                continue
            pooled = by_key[(ALL_SCENES, arm, name)]
            row = {**pooled, "metric": metric, "higher_is_better": higher_is_better(metric)}
            row["value"] = float(np.mean([by_key[(s, arm, name)]["value"] for s in present]))
            row["ci_method"] = f"mean of {len(present)} scenes; stratified bootstrap" if cfg.bootstrap else "none"
            row["ci_low"] = row["ci_high"] = float("nan")
            draws = [replicates[(s, arm, name)] for s in present if (s, arm, name) in replicates]
            if len(draws) == len(present) and all(len(d) for d in draws):
                values = np.mean(np.stack(draws), axis=0)
                reps[(ALL_SCENES, arm, metric)] = values
                row["ci_low"], row["ci_high"] = percentile_interval(values, cfg.ci)
            out.append(row)
    return out, reps


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _prompt_metrics(label: str) -> list[tuple[str, Any]]:
    return [
        (f"CLIPScore-{label}", lambda cos: 100.0 * np.maximum(cos, 0.0)),
        (f"cos-{label}", lambda cos: cos),
    ]


def _add_changes(
    table: pd.DataFrame, replicates: dict[tuple[str, str, str], np.ndarray], cfg: EvaluateConfig
) -> pd.DataFrame:
    """Absolute and relative change of every row vs. the base arm, with paired intervals."""
    base = table[table["arm"] == cfg.base_arm].set_index(["scene", "metric"])["value"]
    columns = {name: [] for name in ("delta_vs_base", "delta_ci_low", "delta_ci_high")}
    for scene, arm, metric, value in zip(table["scene"], table["arm"], table["metric"], table["value"]):
        reference = base.get((scene, metric), float("nan"))
        columns["delta_vs_base"].append(value - reference)
        mine, theirs = replicates.get((scene, arm, metric)), replicates.get((scene, cfg.base_arm, metric))
        low = high = float("nan")
        if mine is not None and theirs is not None and arm != cfg.base_arm:
            low, high = percentile_interval(mine - theirs, cfg.ci)
        columns["delta_ci_low"].append(low)
        columns["delta_ci_high"].append(high)
    table = table.assign(**columns)
    scale = table.apply(lambda r: abs(base.get((r["scene"], r["metric"]), float("nan"))), axis=1).replace(0, np.nan)
    table["rel_change_pct"] = 100 * table["delta_vs_base"] / scale
    table["rel_ci_low_pct"] = 100 * table["delta_ci_low"] / scale
    table["rel_ci_high_pct"] = 100 * table["delta_ci_high"] / scale
    return table


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Metric rows as JSON-safe dicts (NaN → None)."""
    records = []
    for record in table.to_dict(orient="records"):
        records.append({k: (None if isinstance(v, float) and math.isnan(v) else _plain(v)) for k, v in record.items()})
    return records


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _arm_info(rows: pd.DataFrame) -> dict[str, Any]:
    def single(column: str) -> Any:
        values = sorted({_plain(v) for v in rows[column]}, key=str)
        return values[0] if len(values) == 1 else values

    return {
        "n_generated": len(rows),
        "folder": single("folder"),
        "model": single("model"),
        "adapter": single("adapter"),
        "guidance_scale": single("guidance_scale"),
        "steps": single("steps"),
        "seeds": sorted({int(s) for s in rows["seed"]}),
    }


def _protocol_warnings(gens: pd.DataFrame, arms: list[str]) -> list[str]:
    """Differences between arms that make their comparison less clean (recorded, not fatal)."""
    warnings = []
    keys = {arm: set(zip(gens.loc[gens.arm == arm, "pair_id"], gens.loc[gens.arm == arm, "seed"])) for arm in arms}
    first = arms[0]
    for arm in arms[1:]:
        if keys[arm] != keys[first]:
            warnings.append(
                f"arms {first!r} and {arm!r} cover different (pair_id, seed) keys "
                f"({len(keys[first] - keys[arm])} only in {first}, {len(keys[arm] - keys[first])} only in {arm}): "
                "the bootstrap is not fully paired"
            )
    for column in ("guidance_scale", "steps"):
        values = {arm: sorted(set(gens.loc[gens.arm == arm, column].tolist())) for arm in arms}
        if len({json.dumps(v) for v in values.values()}) > 1:
            warnings.append(f"arms differ in {column}: {values}")
    return warnings


def _fingerprint(
    gens: pd.DataFrame,
    real: pd.DataFrame,
    distances: list[_Distance],
    prompts: list[_Prompts],
    cfg: EvaluateConfig,
    resolution: str,
) -> str:
    """sha256 of what makes two evaluations' numbers comparable (not the generated images)."""
    protocol = {
        "real": sorted(real["image_id"]),
        "keys": sorted(f"{p}|{s}|{t}" for p, s, t in zip(gens["pair_id"], gens["seed"], gens["prompt"])),
        "resolution": resolution,
        "real_resize": cfg.real_resize,
        "guidance_scale": sorted({float(v) for v in gens["guidance_scale"]}),
        "steps": sorted({int(v) for v in gens["steps"]}),
        "extractors": sorted(d.extractor.extractor_id for d in distances),
        "scorers": sorted(p.scorer.scorer_id for p in prompts),
        "kid": [cfg.kid_subsets, cfg.kid_subset_size],
        "split": cfg.split,
    }
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def _per_image(gens: pd.DataFrame, reference: pd.DataFrame, prompts: list[_Prompts]) -> pd.DataFrame:
    generated = gens[["arm", "gen_id", "image_id", "pair_id", "scene", "seed", "prompt"]].copy()
    real = reference.assign(arm=REFERENCE_ARM, gen_id="", seed=-1)[generated.columns]
    for prompt in prompts:
        generated[f"cos-{prompt.label}"] = prompt.generated
        real[f"cos-{prompt.label}"] = prompt.reference
        generated[f"CLIPScore-{prompt.label}"] = 100.0 * np.maximum(prompt.generated, 0.0)
        real[f"CLIPScore-{prompt.label}"] = 100.0 * np.maximum(prompt.reference, 0.0)
    return pd.concat([generated, real], ignore_index=True)


def summary(result: EvaluationResult) -> dict[str, Any]:
    """The overall value and relative change vs. base of every metric per arm (``evaluate.json``)."""
    overall = result.table[result.table["scene"] == ALL_SCENES]
    values: dict[str, dict[str, float | None]] = {}
    changes: dict[str, dict[str, float | None]] = {}
    for arm, metric, value, change in zip(overall.arm, overall.metric, overall.value, overall.rel_change_pct):
        values.setdefault(arm, {})[metric] = None if math.isnan(value) else float(f"{value:.6g}")
        if arm != result.results["protocol"]["base_arm"]:
            changes.setdefault(arm, {})[metric] = None if math.isnan(change) else float(f"{change:.4g}")
    return {
        "arms": values,
        "relative_change_vs_base_pct": changes,
        "n_real": result.results["protocol"]["n_real"],
        "n_generated": {arm: info["n_generated"] for arm, info in result.results["arms"].items()},
        "fingerprint": result.results["protocol"]["fingerprint"],
    }


def write_evaluation(result: EvaluationResult, out: str | Path) -> Path:
    """Write every output file of an evaluation into ``out`` (atomically, as one folder)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        write_json(tmp / RESULTS_FILE, result.results)
        write_json(tmp / SUMMARY_FILE, summary(result))
        (tmp / MARKDOWN_FILE).write_text(render_markdown(result.results), encoding="utf-8")
        write_parquet(tmp / METRICS_FILE, pa.Table.from_pandas(result.table, preserve_index=False))
        write_parquet(tmp / PER_IMAGE_FILE, pa.Table.from_pandas(result.per_image, preserve_index=False))
        boot = [
            {"scene": scene, "arm": arm, "metric": metric, "replicate": i, "value": float(v)}
            for (scene, arm, metric), values in result.replicates.items()
            for i, v in enumerate(values)
        ]
        schema = pa.schema(
            [("scene", pa.string()), ("arm", pa.string()), ("metric", pa.string()), ("replicate", pa.int32()),
             ("value", pa.float64())]
        )  # fmt: skip
        write_parquet(tmp / BOOTSTRAP_FILE, pa.Table.from_pylist(boot, schema=schema))
    result.out = out
    return out


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """Read ``results.json`` of an evaluation folder.

    Raises:
        FileNotFoundError: the folder has no ``results.json`` (run ``dldc evaluate``).
    """
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `dldc evaluate` first")
    return json.loads(path.read_text(encoding="utf-8"))
