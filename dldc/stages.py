"""Stage runners: the library call of each stage inside its MLflow run.

The CLI, DVC and the Kubeflow components all reach a stage through these functions, so a
stage behaves (and is tracked) the same way wherever it runs. Each runner picks its stage's
headline figures once, here: ``run.finish`` writes them as the flat ``metrics.json`` in the stage's
output folder (what DVC's ``metrics:`` and the Kubeflow Metrics outputs read) and logs the same
numbers to MLflow.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dldc.config import DldcConfig
from dldc.data.ingest import IngestResult, ingest
from dldc.data.manifest import read_manifest
from dldc.tracking import stage_run, write_plot_table

# Curves `dvc plots show` draws (dvc.yaml `plots:`), in the stage's output folder.
LOSS_PLOT = "loss.csv"  # finetune: training loss per step
CURVES_PLOT = "curves.csv"  # select: the objective J(r) per scene and overall

if TYPE_CHECKING:
    from dldc.egl.loop import CaptionResult
    from dldc.iel.fuse import ScoreResult


def run_synth(cfg: DldcConfig, progress: bool = True) -> dict[str, Any]:
    """Generate SynthRS into ``cfg.synth.out`` and log it; returns the generation summary."""
    from dldc.data.synthrs import write_synthrs

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
            noise_kinds=section.noise_kinds,
            progress=progress,
        )
        run.finish(section.out, _numbers(summary))
        run.log_artifact(Path(section.out) / "synthrs.json")
    return summary


def run_ingest(cfg: DldcConfig, progress: bool = True) -> IngestResult:
    """Ingest ``cfg.ingest.root`` into ``cfg.ingest.out`` and log counts and the manifest."""
    from dldc.io import output_lock

    with stage_run(cfg.tracking, "ingest", cfg.ingest.model_dump(mode="json")) as run:
        with output_lock(cfg.ingest.out):  # the other stages lock their folder in their library call
            result = ingest(cfg.ingest, progress=progress)
        run.finish(cfg.ingest.out, result.report["counts"])
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
        run.finish(cfg.indomain.out, _numbers(report))
        run.log_artifact(Path(cfg.indomain.out) / "indomain.json")
    return report


def run_score(cfg: DldcConfig, progress: bool = True, part: tuple[int, int] | None = None) -> ScoreResult:
    """Score every pair of ``cfg.score.manifest`` with ``cfg.score.scorers`` and log the figures."""
    from dldc.iel.engine import score_manifest

    params = {**cfg.score.model_dump(mode="json"), "part": list(part) if part else None}
    with stage_run(cfg.tracking, "score", params) as run:
        result = score_manifest(cfg.score, progress=progress, part=part)
        run.finish(result.report_path.parent, _numbers(result.report))
        run.set_tags({f"scorer.{s['name']}": s["scorer_id"] for s in result.report["scorers"]})
        run.log_artifact(result.report_path)
    return result


def run_caption(cfg: DldcConfig, progress: bool = True) -> CaptionResult:
    """Run the EGL loop on ``cfg.caption.manifest`` and log rounds, replacements and the outputs."""
    from dldc.egl.loop import caption_manifest

    params = {**cfg.caption.model_dump(mode="json"), "score.fusion": cfg.score.fusion}
    params["prompts"] = sorted(cfg.caption.prompts)  # ids only: the templates are versioned by id
    with stage_run(cfg.tracking, "caption", params) as run:
        result = caption_manifest(cfg.caption, cfg.score, progress=progress)
        report = result.report
        rounds = {f"round_{r['round']}": {"mean_fused": r["mean_fused"], "low": r["low_after"]}
                  for r in report["rounds"]}
        run.finish(
            result.report_path.parent,
            {
                "pairs": report["pairs"],
                "low_at_start": report["low_at_start"],
                "replaced": report["replaced"],
                "still_low": report["still_low"],
                "candidates": report["candidates"],
                "rounds_run": len(report["rounds"]) - 1,
                "mean_fused_last_round": report["rounds"][-1]["mean_fused"],
                "seconds": report["seconds"],
                **rounds,
            },
        )
        run.set_tags({f"caption.backend.{i}": b["fingerprint"] for i, b in enumerate(report["backends"])})
        run.log_artifact(result.report_path)
        run.log_artifact(result.captions)
        if run.enabled:
            run.log_dataset(result.frame, source=result.manifest.resolve(), name="captions", context="caption")
    return result


def run_gather_scores(cfg: DldcConfig, parts: list[str]) -> ScoreResult:
    """Fuse the raw scores of fanned-out manifest parts into ``cfg.score.out``."""
    from dldc.iel.fuse import gather_scores

    with stage_run(cfg.tracking, "gather_scores", {"parts": parts, "fusion": cfg.score.fusion}) as run:
        result = gather_scores(parts, cfg.score.out, cfg.score.fusion, cfg.score.disagreement)
        run.finish(result.report_path.parent, _numbers(result.report))
        run.log_artifact(result.report_path)
    return result


def run_evaluate(cfg: DldcConfig, progress: bool = True) -> Any:
    """Evaluate ``cfg.evaluate.generations`` against the real test images; log every overall metric."""
    from dldc.evaluate import SUMMARY_FILE, evaluate_generations, summary

    with stage_run(cfg.tracking, "evaluate", cfg.evaluate.model_dump(mode="json")) as run:
        result = evaluate_generations(cfg=cfg.evaluate, progress=progress)
        overall = summary(result)
        # Metric names: <arm>.<metric>, e.g. clean.FD-indomain; relative changes as <arm>.<metric>.rel_pct.
        run.finish(
            cfg.evaluate.out,
            {
                **{f"{arm}.{m}": v for arm, values in overall["arms"].items() for m, v in values.items()},
                **{
                    f"{arm}.{m}.rel_pct": v
                    for arm, values in overall["relative_change_vs_base_pct"].items()
                    for m, v in values.items()
                },
            },
        )
        run.set_tags({"evaluate.fingerprint": overall["fingerprint"]})
        for name in ("results.json", "results.md", SUMMARY_FILE):
            run.log_artifact(Path(cfg.evaluate.out) / name)
    return result


def run_promote(cfg: DldcConfig) -> dict[str, Any]:
    """Register the candidate adapter and move the champion alias when it beats the champion."""
    from dldc.registry.promote import promote

    params = {"promote": cfg.promote.model_dump(mode="json"), "registry": cfg.registry.model_dump(mode="json")}
    with stage_run(cfg.tracking, "promote", params) as run:
        decision = promote(cfg, run)
        run.finish(cfg.promote.out, {"promoted": int(bool(decision["promoted"])),
                                     "candidate_version": int(decision["candidate"]["version"])})
        return decision


def run_export_scorer(cfg: DldcConfig, progress: bool = True, from_export: str | None = None) -> Any:
    """Export ``cfg.export.scorer`` to ONNX behind the parity gate; log it to MLflow and register it.

    A refused export fails the stage's run with the measured parity figures logged as metrics.
    """
    from dldc.export.exporter import ExportRefusedError, export_scorer
    from dldc.export.registry import log_export

    section = cfg.export
    params = {**section.model_dump(mode="json"), "from_export": from_export}
    with stage_run(cfg.tracking, "export_scorer", params) as run:
        try:
            result = export_scorer(section, progress=progress, from_export=from_export)
        except ExportRefusedError as err:
            run.log_metrics({f"parity.{k}": v for k, v in err.figures.items()})
            run.set_tags({"export.parity_passed": "false"})
            raise
        run.finish(result.path, {"parity": result.meta["parity"]["figures"]})
        if run.enabled:
            result.meta["registry"] = log_export(result.path, result.meta, section.registered_model, section.alias)
        else:
            result.meta["registry"] = None
    return result


def run_name_base(cfg: DldcConfig, spec: str) -> dict[str, Any]:
    """Make ``cfg.base.out`` stand for the existing base ``spec`` (:func:`dldc.t2i.models.name_base`); log it."""
    from dldc.t2i.models import name_base

    with stage_run(cfg.tracking, "build_base", {"from": spec, "out": cfg.base.out}) as run:
        named = name_base(spec, cfg.base.out)
        run.set_tags({"base": named["base"], "base_revision": named["revision"] or ""})
        run.finish(cfg.base.out, {"trained": 0})
    return named


def run_build_base(cfg: DldcConfig, progress: bool = True) -> dict[str, Any]:
    """Train the tiny demo Stable Diffusion into ``cfg.base.out``; log its losses, timings and scene check."""
    from dldc.t2i.base import REPORT_FILE, SAMPLES_FILE, build_base

    with stage_run(cfg.tracking, "build_base", cfg.base.model_dump(mode="json")) as run:
        report = build_base(cfg.base, progress=progress)
        run.finish(
            cfg.base.out,
            {
                "timings": report["timings"],
                "vae": report["vae"],
                "denoiser": report["denoiser"],
                "parameters": report["parameters"],
                "scene_accuracy": report.get("scene_check", {}).get("generated", {}).get("accuracy"),
                "scene_accuracy_ceiling": report.get("scene_check", {}).get("ceiling", {}).get("accuracy"),
                "scene_accuracy_real": report.get("scene_check", {}).get("real", {}).get("accuracy"),
            },
        )
        for step, loss in enumerate(report["losses"]["denoiser"]):
            run.log_metrics({"denoiser_loss_curve": loss}, step=step)
        out = Path(cfg.base.out)
        run.log_artifact(out / REPORT_FILE)
        if (out / SAMPLES_FILE).is_file():
            run.log_artifact(out / SAMPLES_FILE)
    return report


def run_finetune(cfg: DldcConfig, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """LoRA fine-tune ``cfg.finetune.base`` on ``cfg.finetune.manifest``; log the loss curve, samples and adapter."""
    from dldc.t2i.finetune import ADAPTER_FILE, REPORT_FILE, SAMPLES_FILE, finetune

    section = cfg.finetune
    with stage_run(cfg.tracking, "finetune", section.model_dump(mode="json")) as run:
        report = finetune(
            section, progress=progress, on_log=lambda step, values: run.log_metrics(values, step=step),
            stop_after=stop_after,
        )
        if "stopped_at" in report:
            return report
        run.finish(
            section.out,
            {"final_loss": report["final_loss"], "lora_parameters": report["lora_parameters"], **report["throughput"]},
        )
        losses = report["losses"]  # thinned to <= 200 points: each the mean of `stride` steps
        stride = math.ceil(report["steps"] / max(len(losses), 1))
        curve = [{"step": i * stride + 1, "loss": value} for i, value in enumerate(losses)]
        write_plot_table(Path(section.out) / LOSS_PLOT, curve)
        run.set_tags({"base": section.base, "manifest_sha256": report["manifest_sha256"],
                      "fingerprint": report["fingerprint"]})
        out = Path(section.out)
        for name in (ADAPTER_FILE, REPORT_FILE):
            run.log_artifact(out / name, artifact_path="adapter")
        if report["samples"]:
            run.log_artifact(out / SAMPLES_FILE)
        if run.enabled:
            frame, _ = read_manifest(section.manifest)
            run.log_dataset(frame, source=Path(section.manifest).resolve(), name="train_manifest", context="finetune")
    return report


def run_generate(cfg: DldcConfig, progress: bool = True) -> Any:
    """Generate the test prompts' images for every arm of ``cfg.generate`` and log the counts."""
    from dldc.t2i.generate import REPORT_FILE, generate_images

    with stage_run(cfg.tracking, "generate", cfg.generate.model_dump(mode="json")) as run:
        result = generate_images(cfg.generate, progress=progress)
        run.finish(result.out, {"images": result.report["images"], "images_per_s": result.report["images_per_s"],
                                "arms": result.report["arms"]})
        run.log_artifact(result.out / REPORT_FILE)
    return result


