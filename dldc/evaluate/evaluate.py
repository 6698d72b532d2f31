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

Every metric carries its direction (:mod:`dldc.evaluate.metrics`); the resampling is in
:mod:`dldc.evaluate.bootstrap`; the output folder (``results.json``, ``metrics.parquet``, ...) in
:mod:`dldc.evaluate.results`.

The loop (:func:`evaluate_generations`): read the generations and the real images; load the
feature extractors and prompt scorers; encode every image once; embed the prompts and take their
cosines; per scene, the point values and shared-draw replicates of every metric; the intra-scene
means; the change of every row vs. the base arm; the protocol record; write.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dldc.config import EvaluateConfig
from dldc.evaluate.bootstrap import (
    frechet_replicates,
    mean_frechet_distance,
    mean_or_nan,
    mean_replicates,
    paired_interval,
    percentile_interval,
    shared_draws,
)
from dldc.evaluate.distances import kernel_distance
from dldc.evaluate.features import PromptScorer, ScorerFeatures, load_images
from dldc.evaluate.generations import REFERENCE_ARM, read_generations, real_images
from dldc.evaluate.metrics import (
    ALL_SCENES,
    INCEPTION,
    Metric,
    clip_score,
    frechet_metric,
    kernel_metric,
    prompt_metrics,
)
from dldc.evaluate.results import (
    EvaluationResult,
    arm_info,
    fingerprint,
    protocol_warnings,
    records,
    write_evaluation,
)
from dldc.io import file_sha256


