"""``dldc promote``: register the candidate adapter, and move the champion alias only when it is better.

Flow (:func:`promote`):

1. read the evaluation (``dldc evaluate``'s ``results.json``) and the candidate arm's metrics
   (``promote.scene``, default the whole test split);
2. register the candidate's adapter as a version of a loadable MLflow model
   (:meth:`dldc.registry.models.Registry.register_adapter`; its base from ``promote.base``, the
   adapter's ``finetune.json`` or the evaluation, :mod:`dldc.registry.adapter_model`); the same
   adapter files are registered once, later evaluations only update its tags;
3. find the current champion (``registry.alias``) and its metrics *under the same protocol*:
   the champion's adapter evaluated as an arm of this very evaluation (best: same draws), else
   the metrics tagged on its version when their protocol fingerprint equals this evaluation's;
4. :func:`decide`: the candidate must beat the champion on every ``promote.criteria`` metric by
   its margin, in the direction the evaluation records for the metric (its ``higher_is_better``:
   lower FID/KID/FD/KD, higher CLIP scores). A first candidate with no champion is promoted, and
   the decision says so. When the champion is an arm of this evaluation (same draws), the gap
   must also be clear of noise: the paired-bootstrap interval of candidate − champion wholly on
   the better side of zero, and no scene behind by more than ``promote.scene_tolerance``
   (:func:`baseline_checks` against the champion's arm; ``champion_checks`` in the decision).
   Otherwise only point estimates exist for the champion (its version tags) and the margins
   decide; ``champion_evidence`` says which evidence was used. :func:`baseline_checks`: it must
   also beat the ``promote.baselines`` arms of the same evaluation (``raw``, ``global``) with the
   paired-bootstrap interval clear of zero, and no scene may be worse than a baseline by more
   than ``promote.scene_tolerance``;
5. record the decision: ``decision.json`` and ``promotion.*`` tags on the candidate version
   (and the alias, when promoted). Every candidate also gets ``registry.challenger_alias``
   (``challenger``), whatever the decision.

Example:
    >>> from dldc.config import PromoteCriterion
    >>> promoted, results, reason = decide(
    ...     {"FID": 40.0, "CLIPScore-clip": 27.0}, {"FID": 50.0, "CLIPScore-clip": 26.0},
    ...     [PromoteCriterion(metric="FID", margin=0.1), PromoteCriterion(metric="CLIPScore-clip")],
    ...     {"FID": False, "CLIPScore-clip": True},
    ... )
    >>> promoted, [r.passed for r in results]
    (True, [True, True])
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dldc.config import DldcConfig, PromoteCriterion
from dldc.evaluate import ALL_SCENES, metric_directions, read_evaluation, read_replicates
from dldc.evaluate.bootstrap import paired_interval
from dldc.io import write_json
from dldc.registry.adapter_model import adapter_base
from dldc.registry.data_version import data_version, manifest_from_adapter
from dldc.registry.models import (
    EVAL_TAG_PREFIX,
    PROTOCOL_TAG,
    Registry,
    adapter_digest,
)

DECISION_FILE = "decision.json"


@dataclass(frozen=True)
class CriterionResult:
    """One criterion of a promotion decision.

    Attributes:
        metric: the metric compared.
        direction: ``lower`` or ``higher`` is better.
        candidate: the candidate's value.
        champion: the champion's value (``None`` without a champion).
        required_improvement: how much better the candidate had to be (in metric units).
        improvement: how much better it is (negative: worse).
        passed: ``improvement > required_improvement``.
        note: why a comparison was impossible, if it was.
    """

    metric: str
    direction: str
    candidate: float | None
    champion: float | None
    required_improvement: float | None
    improvement: float | None
    passed: bool
    note: str = ""


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _direction(criterion: PromoteCriterion, directions: Mapping[str, bool]) -> str:
    if criterion.direction != "auto":
        return criterion.direction
    if criterion.metric not in directions:
        raise ValueError(
            f"no direction for metric {criterion.metric!r}: the evaluation does not record it; "
            "set the criterion's direction (lower or higher)"
        )
    return "higher" if directions[criterion.metric] else "lower"


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    criteria: list[PromoteCriterion],
    directions: Mapping[str, bool],
) -> tuple[bool, list[CriterionResult], str]:
    """Whether a candidate beats the champion on every criterion by its margin.

    Args:
        candidate: the candidate's metric values.
        champion: the champion's values under the same protocol, or ``None`` without a champion.
        criteria: metrics, margins and directions.
        directions: ``{metric: higher_is_better}`` as the evaluation records them
            (:func:`~dldc.evaluate.metric_directions`), for the criteria whose direction is ``auto``.

    Returns:
        ``(promoted, per-criterion results, reason)``. Ties do not promote (``margin = 0`` means
        strictly better). A missing or non-finite value fails its criterion, with a note.

    Raises:
        ValueError: an ``auto`` criterion's metric has no recorded direction.
    """
    results = []
    for criterion in criteria:
        direction = _direction(criterion, directions)
        mine = _finite(candidate.get(criterion.metric))
        theirs = None if champion is None else _finite(champion.get(criterion.metric))
        if mine is None:
            results.append(CriterionResult(criterion.metric, direction, None, theirs, None, None, False,
                                           "the candidate has no finite value"))  # fmt: skip
            continue
        if champion is None:
            results.append(CriterionResult(criterion.metric, direction, mine, None, None, None, True, "no champion"))
            continue
        if theirs is None:
            results.append(CriterionResult(criterion.metric, direction, mine, None, None, None, False,
                                           "the champion has no finite value"))  # fmt: skip
            continue
        improvement = (mine - theirs) if direction == "higher" else (theirs - mine)
        required = criterion.margin * abs(theirs) if criterion.relative else criterion.margin
        results.append(
            CriterionResult(criterion.metric, direction, mine, theirs, required, improvement, improvement > required)
        )
    if champion is None:
        promoted = all(r.passed for r in results)
        reason = (
            "no current champion: the first candidate is promoted"
            if promoted
            else "no current champion, but the candidate lacks " + ", ".join(r.metric for r in results if not r.passed)
        )
        return promoted, results, reason
    promoted = all(r.passed for r in results)
    parts = [_describe(r) for r in results]
    verdict = "beats the champion on every criterion" if promoted else "does not beat the champion"
    return promoted, results, f"{verdict}: " + "; ".join(parts)


def _describe(result: CriterionResult) -> str:
    if result.note:
        return f"{result.metric}: {result.note}"
    better = "lower" if result.direction == "lower" else "higher"
    needed = f"{better} by more than {result.required_improvement:.4g}"
    mark = "ok" if result.passed else "FAILED"
    return (
        f"{result.metric} {result.candidate:.4g} vs champion {result.champion:.4g} "
        f"(improvement {result.improvement:+.4g}, needs {needed}) {mark}"
    )


def baseline_checks(
    folder: str | Path,
    results: dict[str, Any],
    candidate: str,
    baselines: list[str],
    metrics: list[str],
    scene: str = ALL_SCENES,
    scene_tolerance: float | None = None,
) -> list[dict[str, Any]]:
    """The candidate arm against each baseline arm of the same evaluation, metric by metric.

    A check passes when the paired-bootstrap interval of ``candidate − baseline`` (the evaluation's
    shared draws, at its confidence level) lies wholly on the better side of zero, and, with
    ``scene_tolerance``, no scene is worse than the baseline by more than that fraction of the
    baseline's value. Without bootstrap replicates the interval is unknown and the check fails.
    A baseline the evaluation lacks (or the candidate itself) is skipped, with ``passed: None``.
    """
    replicates = read_replicates(folder)
    values = {(r["scene"], r["arm"], r["metric"]): r["value"] for r in results["metrics"]}
    directions = metric_directions(results["metrics"])
    level = results.get("protocol", {}).get("ci", 0.95)
    checks = []
    for baseline in baselines:
        if baseline == candidate or baseline not in results["arms"]:
            checks.append({"baseline": baseline, "passed": None, "note": "not another arm of this evaluation"})
            continue
        for metric in metrics:
            higher = directions.get(metric, True)
            mine = _finite(values.get((scene, candidate, metric)))
            theirs = _finite(values.get((scene, baseline, metric)))
            low, high = paired_interval(replicates.get((scene, candidate, metric)),
                                        replicates.get((scene, baseline, metric)), level)  # fmt: skip
            clear = bool(low > 0) if higher else bool(high < 0)  # NaN (no replicates) is not clear
            worse = []
            if scene_tolerance is not None:
                for (s, arm, m), base in values.items():
                    own, base = _finite(values.get((s, candidate, m))), _finite(base)
                    if arm != baseline or m != metric or s == ALL_SCENES or own is None or base is None:
                        continue
                    loss = (base - own) if higher else (own - base)
                    if loss > scene_tolerance * abs(base):
                        worse.append(s)
            passed = mine is not None and theirs is not None and clear and not worse
            checks.append({
                "baseline": baseline, "metric": metric, "candidate": mine, "value": theirs,
                "delta": None if mine is None or theirs is None else mine - theirs,
                "ci_low": None if math.isnan(low) else low, "ci_high": None if math.isnan(high) else high,
                "higher_is_better": higher, "interval_clear": clear, "scenes_worse": sorted(worse), "passed": passed,
            })  # fmt: skip
    return checks


def arm_metrics(results: dict[str, Any], arm: str, scene: str = ALL_SCENES) -> dict[str, float]:
    """``{metric: value}`` of one arm and scene of an evaluation's ``results.json``.

    Raises:
        ValueError: the arm or scene is not in the evaluation.
    """
    if arm not in results["arms"]:
        raise ValueError(f"arm {arm!r} is not in the evaluation (arms: {sorted(results['arms'])})")
    rows = [r for r in results["metrics"] if r["arm"] == arm and r["scene"] == scene]
    if not rows:
        scenes = sorted({r["scene"] for r in results["metrics"]})
        raise ValueError(f"scene {scene!r} is not in the evaluation (scenes: {scenes})")
    return {r["metric"]: r["value"] for r in rows}


def promote(cfg: DldcConfig, run: Any) -> dict[str, Any]:
    """Register the candidate and decide on the champion alias (see the module docstring).

    Args:
        cfg: the configuration (``promote``, ``registry``, ``tracking`` sections).
        run: the stage's enabled :class:`~dldc.tracking.StageRun`: the adapter files and the
            decision are logged into it.

    Returns:
        The decision (also written to ``<promote.out>/decision.json``).

    Raises:
        ValueError: tracking is off (no registry), the arm has no adapter, or a criterion's metric
            is missing from the evaluation.
        FileNotFoundError: the evaluation or the adapter folder is missing.
    """
    section = cfg.promote
    if not cfg.tracking.enabled or run is None or not run.enabled:
        raise ValueError("dldc promote needs the MLflow registry; set tracking.enabled: true")
    results = read_evaluation(section.evaluation)
    metrics = arm_metrics(results, section.candidate_arm, section.scene)
    missing = [c.metric for c in section.criteria if c.metric not in metrics]
    if missing:
        raise ValueError(
            f"promote.criteria name metrics the evaluation does not have: {missing}; it has {sorted(metrics)} "
            "(check evaluate.fid / feature_scorers / clip_scorers)"
        )
    adapter = Path(section.adapter or _arm_adapter(results, section.candidate_arm))
    if not adapter.is_dir():
        raise FileNotFoundError(f"adapter folder {adapter} not found (promote.adapter or the arm's adapter column)")
    protocol = results["protocol"]["fingerprint"]
    manifest = section.data_manifest or manifest_from_adapter(adapter)
    version_info = data_version(manifest)

    evaluated_base = results["arms"][section.candidate_arm].get("model")
    base = adapter_base(adapter, section.base, evaluated_base if isinstance(evaluated_base, str) else None)
    registry = Registry(cfg.tracking.resolved_uri(), cfg.registry.model_name)
    candidate = registry.register_adapter(
        adapter,
        cfg.registry.adapter_files,
        run_id=run.run_id,
        base=base,
        tags={"arm": section.candidate_arm},
        data=version_info,
        metrics=metrics,
        protocol=protocol,
    )
    champion = registry.version_by_alias(cfg.registry.alias)
    registry.set_alias(cfg.registry.challenger_alias, candidate.version)  # whatever the gate decides below
    decision: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_name": cfg.registry.model_name,
        "alias": cfg.registry.alias,
        "challenger_alias": cfg.registry.challenger_alias,
        "candidate": {
            "version": candidate.version,
            "arm": section.candidate_arm,
            "adapter": str(adapter),
            "adapter_sha256": candidate.tags.get("adapter_sha256"),
            "base_model": base.tag,
            "metrics": {c.metric: metrics.get(c.metric) for c in section.criteria},
            "data": version_info,
        },
        "evaluation": {"folder": section.evaluation, "fingerprint": protocol, "scene": section.scene},
        "champion_before": None,
        "criteria": [],
    }
    if champion is not None and champion.version == candidate.version:
        reason = f"version {candidate.version} (these adapter files) is already {cfg.registry.alias}"
        decision.update(promoted=False, outcome="already_champion", reason=reason)
    else:
        champion_metrics, champion_arm = None, None
        if champion is not None:
            champion_metrics, source, champion_arm = _champion_metrics(champion, results, section.scene, cfg, protocol)
            if champion_metrics is None and not section.require_same_protocol:
                champion_metrics = Registry.metrics_from_tags(champion.tags)
                source = "version tags (another protocol: numbers not strictly comparable)"
            decision["champion_before"] = {
                "version": champion.version,
                "adapter_sha256": champion.tags.get("adapter_sha256"),
                "metrics_source": source,
                "metrics": champion_metrics,
                "arm": champion_arm,
            }
        if champion is not None and champion_metrics is None:
            reason = (
                f"champion version {champion.version} was evaluated under another protocol "
                f"(fingerprint {champion.tags.get(PROTOCOL_TAG)!r}, this evaluation {protocol!r}) and is not an "
                "arm of this evaluation: generate and evaluate its adapter beside the candidate, or set "
                "promote.require_same_protocol: false"
            )
            decision.update(promoted=False, outcome="not_comparable", reason=reason)
        else:
            directions = metric_directions(results["metrics"])
            promoted, criteria, reason = decide(metrics, champion_metrics, section.criteria, directions)
            metric_names = [c.metric for c in section.criteria]
            champion_checks = []
            if champion_arm is not None:
                # Same draws as the candidate: the paired interval says whether the gap is more than noise.
                champion_checks = baseline_checks(section.evaluation, results, section.candidate_arm, [champion_arm],
                                                  metric_names, section.scene, section.scene_tolerance)  # fmt: skip
                unclear = [c for c in champion_checks if c["passed"] is False]
                if promoted and unclear:
                    promoted = False
                    reason = "beats the champion on point estimates, but not clear of noise: " + _failures(unclear)
            decision["champion_evidence"] = _champion_evidence(champion, champion_arm)
            checks = baseline_checks(section.evaluation, results, section.candidate_arm, section.baselines,
                                     metric_names, section.scene, section.scene_tolerance)  # fmt: skip
            failed = [c for c in checks if c["passed"] is False]
            if promoted and failed:
                promoted = False
                reason = "beats the champion, but not the baselines: " + _failures(failed)
            outcome = "promoted" if promoted else "rejected"
            decision.update(promoted=promoted, outcome=outcome, reason=reason, criteria=[asdict(c) for c in criteria],
                            champion_checks=champion_checks, baselines=checks)  # fmt: skip
            if promoted:
                registry.set_alias(cfg.registry.alias, candidate.version)
    registry.record_decision(candidate.version, decision)
    out = Path(section.out) / DECISION_FILE
    write_json(out, decision)
    run.log_artifact(out)
    run.set_tags({"promotion.outcome": decision["outcome"], "promotion.candidate_version": candidate.version})
    run.log_metrics({"promoted": int(decision["promoted"])})
    return decision


def _failures(checks: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{c['metric']} vs {c['baseline']}: delta {c['delta']} [{c['ci_low']}, {c['ci_high']}]"
        + (f", worse in {', '.join(c['scenes_worse'])}" if c["scenes_worse"] else "")
        for c in checks
    )


def _champion_evidence(champion: Any, champion_arm: str | None) -> str:
    """How the candidate was compared with the champion: the decision's ``champion_evidence``."""
    if champion is None:
        return "none: no champion"
    if champion_arm is not None:
        return f"paired_bootstrap: the champion is arm {champion_arm!r} of this evaluation (same draws)"
    return "point_estimates: the champion's metrics come from its version tags (other draws), compared with margins"