def run_select_trial(cfg: DldcConfig, out: str | Path, ratio: float | None = None, row: int | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """One trial: row ``row`` of ``select.mode``'s plan, or ``ratio`` in every scene (a loop trial), into ``out``."""
    from dldc.select.plan import plan_trials
    from dldc.select.trial import TRIAL_FILE, run_plan_row, run_trial

    if (ratio is None) == (row is None):
        raise ValueError("give exactly one of ratio and row")
    params = {"select": cfg.select.model_dump(mode="json"), "ratio": ratio, "row": row, "out": str(out)}
    with stage_run(cfg.tracking, "select_trial", params) as run:
        if row is not None:
            report = run_plan_row(cfg, row, out, progress=progress)
        else:
            judge = plan_trials(cfg, "loop").judge_cuts
            report = run_trial(cfg, ratio, out, progress=progress, judge_cuts=judge)
        if report.get("idle"):
            run.finish(out, {"idle": 1})
            return report
        per_scene = {f"{scene}.{m}": v for scene, values in report["metrics"].items() for m, v in values.items()}
        figures = {"kept_pairs": report["kept_pairs"], "final_loss": report["final_loss"], **per_scene}
        if ratio is not None:
            figures["ratio"] = ratio
        run.finish(out, figures)
        run.log_artifact(Path(out) / TRIAL_FILE)
    return report


def run_select(cfg: DldcConfig, mode: str | None = None, progress: bool = True) -> Any:
    """Choose each scene's cleaning ratio (``proxy`` or ``loop``); log r*, curves, manifests and plots."""
    from dldc.select.selection import CLEANED_FILE, DROPPED_FILE, RESULTS_MD, SELECTION_FILE, select_ratios

    params = {**cfg.select.model_dump(mode="json"), "mode": mode or cfg.select.mode}
    with stage_run(cfg.tracking, "select", params) as run:
        result = select_ratios(cfg, mode=mode, progress=progress)
        selection = result.selection
        curves = {**selection["curves"], "all": selection["overall_curve"]}
        write_plot_table(result.out / CURVES_PLOT, [{"ratio": float(r), "scene": scene, "objective": value}
                                                    for scene, curve in curves.items()
                                                    for r, value in curve.items() if value is not None])  # fmt: skip
        run.finish(result.out, {"global_ratio": selection["global_ratio"], "fallbacks": len(selection["fallbacks"]),
                                **{f"ratio.{scene}": r for scene, r in selection["ratios"].items()},
                                **{f"pairs.{k}": v for k, v in selection["pairs"].items()}})
        for ratio, value in selection["overall_curve"].items():
            if value is not None:
                run.log_metrics({"objective.global": value}, step=round(float(ratio) * 100))
        run.set_tags({"select.mode": selection["mode"]})
        for name in (SELECTION_FILE, CLEANED_FILE, DROPPED_FILE, RESULTS_MD):
            run.log_artifact(result.out / name)
        for plot in selection["plots"]:
            run.log_artifact(result.out / plot, artifact_path="plots")
        if run.enabled:
            frame, _ = read_manifest(result.out / CLEANED_FILE)
            run.log_dataset(frame, source=(result.out / CLEANED_FILE).resolve(), name="cleaned_manifest",
                            context="select")
    return result


def run_report(cfg: DldcConfig, single_file: str | Path | None = None) -> Any:
    """Build the cleaning report into ``cfg.report.out`` and log the folder to MLflow (artifact ``report/``).

    ``single_file``: also write the page with its thumbnails inlined there (one HTML file, for Kubeflow).
    """
    from dldc.io import atomic_path
    from dldc.report import build_report
    from dldc.report import single_file as inline_page

    with stage_run(cfg.tracking, "report", cfg.report.model_dump(mode="json")) as run:
        result = build_report(cfg.report)
        summary = result.summary
        if single_file is not None:
            with atomic_path(single_file) as tmp:
                tmp.write_text(inline_page(result.out), encoding="utf-8")
        run.finish(result.out, {key: summary[key] for key in (
            "scenes", "pairs", "dropped", "egl_replaced", "rejected", "sample_prompts", "metric_rows", "thumbnails",
            "thumbnail_failures", "bytes", "seconds")})  # fmt: skip
        # The folder as a whole is the artifact: index.html opens from MLflow's artifact store with its thumbnails.
        run.log_artifacts(result.out, artifact_path="report")
    return result


def run_export_dataset(cfg: DldcConfig) -> dict[str, Any]:
    """Write the cleaned dataset in its source's format into ``cfg.export_dataset.out``; log counts and provenance."""
    from dldc.data.export import PROVENANCE_FILE, REPORT_FILE, export_dataset
    from dldc.io import output_lock

    section = cfg.export_dataset
    with stage_run(cfg.tracking, "export_dataset", section.model_dump(mode="json")) as run:
        with output_lock(section.out):
            report = export_dataset(
                section.original, section.cleaned, section.out, dropped=section.dropped, scores=section.scores,
                captions=section.captions, rejects=section.rejects, fmt=section.format, images=section.images,
            )  # fmt: skip
        run.finish(section.out, report["counts"])
        for name in (REPORT_FILE, PROVENANCE_FILE, report["annotations"]):
            run.log_artifact(Path(section.out) / name, artifact_path="dataset")
    return report


def run_segment(cfg: DldcConfig, progress: bool = True) -> dict[str, Any]:
    """Train and score the segmenter for every arm and protocol; log metrics, curves, tables and plots."""
    from dldc.segment.experiment import PER_CLASS_FILE, RESULTS_FILE, SUMMARY_FILE, TABLE_FILE, run_segment
    from dldc.segment.plots import plot_confusion

    section = cfg.segment
    with stage_run(cfg.tracking, "segment", section.model_dump(mode="json")) as run:
        report = run_segment(
            section,
            progress=progress,
            on_log=lambda name, step, values: run.log_metrics({f"{name}.{k}": v for k, v in values.items()}, step=step),
        )
        metrics: dict[str, Any] = {}
        for name, values in report["runs"].items():
            metrics.update({f"{name}.{m}": values[m] for m in ("mIoU", "mAcc", "aAcc")})
            metrics.update({f"{name}.{m}_ci_low": ci[0] for m, ci in values["ci"].items()})
            metrics.update({f"{name}.{m}_ci_high": ci[1] for m, ci in values["ci"].items()})
            metrics.update({f"{name}.IoU.{c}": v for c, v in values["IoU"].items()})  # NaN (class absent): left out
        run.finish(section.out, metrics)
        run.set_tags({"segment.protocols": ",".join(report["protocols"]), "segment.dataset": section.dataset})
        out = Path(section.out)
        for name in (RESULTS_FILE, TABLE_FILE, PER_CLASS_FILE, SUMMARY_FILE):
            run.log_artifact(out / name)
        if run.enabled:
            for name, values in report["runs"].items():
                plot = plot_confusion(values["confusion"], report["classes"], f"{name} (test split)",
                                      out / "plots" / f"confusion_{name.replace('/', '_')}.png")
                if plot is not None:
                    run.log_artifact(plot, artifact_path="plots")
    return report
