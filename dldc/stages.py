"""Stage runners: the library call of each stage inside its MLflow run.

The CLI, DVC and the Kubeflow components all reach a stage through these functions, so a
stage behaves (and is tracked) the same way wherever it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dldc.config import DldcConfig
from dldc.data.ingest import IngestResult, ingest
from dldc.data.manifest import read_manifest
from dldc.tracking import stage_run

if TYPE_CHECKING:
    from dldc.iel.engine import ScoreResult


def run_synth(cfg: DldcConfig, progress: bool = True) -> dict[str, Any]:
    """Generate SynthRS into ``cfg.synth.out`` and log it; returns the generation summary."""
    from dldc.data.synth import write_synthrs

    section = cfg.synth
    with stage_run(cfg.tracking, "synth", section.model_dump(mode="json")) as run:
        summary = write_synthrs(
            section.out,
            n_images=section.n_images,
            size=section.size,
            noise_rate=section.noise_rate,
            seed=section.seed,
            captions_per_image=section.captions_per_image,
            scenes=section.scenes,
            noise_rate_by_scene=section.noise_rate_by_scene,
            split_ratios=section.split_ratios,
            progress=progress,
        )
        run.log_metrics(_numbers(summary))
        run.log_artifact(Path(section.out) / "synthrs.json")
    return summary


def run_ingest(cfg: DldcConfig, progress: bool = True) -> IngestResult:
    """Ingest ``cfg.ingest.root`` into ``cfg.ingest.out`` and log counts and the manifest."""
    with stage_run(cfg.tracking, "ingest", cfg.ingest.model_dump(mode="json")) as run:
        result = ingest(cfg.ingest, progress=progress)
        run.log_metrics(result.report["counts"])
        run.log_artifact(result.report_path)
        run.log_artifact(result.rejects)
        if run.enabled:
            frame, _ = read_manifest(result.manifest)
            run.log_dataset(frame, source=result.manifest.resolve(), name="manifest", context="ingest")
    return result


def _numbers(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in summary.items() if isinstance(value, (int, float, dict))}


def run_train_scorer(cfg: DldcConfig, progress: bool = True) -> dict[str, Any]:
    """Train the cross-fitted in-domain scorer into ``cfg.indomain.out``; returns its report."""
    from dldc.iel.indomain import train_indomain

    with stage_run(cfg.tracking, "train_scorer", cfg.indomain.model_dump(mode="json")) as run:
        report = train_indomain(cfg.indomain, progress=progress)
        run.log_metrics(_numbers(report))
        run.log_artifact(Path(cfg.indomain.out) / "indomain.json")
    return report


def run_score(cfg: DldcConfig, progress: bool = True, part: tuple[int, int] | None = None) -> ScoreResult:
    """Score every pair of ``cfg.score.manifest`` with ``cfg.score.scorers`` and log the figures."""
    from dldc.iel.engine import score_manifest

    params = {**cfg.score.model_dump(mode="json"), "part": list(part) if part else None}
    with stage_run(cfg.tracking, "score", params) as run:
        result = score_manifest(cfg.score, progress=progress, part=part)
        run.log_metrics(_numbers(result.report))
        run.set_tags({f"scorer.{s['name']}": s["scorer_id"] for s in result.report["scorers"]})
        run.log_artifact(result.report_path)
    return result


def run_gather_scores(cfg: DldcConfig, parts: list[str]) -> ScoreResult:
    """Fuse the raw scores of fanned-out manifest parts into ``cfg.score.out``."""
    from dldc.iel.engine import gather_scores

    with stage_run(cfg.tracking, "gather_scores", {"parts": parts, "fusion": cfg.score.fusion}) as run:
        result = gather_scores(parts, cfg.score.out, cfg.score.fusion, cfg.score.disagreement)
        run.log_metrics(_numbers(result.report))
        run.log_artifact(result.report_path)
    return result
