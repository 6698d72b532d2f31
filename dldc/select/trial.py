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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
from dldc.select.plan import judge_mask, plan_trials
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


def trial_key(cfg: DldcConfig, ratio: float | Mapping[str, float], inputs: tuple[str, str] | None = None,
              scenes: Sequence[str] | None = None, judge_cuts: Mapping[str, float] | None = None) -> str:
    """Digest of everything a trial's numbers depend on (inputs and the settings used).

    ``inputs``: the sha256 of ``select.scores`` and ``select.manifest`` when the caller has them.
    ``ratio``, ``scenes``, ``judge_cuts``: as in :func:`run_trial`.
    """
    per_scene = isinstance(ratio, Mapping)
    settings = {
        "ratio": {str(k): float(v) for k, v in sorted(ratio.items())} if per_scene else float(ratio),
        **_shared_settings(cfg, inputs),
    }
    if scenes is not None:  # only then, so the keys of whole-grid trials stay as they were
        settings["scenes"] = sorted(scenes)
    if judge_cuts:
        settings["judge_cuts"] = {str(k): float(v) for k, v in sorted(judge_cuts.items())}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def settings_key(cfg: DldcConfig, inputs: tuple[str, str] | None = None) -> str:
    """Digest of what every trial of one plan shares (inputs, trial, fine-tune, generation and evaluation settings).

    ``dldc select`` requires one value among a plan's trials: trials run with other settings are
    never mixed into one decision (it cannot recompute it itself: on a cluster the trials' scorer
    and base paths are theirs).
    """
    return hashlib.sha256(json.dumps(_shared_settings(cfg, inputs), sort_keys=True).encode()).hexdigest()[:16]


