"""One trial of the dual loop (``dldc select-trial --ratio R``): clean at ``R`` → short LoRA → generate → evaluate.

Every scene is cleaned at the same ratio ``R`` (so a grid of ratios costs ``|grid|`` fine-tunes,
not ``|scenes| × |grid|``), a short LoRA is trained on it with :func:`dldc.t2i.finetune.finetune`
(``select.trial_steps`` steps, the other settings and the seed from ``finetune``), images are made
for the held-out prompts (``select.eval_split``) with :func:`dldc.t2i.generate.generate_images`, and
:func:`dldc.evaluate.evaluate.evaluate_generations` measures them per scene against the real
held-out images. Trials of different ratios share every seed, so their differences are the data's.

Trial folder::

    cleaned_manifest.parquet   the manifest cleaned at R in every scene (or only in ``scenes``)
    adapter/                   the LoRA (finetune's folder; resumes when killed)
    generate/                  held-out images (resumes)
    evaluate/                  the evaluation (results.json, metrics.parquet, bootstrap.parquet, ...)
    trial.json                 ratio, counts, per-scene metrics {scene: {metric: value}}, the digest
                               of the held-out prompt keys, input key, the sha256 of the files
                               ``dldc select`` reads (written last; a finished trial with the same
                               key whose files still match is not recomputed)
    trial.json.sha256          trial.json's own sha256: a damaged trial is recomputed, and
                               :func:`read_trials` refuses it

The trial folder is locked while a run writes it (:func:`dldc.io.output_lock`).

With ``select.trial_bootstrap`` replicates, ``evaluate/bootstrap.parquet`` holds the per-scene
bootstrap values. The draws depend only on the held-out prompt keys and the evaluation seed, which
every trial shares, so replicate ``b`` of two trials resamples the same prompts and images: their
difference is a paired bootstrap of the difference between the two ratios (:func:`trial_replicates`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dldc.config import DldcConfig
from dldc.io import (
    checksum_ok,
    checksum_path,
    file_sha256,
    files_mismatching,
    finished_report,
    output_lock,
    remove_stale_temps,
    write_checksum,
    write_json,
)
from dldc.select.ranking import keep_mask, load_ranked, write_cleaned_manifest

TRIAL_FILE = "trial.json"
TRIAL_MANIFEST = "cleaned_manifest.parquet"
TRIAL_ARM = "trial"
BOOTSTRAP_FILE = "evaluate/bootstrap.parquet"


def trial_dir_name(ratio: float) -> str:
    """Folder name of a ratio's trial, e.g. ``r0.3`` (what dvc.yaml's ``r${item}`` gives).

    Example:
        >>> trial_dir_name(0.3), trial_dir_name(0.0)
        ('r0.3', 'r0.0')
    """
    return f"r{float(ratio)!r}"


def trial_key(cfg: DldcConfig, ratio: float, inputs: tuple[str, str] | None = None,
              scenes: Sequence[str] | None = None) -> str:
    """Digest of everything a trial's numbers depend on (inputs and the settings used).

    ``inputs``: the sha256 of ``select.scores`` and ``select.manifest`` when the caller has them.
    ``scenes``: as in :func:`run_trial`.
    """
    section = cfg.select
    scores_sha, manifest_sha = inputs or (file_sha256(section.scores), file_sha256(section.manifest))
    settings = {
        "ratio": float(ratio),
        "scores": scores_sha,
        "manifest": manifest_sha,
        "splits": section.splits,
        "eval_split": section.eval_split,
        "steps": section.trial_steps,
        "prompts": [section.trial_prompts_per_image, section.trial_images_per_prompt, section.trial_generate_steps],
        "bootstrap": section.trial_bootstrap,
        "finetune": cfg.finetune.model_dump(mode="json", exclude={"out", "manifest", "steps", "device", "threads"}),
        "generate": cfg.generate.model_dump(mode="json", exclude={"out", "arms", "manifest", "device", "threads"}),
        "evaluate": cfg.evaluate.model_dump(mode="json", exclude={"out", "generations", "manifest", "device"}),
    }
    if scenes is not None:  # only then, so the keys of whole-grid trials stay as they were
        settings["scenes"] = sorted(scenes)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_trial(cfg: DldcConfig, ratio: float, out: str | Path, progress: bool = True,
              scenes: Sequence[str] | None = None) -> dict[str, Any]:
    """Run one trial at ``ratio`` into ``out`` (see the module docstring); returns ``trial.json``'s content.

    ``scenes`` cleans only those scenes at ``ratio`` and keeps every pair of the others: a
    one-scene-at-a-time trial, which the dual loop avoids (it costs ``|scenes| × |grid|``) but which
    shows how much of a scene's column is its own cleaning (``benchmarks/select_one_scene.py``).
    ``None`` (the loop's trials): every scene.

    Raises:
        FileNotFoundError: scores, manifest, base or scorer missing.
        ValueError: a ratio outside [0, 1), no held-out prompt, or a scene the data does not have.
        dldc.io.OutputLockedError: another process is writing ``out``.
    """
    with output_lock(out):
        return _run_trial(cfg, ratio, Path(out), progress, scenes)


def _finished_trial(out: Path, key: str) -> dict[str, Any] | None:
    """``trial.json`` of a finished trial with ``key`` whose own bytes and recorded files still match."""
    done = out / TRIAL_FILE
    if not done.is_file() or not checksum_ok(done):
        return None
    return finished_report(done, "key", key, lambda report: report.get("files") or {})


def _run_trial(
    cfg: DldcConfig, ratio: float, out: Path, progress: bool, scenes: Sequence[str] | None
) -> dict[str, Any]:
    from dldc.evaluate.evaluate import evaluate_generations
    from dldc.t2i.finetune import finetune
    from dldc.t2i.generate import generate_images

    section = cfg.select
    remove_stale_temps(out)  # what killed runs left
    inputs = (file_sha256(section.scores), file_sha256(section.manifest))
    key = trial_key(cfg, ratio, inputs, scenes)
    done = out / TRIAL_FILE
    previous = _finished_trial(out, key)
    if previous is not None:
        return previous
    started = time.perf_counter()
    ranked = load_ranked(section.scores, section.manifest, list(section.splits))
    if scenes is None:
        keep = keep_mask(ranked, {}, default=ratio)
    else:
        unknown = sorted(set(scenes) - set(ranked.loc[ranked["cleanable"], "scene"]))
        if unknown or not scenes:
            raise ValueError(f"scenes must name scenes with cleanable pairs, got {list(scenes)!r} "
                             f"(unknown: {unknown}); scenes: {sorted(ranked['scene'].unique())}")
        keep = keep_mask(ranked, dict.fromkeys(scenes, ratio), default=0.0)
    manifest = out / TRIAL_MANIFEST
    kept = write_cleaned_manifest(section.manifest, ranked, keep, manifest, {"ratio": ratio, "mode": "trial"})

    adapter = out / "adapter"
    tune = cfg.finetune.model_copy(
        update={"manifest": str(manifest), "out": str(adapter), "steps": section.trial_steps,
                "splits": list(section.splits), "sample_steps": 0}
    )
    tuned = finetune(tune, progress=progress)

    gen = cfg.generate.model_copy(
        update={
            "base": cfg.finetune.base,
            "revision": cfg.finetune.revision,
            "arms": {TRIAL_ARM: str(adapter)},
            "manifest": str(manifest),
            "split": section.eval_split,
            "prompts_per_image": section.trial_prompts_per_image,
            "images_per_prompt": section.trial_images_per_prompt,
            "steps": section.trial_generate_steps or cfg.generate.steps,
            "out": str(out / "generate"),
        }
    )
    generated = generate_images(gen, progress=progress)
    evaluation = cfg.evaluate.model_copy(
        update={"split": section.eval_split, "base_arm": TRIAL_ARM, "bootstrap": section.trial_bootstrap,
                "per_scene": True}
    )
    result = evaluate_generations(
        [generated.out], manifest, out / "evaluate", cfg=evaluation, progress=progress
    )
    rows = result.table[result.table["arm"] == TRIAL_ARM]
    metrics: dict[str, dict[str, float]] = {}
    for scene, metric, value in zip(rows["scene"], rows["metric"], rows["value"]):
        metrics.setdefault(str(scene), {})[str(metric)] = float(value)
    cleanable = ranked[ranked["cleanable"]]
    judged = result.per_image[result.per_image["arm"] == TRIAL_ARM]
    prompt_keys = sorted(f"{pair_id}|{seed}" for pair_id, seed in zip(judged["pair_id"], judged["seed"]))
    report = {
        "ratio": float(ratio),
        "scenes": None if scenes is None else sorted(scenes),
        "key": key,
        "scores_sha256": inputs[0],
        "manifest_sha256": inputs[1],
        "kept_pairs": kept,
        "dropped_pairs": int((~keep).sum()),
        "cleanable_pairs": len(cleanable),
        "final_loss": tuned["final_loss"],
        "finetune_steps": section.trial_steps,
        "eval_split": section.eval_split,
        "held_out_images": int(result.results["protocol"]["n_real"]),
        "generated_images": int(generated.report["images"]),
        "bootstrap": section.trial_bootstrap,
        "prompt_keys_sha256": hashlib.sha256("\n".join(prompt_keys).encode()).hexdigest(),
        "metrics": metrics,
        "files": {name: file_sha256(out / name) for name in (TRIAL_MANIFEST, BOOTSTRAP_FILE) if (out / name).is_file()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(done, report)
    write_checksum(done)
    return report


def read_trials(folder: str | Path, grid: list[float]) -> dict[float, dict[str, Any]]:
    """The finished trials of ``grid`` in ``folder`` (``trial.json`` of each ratio's sub-folder).

    Raises:
        FileNotFoundError: a ratio of the grid has no finished trial (says which command makes it).
        ValueError: a trial's files no longer match their recorded sha256 (damaged).
    """
    folder = Path(folder)
    found: dict[float, dict[str, Any]] = {}
    for path in sorted(folder.glob(f"*/{TRIAL_FILE}")):
        damaged = checksum_path(path).is_file() and not checksum_ok(path)  # no sidecar: written before checksums
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            damaged = True
        if damaged or files_mismatching(path.parent, report.get("files") or {}, what=f"trial {path.parent}"):
            raise ValueError(f"trial {path.parent} is damaged (its files do not match their recorded sha256); "
                             f"run `dldc select-trial` for its ratio again")
        found[float(report["ratio"])] = {**report, "path": str(path.parent)}
    missing = [r for r in grid if not any(abs(r - f) < 1e-9 for f in found)]
    if missing:
        raise FileNotFoundError(
            f"no finished trial for ratios {missing} in {folder}; run `dldc select-trial --ratio R` for each "
            "(dvc repro runs the select_trial stages)"
        )
    return {r: next(found[f] for f in found if abs(r - f) < 1e-9) for r in grid}


def trial_directions(paths: Sequence[str | Path]) -> dict[str, bool]:
    """``{metric: higher_is_better}`` as the evaluations of finished trials record them.

    Raises:
        FileNotFoundError: a trial has no evaluation.
        ValueError: two trials record a metric in opposite directions.
    """
    from dldc.evaluate import metric_directions, read_evaluation  # lazily: it imports torch

    return metric_directions(row for path in paths for row in read_evaluation(Path(path) / "evaluate")["metrics"])


def trial_replicates(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The bootstrap replicates of a finished trial's per-scene metrics: ``{scene: {metric: values}}``.

    Empty when the trial ran without bootstrap (``select.trial_bootstrap: 0``) or predates it.
    """
    from dldc.evaluate import read_replicates

    found: dict[str, dict[str, np.ndarray]] = {}
    for (scene, arm, metric), values in read_replicates(Path(path) / "evaluate").items():
        if arm == TRIAL_ARM:
            found.setdefault(scene, {})[metric] = values
    return found