def _arm_adapter(results: dict[str, Any], arm: str) -> str:
    adapter = results["arms"][arm].get("adapter")
    if not isinstance(adapter, str) or not adapter:
        raise ValueError(
            f"arm {arm!r} has no single adapter folder ({adapter!r}): the base model is not a candidate; "
            "set promote.candidate_arm or promote.adapter"
        )
    return adapter


def _champion_metrics(
    champion: Any, results: dict[str, Any], scene: str, cfg: DldcConfig, protocol: str
) -> tuple[dict[str, float] | None, str | None, str | None]:
    """The champion's metrics comparable with this evaluation, where they came from, and its arm here (if one)."""
    digest = champion.tags.get("adapter_sha256")
    for arm, info in results["arms"].items():
        folder = info.get("adapter")
        if arm == cfg.promote.candidate_arm or not isinstance(folder, str) or not Path(folder).is_dir():
            continue
        try:
            same = adapter_digest(folder, cfg.registry.adapter_files) == digest
        except ValueError:
            continue
        if same:
            return arm_metrics(results, arm, scene), f"this evaluation, arm {arm!r}", arm
    if champion.tags.get(PROTOCOL_TAG) == protocol and scene == ALL_SCENES:
        tagged = Registry.metrics_from_tags(champion.tags)
        if tagged:
            return tagged, f"version tags ({EVAL_TAG_PREFIX}*, same protocol {protocol})", None
    return None, None, None