def _shared_settings(cfg: DldcConfig, inputs: tuple[str, str] | None) -> dict[str, Any]:
    section = cfg.select
    scores_sha, manifest_sha = inputs or (file_sha256(section.scores), file_sha256(section.manifest))
    return {
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


def run_trial(cfg: DldcConfig, ratio: float | Mapping[str, float], out: str | Path, progress: bool = True,
              scenes: Sequence[str] | None = None, judge_cuts: Mapping[str, float] | None = None,
              plan: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one trial at ``ratio`` into ``out`` (see the module docstring); returns ``trial.json``'s content.

    ``ratio``: one ratio for every scene, or ``{scene: ratio}`` (a row of a trial plan,
    :mod:`dldc.select.plan`; a cleanable scene missing from it keeps every pair).
    ``scenes`` cleans only those scenes at ``ratio`` and keeps every pair of the others: a
    one-scene-at-a-time trial, which the dual loop avoids (it costs ``|scenes| × |grid|``) but which
    shows how much of a scene's column is its own cleaning (``benchmarks/select_one_scene.py``).
    ``None`` (the loop's trials): every scene.
    ``judge_cuts``: ``{scene: share}`` of held-out pairs left out of the judge set, lowest fused
    first (:func:`dldc.select.plan.judge_mask`). ``plan``: ``{"mode", "digest", "row", "label"}``
    recorded in ``trial.json`` (what ``dldc select`` checks the trial against).

    Raises:
        FileNotFoundError: scores, manifest, base or scorer missing.
        ValueError: a ratio outside [0, 1), no held-out prompt, or a scene the data does not have.
        dldc.io.OutputLockedError: another process is writing ``out``.
    """
    with output_lock(out):
        return _run_trial(cfg, ratio, Path(out), progress, scenes, judge_cuts or {}, plan)


def run_plan_row(cfg: DldcConfig, row: int, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Row ``row`` of ``select.mode``'s trial plan (:func:`dldc.select.plan.plan_trials`) into ``out``.

    A row past the end of the plan (a spare slot of ``select.rows``; in ``proxy`` mode, every slot)
    writes an *idle* ``trial.json`` at once, so a fan-out over more slots than the plan needs costs
    nothing.

    Raises:
        ValueError: a negative row.
    """
    if row < 0:
        raise ValueError(f"a trial row is >= 0, got {row}")
    plan = plan_trials(cfg)
    tag = {"mode": plan.mode, "digest": plan.digest, "row": row, "rows": len(plan.rows)}
    if row >= len(plan.rows):
        with output_lock(out):
            out = Path(out)
            note = ("proxy mode runs no trials" if plan.mode == "proxy" else
                    f"the {plan.mode} plan has {len(plan.rows)} trials; slot {row} is spare")
            report = {"idle": True, **tag, "note": note}
            write_json(out / TRIAL_FILE, report)
            write_checksum(out / TRIAL_FILE)
            return report
    tag["label"] = plan.labels[row]
    return run_trial(cfg, plan_row_ratio(plan, row), out, progress, judge_cuts=plan.judge_cuts, plan=tag)


def plan_row_ratio(plan: Any, row: int) -> float | dict[str, float]:
    """What :func:`run_trial` gets for a plan row: ``loop``'s one ratio (as ``--ratio`` gives it), else per scene."""
    return float(plan.levels[row]) if plan.mode == "loop" else plan.rows[row]


def _finished_trial(out: Path, key: str) -> dict[str, Any] | None:
    """``trial.json`` of a finished trial with ``key`` whose own bytes and recorded files still match."""
    done = out / TRIAL_FILE
    if not done.is_file() or not checksum_ok(done):
        return None
    return finished_report(done, "key", key, lambda report: report.get("files") or {})


def _run_trial(
    cfg: DldcConfig, ratio: float | Mapping[str, float], out: Path, progress: bool, scenes: Sequence[str] | None,
    judge_cuts: Mapping[str, float], plan: Mapping[str, Any] | None,
) -> dict[str, Any]:
    from dldc.evaluate.evaluate import evaluate_generations
    from dldc.evaluate.generations import REFERENCE_ARM
    from dldc.t2i.finetune import finetune
    from dldc.t2i.generate import generate_images

    section = cfg.select
    remove_stale_temps(out)  # what killed runs left
    inputs = (file_sha256(section.scores), file_sha256(section.manifest))
    key = trial_key(cfg, ratio, inputs, scenes, judge_cuts)
    done = out / TRIAL_FILE
    previous = _finished_trial(out, key)
    if previous is not None:
        if plan is not None and previous.get("plan") != dict(plan):
            # The same trial (same key) under another plan tag, e.g. a changed proxy_bootstrap: re-tag it.
            previous = {k: v for k, v in previous.items() if k != "path"}
            previous["plan"] = dict(plan)
            write_json(done, previous)
            write_checksum(done)
        return previous
    started = time.perf_counter()
    ranked = load_ranked(section.scores, section.manifest, list(section.splits))
    if isinstance(ratio, Mapping):
        if scenes is not None:
            raise ValueError("scenes goes with one ratio; a per-scene ratio mapping already says which scenes")
        keep = keep_mask(ranked, ratio, default=0.0)
    elif scenes is None:
        keep = keep_mask(ranked, {}, default=ratio)
    else:
        unknown = sorted(set(scenes) - set(ranked.loc[ranked["cleanable"], "scene"]))
        if unknown or not scenes:
            raise ValueError(f"scenes must name scenes with cleanable pairs, got {list(scenes)!r} "
                             f"(unknown: {unknown}); scenes: {sorted(ranked['scene'].unique())}")
        keep = keep_mask(ranked, dict.fromkeys(scenes, ratio), default=0.0)
    judged = (judge_mask(ranked, section.eval_split, dict(judge_cuts)) if judge_cuts
              else pd.Series(True, index=ranked.index))
    left_out = int((~judged).sum())
    manifest = out / TRIAL_MANIFEST
    ratio_record = {str(k): float(v) for k, v in ratio.items()} if isinstance(ratio, Mapping) else float(ratio)
    write_cleaned_manifest(section.manifest, ranked, keep & judged, manifest, {"ratio": ratio_record, "mode": "trial"})
    kept = int(keep.sum())  # every split, before the judge filter (which only narrows the held-out prompts)

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
    metrics: dict[str, dict[str, float]] = {}
    reference: dict[str, dict[str, float]] = {}  # the real held-out images against the same prompts
    for arm, table in ((TRIAL_ARM, metrics), (REFERENCE_ARM, reference)):
        rows = result.table[result.table["arm"] == arm]
        for scene, metric, value in zip(rows["scene"], rows["metric"], rows["value"]):
            table.setdefault(str(scene), {})[str(metric)] = float(value)
    cleanable = ranked[ranked["cleanable"]]
    judged = result.per_image[result.per_image["arm"] == TRIAL_ARM]
    prompt_keys = sorted(f"{pair_id}|{seed}" for pair_id, seed in zip(judged["pair_id"], judged["seed"]))
    report = {
        "ratio": ratio_record,
        "scenes": None if scenes is None else sorted(scenes),
        "plan": None if plan is None else dict(plan),
        "judge_cuts": {str(k): float(v) for k, v in sorted(judge_cuts.items())},
        "judge_left_out": left_out,
        "key": key,
        "settings_key": settings_key(cfg, inputs),
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
        "reference": reference,
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
        if report.get("idle") or not isinstance(report.get("ratio"), (int, float)):
            continue  # a spare slot, or a trial of a per-scene plan (calibrate, attribute)
        found[float(report["ratio"])] = {**report, "path": str(path.parent)}
    missing = [r for r in grid if not any(abs(r - f) < 1e-9 for f in found)]
    if missing:
        raise FileNotFoundError(
            f"no finished trial for ratios {missing} in {folder}; run `dldc select-trial --row I` (select.mode "
            "loop) or `--ratio R` for each (dvc repro runs the select_trial stages)"
        )
    return {r: next(found[f] for f in found if abs(r - f) < 1e-9) for r in grid}


def read_plan_trials(folder: str | Path, plan: Any) -> list[dict[str, Any]]:
    """The finished trials of every row of ``plan`` (a :class:`dldc.select.plan.TrialPlan`), in row order.

    A trial counts for a row when its plan digest matches; idle slots and trials of other plans are
    passed over, a damaged trial is refused. The trials must share one :func:`settings_key`.

    Raises:
        FileNotFoundError: a row has no finished trial of this plan (says which and how to run it).
        ValueError: a trial's files no longer match their recorded sha256.
    """
    folder = Path(folder)
    found: dict[int, dict[str, Any]] = {}
    others = 0
    for path in sorted(folder.glob(f"*/{TRIAL_FILE}")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            report = None
        damaged = report is None or (checksum_path(path).is_file() and not checksum_ok(path))
        if damaged or files_mismatching(path.parent, report.get("files") or {}, what=f"trial {path.parent}"):
            raise ValueError(f"trial {path.parent} is damaged (its files do not match their recorded sha256); "
                             "run `dldc select-trial --row I` for it again")
        tag = report.get("plan") if "plan" in report else {k: report.get(k) for k in ("digest", "row")}
        if report.get("idle") or not tag or tag.get("digest") != plan.digest:
            others += 0 if report.get("idle") else 1
            continue
        row = int(tag["row"])
        if row in found and found[row].get("key") != report.get("key"):
            raise ValueError(f"{folder} holds two different trials of plan row {row} ({found[row]['path']}, "
                             f"{path.parent}); remove the stale one")
        found[row] = {**report, "path": str(path.parent)}
    missing = [row for row in range(len(plan.rows)) if row not in found]
    if missing:
        stale = (f"; {others} trials there belong to another plan (scores, manifest or select settings "
                 "changed)" if others else "")
        raise FileNotFoundError(
            f"no finished {plan.mode} trial for rows {missing} of {len(plan.rows)} in {folder}{stale}; run "
            "`dldc select-trial --row I` for each (dvc repro runs the select_trial stages)"
        )
    groups = {found[row].get("settings_key") for row in found}
    if len(groups) > 1:
        raise ValueError(f"the {plan.mode} trials in {folder} were run with different settings (trial, finetune, "
                         f"generate or evaluate: {len(groups)} groups); re-run them all with one configuration")
    return [found[row] for row in range(len(plan.rows))]


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
