"""The trials a select mode runs: the ratio every scene is cleaned at in each one, and who judges them.

Every mode starts from the proxy (:func:`dldc.select.objective.proxy_curves`): a ratio per scene
from the scores alone, with a bootstrap interval (:func:`dldc.select.objective.proxy_intervals`).
The trials then spend training on what the proxy cannot see:

``calibrate``
    One trial per level λ of ``select.calibrate_levels``: every scene cleaned at
    ``min(λ · proxy r, select.max_ratio)``. The proxy's *differences* between scenes stay; the
    trials fix its overall *level*.
``attribute``
    One trial per row of a Plackett–Burman design (:mod:`dldc.select.design`) over the scenes
    with at least ``select.min_scene_pairs`` cleanable pairs: ``+`` cleans the scene at its high
    level (``select.attribute_level``, or its proxy ratio but at least ``select.attribute_floor``),
    ``−`` keeps all of it. Smaller scenes stay at their proxy ratio in every trial.
``loop``
    One trial per ratio of ``select.grid``, every scene at it.

The judge: with ``select.judge_filter``, the held-out prompts whose pairs fall below the proxy's cut
of their scene (by fused score, the same rule as the training cut) are left out of every trial's
evaluation, so a caption the scores call wrong does not decide what "better" is. The cut depends
on the scores only, so every trial is judged on the same prompts.

A plan is a pure function of the scores, the manifest and ``select``; its ``digest`` goes into
every trial it runs, and ``dldc select`` refuses trials of another plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from dldc.config import DldcConfig
from dldc.io import file_sha256
from dldc.select.design import foldover, plackett_burman
from dldc.select.objective import choose, proxy_curves, proxy_intervals
from dldc.select.ranking import keep_mask, load_ranked, rank_within_scene, scene_sizes

TRIAL_MODES = ("calibrate", "attribute", "loop")


@dataclass
class TrialPlan:
    """What the trials of a mode are (see the module docstring).

    Attributes:
        mode: ``proxy`` (no trials), ``calibrate``, ``attribute`` or ``loop``.
        rows: per trial, ``{scene: ratio}`` for every scene with cleanable pairs.
        labels: per trial, what it is (``λ=1.5``, ``design row 3``, ``r=0.2``).
        proxy_ratios: the proxy's ``r*`` per scene (small scenes: its global ratio).
        proxy_global: the proxy's single best ratio for every scene.
        proxy_sd, proxy_low, proxy_high: the bootstrap SD and 80% interval of each proxy ``r*``.
        judge_cuts: per scene, the share of held-out pairs left out of the judge set (lowest fused).
        levels: ``calibrate``: λ per row; ``loop``: the ratio per row; else empty.
        factors: ``attribute``: the scenes the design varies (its columns, in order).
        design: ``attribute``: ±1 per row and factor.
        high: ``attribute``: each factor's ``+`` level.
        sizes: cleanable pairs per scene.
        inputs: sha256 of the scores and the manifest.
        digest: a digest of all of the above (the trials' own settings are in each trial's key).
    """

    mode: str
    rows: list[dict[str, float]]
    labels: list[str]
    proxy_ratios: dict[str, float]
    proxy_global: float
    proxy_sd: dict[str, float] = field(default_factory=dict)
    proxy_low: dict[str, float] = field(default_factory=dict)
    proxy_high: dict[str, float] = field(default_factory=dict)
    judge_cuts: dict[str, float] = field(default_factory=dict)
    levels: list[float] = field(default_factory=list)
    factors: list[str] = field(default_factory=list)
    design: list[list[int]] = field(default_factory=list)
    high: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    digest: str = ""

    def record(self) -> dict[str, Any]:
        """The plan as JSON data (what ``selection.json`` and every trial keep)."""
        return asdict(self)


def plan_trials(cfg: DldcConfig, mode: str | None = None, ranked: pd.DataFrame | None = None) -> TrialPlan:
    """The trial plan of ``mode`` (default ``select.mode``) for ``select.scores`` / ``select.manifest``.

    Raises:
        ValueError: unknown mode, no cleanable pair, or too few scenes to screen.
        FileNotFoundError: scores or manifest missing.
    """
    section = cfg.select
    mode = mode or section.mode
    if mode not in ("proxy", *TRIAL_MODES):
        raise ValueError(f"select mode must be one of proxy, {', '.join(TRIAL_MODES)}; got {mode!r}")
    if ranked is None:
        ranked = load_ranked(section.scores, section.manifest, list(section.splits))
    sizes = scene_sizes(ranked)
    if not sizes:
        raise ValueError(f"no pairs of splits {section.splits} in {section.manifest}; set select.splits")
    grid = sorted(float(r) for r in section.grid)
    curves, overall = proxy_curves(ranked, grid, section.proxy_penalty)
    choice = choose(curves, overall, sizes, section.min_scene_pairs)
    intervals = proxy_intervals(ranked, grid, section.proxy_penalty, section.proxy_bootstrap)
    cap = section.max_ratio
    proxy = {s: min(r, cap) for s, r in choice.ratios.items()}
    own = [s for s in proxy if s in intervals and s not in choice.fallbacks]  # fallbacks: the global ratio
    # Rounded: the digest must not depend on the last bits of a platform's floating point.
    plan = TrialPlan(
        mode=mode, rows=[], labels=[], proxy_ratios=proxy, proxy_global=min(choice.global_ratio, cap),
        proxy_sd={s: round(intervals[s]["sd"], 6) for s in own},
        proxy_low={s: round(min(intervals[s]["low"], cap), 6) for s in own},
        proxy_high={s: round(min(intervals[s]["high"], cap), 6) for s in own},
        judge_cuts=dict(proxy) if section.judge_filter else {},
        sizes=dict(sizes),
        inputs={"scores": file_sha256(section.scores), "manifest": file_sha256(section.manifest)},
    )
    scenes = sorted(sizes)
    if mode == "calibrate":
        plan.levels = [float(level) for level in section.calibrate_levels]
        plan.rows = [{s: round(min(level * proxy[s], cap), 6) for s in scenes} for level in plan.levels]
        plan.labels = [f"λ={level:g}" for level in plan.levels]
    elif mode == "loop":
        plan.levels = grid
        plan.rows = [dict.fromkeys(scenes, r) for r in grid]
        plan.labels = [f"r={r:g}" for r in grid]
    elif mode == "attribute":
        plan.factors = [s for s in scenes if sizes[s] >= section.min_scene_pairs]
        if not plan.factors:
            raise ValueError(f"attribute: no scene has select.min_scene_pairs={section.min_scene_pairs} cleanable "
                             "pairs to screen; lower it or use calibrate")
        plan.high = {s: round(min(section.attribute_level or max(proxy[s], section.attribute_floor), cap), 6)
                     for s in plan.factors}
        design = plackett_burman(len(plan.factors))
        if section.foldover:
            design = foldover(design)
        plan.design = design.tolist()
        for index, signs in enumerate(design):
            row = {s: proxy[s] for s in scenes}  # scenes too small to screen: their proxy ratio throughout
            row.update({s: (plan.high[s] if sign > 0 else 0.0) for s, sign in zip(plan.factors, signs)})
            plan.rows.append(row)
            half = " (foldover)" if section.foldover and index >= len(design) // 2 else ""
            plan.labels.append(f"design row {index}{half}")
    plan.digest = _digest(plan)
    return plan


def _digest(plan: TrialPlan) -> str:
    record = {k: v for k, v in plan.record().items() if k != "digest"}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=float).encode()).hexdigest()[:16]


def judge_mask(frame: pd.DataFrame, split: str, cuts: dict[str, float]) -> pd.Series:
    """Rows of ``frame`` that judge: every row outside ``split``, and ``split``'s rows above their scene's cut.

    ``frame`` needs ``pair_id``, ``scene``, ``split`` and ``fused``; within a scene the held-out
    pairs are ranked by ``fused`` as the training pairs are (NaN lowest) and the lowest
    ``floor(cut · n)`` are left out. Scenes without a cut keep every pair.

    Example:
        >>> frame = pd.DataFrame({"pair_id": list("abcd"), "scene": "x", "split": ["val"] * 3 + ["train"],
        ...                       "fused": [0.3, 0.1, 0.2, 0.0]})
        >>> judge_mask(frame, "val", {"x": 0.5}).tolist()
        [True, False, True, True]
    """
    held_out = frame.drop(columns=["cleanable", "rank", "scene_size", "scene_percentile"], errors="ignore")
    held_out = rank_within_scene(held_out.assign(cleanable=held_out["split"] == split))
    scenes = set(held_out.loc[held_out["cleanable"], "scene"])
    return keep_mask(held_out, {s: cuts.get(s, 0.0) for s in scenes})


def plan_rows_needed(plan: TrialPlan, slots: list[int]) -> str | None:
    """A sentence saying how to set ``select.rows`` when the slots do not cover the plan, else ``None``."""
    missing = sorted(set(range(len(plan.rows))) - set(slots))
    if not missing:
        return None
    return (f"the {plan.mode} plan has {len(plan.rows)} trials but select.rows covers {len(set(slots))} "
            f"(missing rows {missing}); set select.rows (Kubeflow: the select_rows parameter) to "
            f"{list(range(len(plan.rows)))} and re-run the trials")