@dataclass
class _Distance:
    """A feature extractor and the two metrics it gives."""

    fd: Metric
    kd: Metric
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
        An :class:`~dldc.evaluate.results.EvaluationResult`.

    Raises:
        FileNotFoundError: missing generations, manifest, images, scorer or Inception weights
            (the message says how to get them).
        ValueError: malformed generations (see :func:`~dldc.evaluate.generations.read_generations`)
            or an unknown base arm.
    """
    start = time.perf_counter()
    cfg = cfg or EvaluateConfig()
    folders = [Path(p) for p in (generations if generations is not None else cfg.generations)]
    manifest = Path(manifest if manifest is not None else cfg.manifest)
    out_dir = Path(out if out is not None else cfg.out) if out != "" else None

    # The generations, their arms (base first) and the real images of their prompts.
    gens = read_generations(folders)
    arms = sorted(gens["arm"].unique(), key=lambda arm: (arm != cfg.base_arm, arm))
    if cfg.base_arm not in arms:
        raise ValueError(f"base arm {cfg.base_arm!r} is not among the generations' arms {arms}; set evaluate.base_arm")
    real = real_images(manifest, gens, cfg.split)
    height, width = int(gens["height"].iloc[0]), int(gens["width"].iloc[0])
    resolution = f"{width}x{height}"
    real_resize = f"real: centre crop to {width}:{height}, PIL {cfg.real_resize} to {resolution}; generated: as saved"
    # Reference prompts: each (image, pair) once; the real image scored against its own prompt.
    reference = gens.drop_duplicates(["image_id", "pair_id"])[["image_id", "pair_id", "scene", "prompt"]]
    reference = reference.sort_values(["image_id", "pair_id"]).reset_index(drop=True)

    # Features and cosines: every image encoded once, every distinct prompt embedded once.
    distances, prompts = _extractors(cfg)
    image_embeddings = _encode_images(real.frame, gens, (width, height), distances, prompts, cfg, progress)
    _prompt_cosines(gens, reference, real.frame, prompts, image_embeddings, cfg)

    # Metrics per scene (``all`` first), with replicates on draws shared by every arm.
    groups = [ALL_SCENES] + (sorted(gens["scene"].unique()) if cfg.per_scene else [])
    rows: list[dict[str, Any]] = []
    replicates: dict[tuple[str, str, str], np.ndarray] = {}
    paired_everywhere = True
    for group_index, scene in enumerate(tqdm(groups, desc="evaluate: metrics", disable=not progress)):
        group_rows, group_reps, paired = _evaluate_group(
            scene, group_index, gens, arms, real.frame, reference, distances, prompts, cfg
        )
        paired_everywhere &= paired
        for row in group_rows:
            row["resolution"] = resolution
            row["resize"] = f"{real_resize}; extractor: {row.pop('input')}"
        rows.extend(group_rows)
        replicates.update(group_reps)
    if len(groups) > 2:
        intra_rows, intra_reps = _intra_scene_rows(rows, replicates, arms, distances, groups[1:], cfg)
        rows.extend(intra_rows)
        replicates.update(intra_reps)
    table = _add_changes(pd.DataFrame(rows), replicates, cfg)

    # The record: protocol, extractors, scorers, arms, every metric row.
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
            "fingerprint": fingerprint(
                gens,
                real.frame,
                [d.extractor.extractor_id for d in distances],
                [p.scorer.scorer_id for p in prompts],
                cfg,
                resolution,
            ),
            "warnings": protocol_warnings(gens, arms),
        },
        "extractors": {d.fd.name: _extractor_record(d) for d in distances},
        "scorers": {p.label: _scorer_record(p) for p in prompts},
        "arms": {arm: arm_info(gens[gens["arm"] == arm]) for arm in arms},
        "metrics": records(table),
        "seconds": round(time.perf_counter() - start, 2),
    }
    result = EvaluationResult(out_dir, results, table, replicates, _per_image(gens, reference, prompts))
    if out_dir is not None:
        write_evaluation(result, out_dir)
    return result


def _extractors(cfg: EvaluateConfig) -> tuple[list[_Distance], list[_Prompts]]:
    """The feature extractors (Inception, IEL image towers) and prompt scorers; a spec used twice loads once."""
    from dldc.iel.factory import create_scorer

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
        distances.append(
            _Distance(frechet_metric(INCEPTION), kernel_metric(INCEPTION), INCEPTION, INCEPTION, inception)
        )
    for label, spec in cfg.feature_scorers.items():
        extractor = ScorerFeatures(scorer_for(spec), spec)
        distances.append(_Distance(frechet_metric(label), kernel_metric(label), label, "scorer", extractor))
    prompts = [_Prompts(label, PromptScorer(scorer_for(spec), spec)) for label, spec in cfg.clip_scorers.items()]
    return distances, prompts


def _encode_images(
    real: pd.DataFrame,
    gens: pd.DataFrame,
    size: tuple[int, int],
    distances: list[_Distance],
    prompts: list[_Prompts],
    cfg: EvaluateConfig,
    progress: bool,
) -> dict[bool, dict[str, np.ndarray]]:
    """Encode the real and generated images in batches, once for every extractor and scorer.

    Fills each distance's ``real`` / ``generated`` features (per space) and returns the prompt
    scorers' image embeddings ``{generated?: {label: (rows, d)}}``.
    """
    bar = tqdm(total=len(real) + len(gens), desc="evaluate: encode images", disable=not progress)
    embeddings: dict[bool, dict[str, list[np.ndarray]]] = {
        exact: {p.label: [] for p in prompts} for exact in (False, True)
    }
    for frame, exact in ((real, False), (gens, True)):
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
                embeddings[exact][prompt.label].append(chosen)
            bar.update(len(rows))
    bar.close()
    for distance in distances:
        distance.real = [np.concatenate(blocks) for blocks in distance.real]
        distance.generated = [np.concatenate(blocks) for blocks in distance.generated]
    return {exact: {label: np.concatenate(blocks) for label, blocks in by_label.items()}
            for exact, by_label in embeddings.items()}  # fmt: skip


def _prompt_cosines(
    gens: pd.DataFrame,
    reference: pd.DataFrame,
    real: pd.DataFrame,
    prompts: list[_Prompts],
    image_embeddings: dict[bool, dict[str, np.ndarray]],
    cfg: EvaluateConfig,
) -> None:
    """Each scorer's cosine of every generated image and of every reference (real) image with its prompt.

    One prompt embedding per distinct (image, prompt), in the fold space of that image.
    """
    real_row = {image_id: row for row, image_id in enumerate(real["image_id"])}
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
        generated_images, real_images_ = image_embeddings[True][prompt.label], image_embeddings[False][prompt.label]
        prompt.generated = np.sum(generated_images * texts[gen_text], axis=1)
        prompt.reference = np.sum(real_images_[ref_image] * texts[ref_text], axis=1)


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _append(store: list[list[np.ndarray]], per_space: list[np.ndarray]) -> None:
    if not store:
        store.extend([] for _ in per_space)
    for blocks, block in zip(store, per_space):
        blocks.append(block)


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
    real_draws, key_draws = shared_draws(cfg.seed, group_index, real_idx, len(keys), cfg.bootstrap)

    def base_row(arm: str, metric: Metric, value: float, n_generated: int) -> dict[str, Any]:
        return {
            "scene": scene,
            "arm": arm,
            "metric": metric.name,
            "value": value,
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "ci_method": "bootstrap" if cfg.bootstrap else "none",
            "std": float("nan"),
            "n_real": len(real_idx),
            "n_generated": n_generated,
            "higher_is_better": metric.higher_is_better,
        }

    def prompt_rows(arm: str, prompt: _Prompts, cosines: np.ndarray, pos: np.ndarray, n_generated: int) -> None:
        for metric, transform in prompt_metrics(prompt.label):
            values = transform(cosines)
            row = base_row(arm, metric, mean_or_nan(values[pos[pos >= 0]]), n_generated)
            row["extractor"] = prompt.scorer.scorer_id
            row["input"] = prompt.scorer.input_description
            reps[(scene, arm, metric.name)] = mean_replicates(values, pos, key_draws)
            row["ci_low"], row["ci_high"] = percentile_interval(reps[(scene, arm, metric.name)], cfg.ci)
            out.append(row)

    for arm in arms:
        pos = positions[arm]
        gen_idx = pos[pos >= 0]
        for distance in distances:
            extractor = distance.extractor
            row = base_row(arm, distance.fd, _fd_point(distance, real_idx, gen_idx), len(gen_idx))
            row.update(feature_dim=extractor.dim, spaces=extractor.spaces)
            row["extractor"] = extractor.extractor_id
            row["input"] = extractor.input_description
            values = frechet_replicates(distance.real, distance.generated, real_draws, pos, key_draws)
            reps[(scene, arm, distance.fd.name)] = values
            row["ci_low"], row["ci_high"] = percentile_interval(values, cfg.ci)
            out.append(row)
            out.append(
                _kernel_row(base_row(arm, distance.kd, float("nan"), len(gen_idx)), distance, real_idx, gen_idx, cfg)
            )
        for prompt in prompts:
            prompt_rows(arm, prompt, prompt.generated, pos, len(gen_idx))
    # The real images against the same prompts: what a perfect generator would score.
    for prompt in prompts:
        prompt_rows(REFERENCE_ARM, prompt, prompt.reference[key_ref], np.arange(len(keys)), 0)
    return out, reps, paired


def _fd_point(distance: _Distance, real_idx: np.ndarray, gen_idx: np.ndarray) -> float:
    return mean_frechet_distance(distance.real, distance.generated, real_idx, gen_idx)


def _kernel_row(
    row: dict[str, Any], distance: _Distance, real_idx: np.ndarray, gen_idx: np.ndarray, cfg: EvaluateConfig
) -> dict[str, Any]:
    """KD: the subset estimates' mean, spread and percentiles, averaged over the extractor's spaces."""
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
    return row


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
        name, metric = distance.fd.name, distance.fd.intra()
        for arm in arms:
            present = [s for s in scenes if np.isfinite(by_key.get((s, arm, name), {}).get("value", np.nan))]
            if not present:
                continue
            pooled = by_key[(ALL_SCENES, arm, name)]
            row = {**pooled, "metric": metric.name, "higher_is_better": metric.higher_is_better}
            row["value"] = float(np.mean([by_key[(s, arm, name)]["value"] for s in present]))
            row["ci_method"] = f"mean of {len(present)} scenes; stratified bootstrap" if cfg.bootstrap else "none"
            row["ci_low"] = row["ci_high"] = float("nan")
            draws = [replicates[(s, arm, name)] for s in present if (s, arm, name) in replicates]
            if len(draws) == len(present) and all(len(d) for d in draws):
                values = np.mean(np.stack(draws), axis=0)
                reps[(ALL_SCENES, arm, metric.name)] = values
                row["ci_low"], row["ci_high"] = percentile_interval(values, cfg.ci)
            out.append(row)
    return out, reps


def _add_changes(
    table: pd.DataFrame, replicates: dict[tuple[str, str, str], np.ndarray], cfg: EvaluateConfig
) -> pd.DataFrame:
    """Absolute and relative change of every row vs. the base arm, with paired intervals."""
    base = table[table["arm"] == cfg.base_arm].set_index(["scene", "metric"])["value"]
    columns: dict[str, list[float]] = {name: [] for name in ("delta_vs_base", "delta_ci_low", "delta_ci_high")}
    for scene, arm, metric, value in zip(table["scene"], table["arm"], table["metric"], table["value"]):
        columns["delta_vs_base"].append(value - base.get((scene, metric), float("nan")))
        low = high = float("nan")
        if arm != cfg.base_arm:
            low, high = paired_interval(
                replicates.get((scene, arm, metric)), replicates.get((scene, cfg.base_arm, metric)), cfg.ci
            )
        columns["delta_ci_low"].append(low)
        columns["delta_ci_high"].append(high)
    table = table.assign(**columns)
    scale = table.apply(lambda r: abs(base.get((r["scene"], r["metric"]), float("nan"))), axis=1).replace(0, np.nan)
    table["rel_change_pct"] = 100 * table["delta_vs_base"] / scale
    table["rel_ci_low_pct"] = 100 * table["delta_ci_low"] / scale
    table["rel_ci_high_pct"] = 100 * table["delta_ci_high"] / scale
    return table


def _extractor_record(distance: _Distance) -> dict[str, Any]:
    extractor = distance.extractor
    return {
        "kind": distance.kind,
        "label": distance.label,
        "metrics": [distance.fd.name, distance.kd.name],
        "extractor_id": extractor.extractor_id,
        "spec": getattr(extractor, "spec", None),
        "weights": getattr(extractor, "weights", None),
        "weights_sha256": getattr(extractor, "weights_sha256", None),
        "feature_dim": int(extractor.dim),
        "spaces": int(extractor.spaces),
        "input": extractor.input_description,
        "note": None
        if extractor.spaces == 1
        else "cross-fitted: distance computed in each fold model's space, then averaged",
    }


def _scorer_record(prompt: _Prompts) -> dict[str, Any]:
    scorer = prompt.scorer
    return {
        "spec": scorer.spec,
        "scorer_id": scorer.scorer_id,
        "metrics": [metric.name for metric, _ in prompt_metrics(prompt.label)],
        "conventions": {"CLIPScore": "100*max(cos, 0)", "cos": "raw cosine of L2-normalised embeddings"},
        "crossfit": "fold model of the source test image (never trained on it or its captions)"
        if scorer.crossfit
        else None,
        "prompts_truncated": int(scorer.truncated_prompts),
        "context_length": scorer.context_length,
        "input": scorer.input_description,
    }


def _per_image(gens: pd.DataFrame, reference: pd.DataFrame, prompts: list[_Prompts]) -> pd.DataFrame:
    generated = gens[["arm", "gen_id", "image_id", "pair_id", "scene", "seed", "prompt"]].copy()
    real = reference.assign(arm=REFERENCE_ARM, gen_id="", seed=-1)[generated.columns]
    for prompt in prompts:
        generated[f"cos-{prompt.label}"] = prompt.generated
        real[f"cos-{prompt.label}"] = prompt.reference
        generated[f"CLIPScore-{prompt.label}"] = clip_score(prompt.generated)
        real[f"CLIPScore-{prompt.label}"] = clip_score(prompt.reference)
    return pd.concat([generated, real], ignore_index=True)
