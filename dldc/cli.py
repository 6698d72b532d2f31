"""The ``dldc`` command line: one command per stage, all driven by ``params.yaml``.

Explicit flags win over ``-S key=value`` overrides, which win over ``params.yaml``, which
wins over the profile defaults (see :mod:`dldc.config`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from dldc.config import DEFAULT_PARAMS_FILE, ConfigError, DldcConfig, load_config
from dldc.messages import configure_logging, one_line_error


class _Context:
    def __init__(self, params_file: str, overrides: tuple[str, ...], progress: bool):
        self.params_file = params_file
        self.overrides = overrides
        self.progress = progress

    def config(self, **updates: Any) -> DldcConfig:
        """The resolved configuration, with the command's explicit flags applied."""
        given = {key: value for key, value in updates.items() if value is not None}
        try:
            return load_config(self.params_file, self.overrides, given)
        except ConfigError as err:
            raise click.ClickException(str(err)) from None


class _Group(click.Group):
    """Errors a user can meet (OS errors, bad inputs) end as one line; ``-v`` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OSError, ValueError) as err:
            if ctx.params.get("verbose", 0) > 0:
                raise
            raise click.ClickException(one_line_error(err)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--params",
    "params_file",
    default=DEFAULT_PARAMS_FILE,
    show_default=True,
    help="Params file (DVC's params.yaml). Missing default file = embedded demo profile.",
)
@click.option(
    "-S",
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting, e.g. -S synth.seed=3 (as `dvc exp run -S`). Repeatable.",
)
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("-v", "--verbose", count=True, help="More messages (libraries' too) and tracebacks of errors.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.version_option(package_name="dldc")
@click.pass_context
def main(
    ctx: click.Context, params_file: str, overrides: tuple[str, ...], progress: bool, verbose: int, quiet: bool
) -> None:
    """dldc: Dual Loop Data Cleaning for remote-sensing text-to-image data."""
    configure_logging(-1 if quiet else verbose)
    use_system_arrow_pool()
    ctx.obj = _Context(params_file, overrides, progress)


def use_system_arrow_pool() -> None:
    """Arrow allocations through the C library's allocator, unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise.

    Arrow's default pool (mimalloc) keeps freed table buffers for reuse, so a stage's resident
    memory stays at its high-water mark; the system allocator returns large buffers to the OS.
    Measured at 10⁵ pairs: ingest, select, export-dataset and report peak 10–15% lower, in the same
    time (benchmarks/README.md, scale.py).
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


@main.command()
@click.option("--out", type=click.Path(file_okay=False), help="Output dataset folder [synth.out].")
@click.option("--n-images", type=int, help="Number of images [synth.n_images].")
@click.option("--size", type=int, help="Image side in pixels [synth.size].")
@click.option("--noise-rate", type=float, help="Share of captions replaced by noise [synth.noise_rate].")
@click.option("--seed", type=int, help="Random seed; same seed, same bytes [synth.seed].")
@click.pass_obj
def synth(
    obj: _Context, out: str | None, n_images: int | None, size: int | None, noise_rate: float | None, seed: int | None
) -> None:
    """Generate SynthRS, the embedded synthetic RS dataset (Karpathy layout)."""
    from dldc.stages import run_synth

    cfg = obj.config(
        **{
            "synth.out": out,
            "synth.n_images": n_images,
            "synth.size": size,
            "synth.noise_rate": noise_rate,
            "synth.seed": seed,
        }
    )
    try:
        summary = run_synth(cfg, progress=obj.progress)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {summary.get('n_images', '?')} images to {cfg.synth.out}")


@main.command()
@click.option("--format", "fmt", type=click.Choice(["karpathy", "folder"]), help="Dataset layout [ingest.format].")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root [ingest.root].")
@click.option("--scenes", type=click.Path(file_okay=False), help="Folder of <Scene>.txt lists [ingest.scenes].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [ingest.out].")
@click.pass_obj
def ingest(obj: _Context, fmt: str | None, root: str | None, scenes: str | None, out: str | None) -> None:
    """Read a dataset, reject bad pairs with a reason, write manifest.parquet."""
    from dldc.data.readers import DatasetFormatError
    from dldc.stages import run_ingest

    cfg = obj.config(**{"ingest.format": fmt, "ingest.root": root, "ingest.scenes": scenes, "ingest.out": out})
    try:
        result = run_ingest(cfg, progress=obj.progress)
    except DatasetFormatError as err:
        raise click.ClickException(str(err)) from None
    _print_ingest_summary(result.report, result.manifest.parent)


@main.command("train-scorer")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest to train on [indomain.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [indomain.out].")
@click.option("--folds", type=int, help="Cross-fitting folds K [indomain.folds].")
@click.option("--epochs", type=int, help="Epochs per fold model [indomain.epochs].")
@click.pass_obj
def train_scorer(obj: _Context, manifest: str | None, out: str | None, folds: int | None, epochs: int | None) -> None:
    """Train the in-domain scorer with K-fold cross-fitting (each pair scored by a model that never saw it)."""
    from dldc.stages import run_train_scorer

    cfg = obj.config(
        **{"indomain.manifest": manifest, "indomain.out": out, "indomain.folds": folds, "indomain.epochs": epochs}
    )
    try:
        report = run_train_scorer(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    held_out = [fold["heldout"]["auroc_vs_other_scene"] for fold in report["folds"]]
    click.echo(
        f"wrote the in-domain scorer ({len(held_out)} folds; held-out AUROC against other-scene captions "
        f"{min(held_out):.3f}-{max(held_out):.3f}) to {cfg.indomain.out}"
    )


@main.command()
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest to score [score.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [score.out].")
@click.option(
    "--scorer",
    "scorers",
    multiple=True,
    metavar="SPEC",
    help="Scorer spec, repeatable: indomain:DIR, open_clip:ARCH[:TAG_OR_CHECKPOINT], hf:ID_OR_DIR, onnx:DIR "
    "[score.scorers].",
)
@click.option(
    "--part", metavar="I/N", help="Score only the I-th of N slices (fan-out); fuse with `dldc gather-scores`."
)
@click.pass_obj
def score(obj: _Context, manifest: str | None, out: str | None, scorers: tuple[str, ...], part: str | None) -> None:
    """Score every pair with contrastive models; write scores.parquet, score.json and the embedding store."""
    from dldc.stages import run_score

    cfg = obj.config(**{"score.manifest": manifest, "score.out": out, "score.scorers": list(scorers) or None})
    try:
        result = run_score(cfg, progress=obj.progress, part=_parse_part(part))
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    report = result.report
    click.echo(
        f"scored {report['pairs']} pairs with {', '.join(s['name'] for s in report['scorers'])} "
        f"({report['images_encoded']} images and {report['texts_encoded']} captions encoded, "
        f"{report['shards_reused']}/{report['shards_total']} shards reused); "
        f"truncated captions {report['truncated_captions']}; wrote {result.scores}"
    )


@main.command("gather-scores")
@click.argument("parts", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [score.out].")
@click.pass_obj
def gather_scores(obj: _Context, parts: tuple[str, ...], out: str | None) -> None:
    """Join the raw scores of `dldc score --part` outputs and fuse them per scene."""
    from dldc.stages import run_gather_scores

    cfg = obj.config(**{"score.out": out})
    try:
        result = run_gather_scores(cfg, list(parts))
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"fused {result.report['pairs']} pairs from {len(parts)} parts into {result.scores}")


@main.command()
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest to repair [caption.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [caption.out].")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    metavar="SPEC",
    help="Captioner, repeatable: hf:HUB_ID_OR_DIR, mask2text[:TABLE], retrieval[:INDOMAIN_DIR] [caption.backends].",
)
@click.option("--rounds", type=int, help="Most regeneration rounds K [caption.rounds].")
@click.option("--scores", type=click.Path(dir_okay=False), help="Round-0 scores.parquet [caption.scores].")
@click.option(
    "--scorer", "scorers", multiple=True, metavar="SPEC", help="IEL scorer of candidates, repeatable [caption.scorers]."
)
@click.pass_obj
def caption(
    obj: _Context,
    manifest: str | None,
    out: str | None,
    backends: tuple[str, ...],
    rounds: int | None,
    scores: str | None,
    scorers: tuple[str, ...],
) -> None:
    """EGL: regenerate captions of low-scoring pairs, keep the ones the IEL scores higher."""
    from dldc.stages import run_caption

    cfg = obj.config(
        **{
            "caption.manifest": manifest,
            "caption.out": out,
            "caption.backends": list(backends) or None,
            "caption.rounds": rounds,
            "caption.scores": scores,
            "caption.scorers": list(scorers) or None,
        }
    )
    try:
        result = run_caption(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    report = result.report
    fused = " -> ".join(f"{r['mean_fused']:.3f}" for r in report["rounds"])
    click.echo(
        f"{report['low_at_start']} of {report['pairs']} pairs below their scene threshold; "
        f"{report['replaced']} captions replaced ({report['replaced_by_backend']}), {report['still_low']} still low; "
        f"mean fused per round {fused}; stopped: {report['stop']}; wrote {result.manifest}"
    )


def _parse_part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise click.BadParameter(f"expected I/N with 0 <= I < N, got {text!r}", param_hint="--part")
    return int(index), int(count)


@main.command()
@click.option(
    "--generations",
    "generations",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Folder from `dldc generate`; repeatable (each arm in one folder) [evaluate.generations].",
)
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest the prompts came from [evaluate.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [evaluate.out].")
@click.option("--base-arm", help="Arm that relative changes are measured against [evaluate.base_arm].")
@click.option("--fid/--no-fid", default=None, help="Inception FID/KID (needs the staged weights) [evaluate.fid].")
@click.option("--bootstrap", type=int, help="Bootstrap resamples for the intervals [evaluate.bootstrap].")
@click.pass_obj
def evaluate(
    obj: _Context,
    generations: tuple[str, ...],
    manifest: str | None,
    out: str | None,
    base_arm: str | None,
    fid: bool | None,
    bootstrap: int | None,
) -> None:
    """FID/KID, FD/KD in IEL feature spaces and CLIP scores of every arm vs. the real test images."""
    from dldc.stages import run_evaluate

    cfg = obj.config(
        **{
            "evaluate.generations": list(generations) or None,
            "evaluate.manifest": manifest,
            "evaluate.out": out,
            "evaluate.base_arm": base_arm,
            "evaluate.fid": fid,
            "evaluate.bootstrap": bootstrap,
        }
    )
    try:
        result = run_evaluate(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    import math

    click.echo(f"wrote {cfg.evaluate.out}/results.md:")
    overall = result.table[result.table["scene"] == "all"]
    for arm, rows in overall.groupby("arm", sort=False):
        figures = []
        for metric, value, change in zip(rows["metric"], rows["value"], rows["rel_change_pct"]):
            vs_base = "" if arm == cfg.evaluate.base_arm or math.isnan(change) else f" ({change:+.1f}%)"
            figures.append(f"{metric} {value:.4g}{vs_base}")
        click.echo(f"  {arm}: {', '.join(figures)}")


@main.command()
@click.option("--evaluation", type=click.Path(file_okay=False), help="`dldc evaluate` output [promote.evaluation].")
@click.option("--candidate-arm", help="Evaluated arm whose adapter is the candidate [promote.candidate_arm].")
@click.option("--adapter", type=click.Path(file_okay=False), help="Candidate adapter folder [promote.adapter].")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for decision.json [promote.out].")
@click.pass_obj
def promote(
    obj: _Context, evaluation: str | None, candidate_arm: str | None, adapter: str | None, out: str | None
) -> None:
    """Register the candidate adapter in MLflow; move the champion alias only if it beats the champion."""
    from dldc.stages import run_promote

    cfg = obj.config(
        **{
            "promote.evaluation": evaluation,
            "promote.candidate_arm": candidate_arm,
            "promote.adapter": adapter,
            "promote.out": out,
        }
    )
    try:
        decision = run_promote(cfg)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    candidate = decision["candidate"]
    click.echo(
        f"{cfg.registry.model_name} version {candidate['version']} ({candidate['arm']}): {decision['outcome']}: "
        f"{decision['reason']}"
    )


@main.command("export-scorer")
@click.option("--scorer", metavar="SPEC", help="Scorer spec to export, e.g. indomain:data/scorer [export.scorer].")
@click.option("--out", type=click.Path(file_okay=False), help="Export folder; score with onnx:DIR [export.out].")
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="fp32, fp16 (GPU), int8 (CPU) [export.precision]."
)
@click.option(
    "--calibration",
    type=click.Path(dir_okay=False),
    help="Manifest the parity gate samples pairs from [export.calibration_manifest].",
)
@click.option(
    "--from-export",
    type=click.Path(file_okay=False, exists=True),
    help="Convert this fp32 export of the same weights instead of tracing again (still gated).",
)
@click.pass_obj
def export_scorer(
    obj: _Context,
    scorer: str | None,
    out: str | None,
    precision: str | None,
    calibration: str | None,
    from_export: str | None,
) -> None:
    """Export a scorer to ONNX (fp32/fp16/int8), refuse it unless it ranks pairs like its source."""
    from dldc.export.exporter import ExportRefusedError
    from dldc.iel.onnx_scorer import ExportInvalidError
    from dldc.stages import run_export_scorer

    cfg = obj.config(
        **{
            "export.scorer": scorer,
            "export.out": out,
            "export.precision": precision,
            "export.calibration_manifest": calibration,
        }
    )
    try:
        result = run_export_scorer(cfg, progress=obj.progress, from_export=from_export)
    except (ExportRefusedError, ExportInvalidError, ValueError, FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    figures = result.meta["parity"]["figures"]
    registry = result.meta.get("registry") or {}
    registered = f"; registered {registry['name']} v{registry['version']}" if registry.get("version") else ""
    alias = f" @{registry['alias']}" if registry.get("alias") else ""
    click.echo(
        f"exported {cfg.export.scorer} ({result.meta['precision']}) to {result.path}: cosine min "
        f"{figures['cosine_min']:.6f}, Spearman {figures['spearman']:.5f}, flip rate {figures['flip_rate']:.2%} "
        f"on {figures['pairs']} pairs{registered}{alias}; score with onnx:{result.path}"
    )


@main.command("fetch-scorer")
@click.argument("reference", metavar="NAME@ALIAS")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the export to.")
@click.pass_obj
def fetch_scorer(obj: _Context, reference: str, out: str) -> None:
    """Download the exported scorer an MLflow alias points at (e.g. dldc-iel-scorer@exported)."""
    from mlflow.exceptions import MlflowException

    from dldc.export.registry import fetch_export

    cfg = obj.config()
    try:
        path = fetch_export(reference, out, cfg.tracking)
    except (ValueError, MlflowException) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"fetched {reference} to {path}; score with onnx:{path}")


@main.command("build-base")
@click.option("--out", type=click.Path(file_okay=False), help="Pipeline folder to write [base.out].")
@click.option("--steps", type=int, help="UNet + text-encoder training steps [base.steps].")
@click.option(
    "--check-scorer", type=click.Path(file_okay=False), help="In-domain scorer for the scene check [base.check_scorer]."
)
@click.option(
    "--from",
    "named",
    help="Name an existing base instead of training one: org/name[@revision], an absolute folder, "
    "or models:/NAME@ALIAS.",
)
@click.pass_obj
def build_base(obj: _Context, out: str | None, steps: int | None, check_scorer: str | None, named: str | None) -> None:
    """Train the demo's tiny Stable Diffusion from scratch on a SynthRS pretraining split (save_pretrained folder).

    With --from, OUT instead stands for the named base (a reference file, or the registered model's
    pipeline folder) and nothing is trained: every stage given OUT as its base loads that model.
    """
    from dldc.stages import run_build_base, run_name_base

    cfg = obj.config(**{"base.out": out, "base.steps": steps, "base.check_scorer": check_scorer})
    if named:
        try:
            named_as = run_name_base(cfg, named)
        except (ValueError, OSError) as err:
            raise click.ClickException(str(err)) from None
        revision = f" at revision {named_as['revision']}" if named_as["revision"] else ""
        click.echo(f"{cfg.base.out} stands for {named_as['base']}{revision}")
        return
    try:
        report = run_build_base(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    check = report.get("scene_check")
    scene = (
        f"; scene accuracy {check['generated']['accuracy']:.2f} on generated images "
        f"(ceiling {check['ceiling']['accuracy']:.2f}, chance {check['chance']:.2f})"
        if check
        else ""
    )
    click.echo(f"wrote the base pipeline to {cfg.base.out} in {report['timings']['total_s']:.0f} s{scene}")


@main.command()
@click.option("--base", help="Base pipeline: hub id or save_pretrained folder [finetune.base].")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest to train on [finetune.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Adapter folder [finetune.out].")
@click.option("--steps", type=int, help="Optimizer steps [finetune.steps].")
@click.option("--seed", type=int, help="Seed of LoRA init, batches and noise [finetune.seed].")
@click.pass_obj
def finetune(
    obj: _Context, base: str | None, manifest: str | None, out: str | None, steps: int | None, seed: int | None
) -> None:
    """LoRA fine-tune Stable Diffusion on a manifest; resumes from the last checkpoint of the same settings."""
    from dldc.stages import run_finetune

    cfg = obj.config(
        **{
            "finetune.base": base,
            "finetune.manifest": manifest,
            "finetune.out": out,
            "finetune.steps": steps,
            "finetune.seed": seed,
        }
    )
    try:
        report = run_finetune(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    resumed = f", resumed from step {report['resumed_from'][-1]}" if report["resumed_from"] else ""
    click.echo(
        f"wrote {cfg.finetune.out}/{report['adapter']} ({report['lora_parameters']} LoRA parameters, "
        f"{report['steps']} steps{resumed}, final loss {report['final_loss']:.4f}, "
        f"{report['throughput']['images_per_s']} images/s)"
    )


@main.command()
@click.option("--base", help="Base pipeline: hub id or save_pretrained folder [generate.base].")
@click.option("--arm", "arms", multiple=True, metavar="NAME=ADAPTER_DIR",
              help="An arm and its adapter folder (NAME= for the base alone); repeatable, replaces generate.arms.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest with the prompts [generate.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [generate.out].")
@click.pass_obj
def generate(obj: _Context, base: str | None, arms: tuple[str, ...], manifest: str | None, out: str | None) -> None:
    """Generate images for the test prompts for every arm (same seeds); resumable; writes generations.parquet."""
    from dldc.stages import run_generate

    parsed = _parse_arms(arms)
    cfg = obj.config(
        **{"generate.base": base, "generate.arms": parsed, "generate.manifest": manifest, "generate.out": out}
    )
    try:
        result = run_generate(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    counts = ", ".join(f"{arm}: {c['generated']} new / {c['reused']} kept" for arm, c in result.report["arms"].items())
    click.echo(f"wrote {result.report['images']} images ({counts}) and {result.table}")


@main.command()
@click.option("--scores", type=click.Path(dir_okay=False), help="Scores of the final captions [select.scores].")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest the scores belong to [select.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [select.out].")
@click.option("--mode", type=click.Choice(["proxy", "calibrate", "attribute", "loop"]),
              help="proxy (no training), calibrate, attribute or loop (trials first) [select.mode].")
@click.option("--trials", type=click.Path(file_okay=False), help="`dldc select-trial` outputs [select.trials].")
@click.pass_obj
def select(
    obj: _Context, scores: str | None, manifest: str | None, out: str | None, mode: str | None, trials: str | None
) -> None:
    """Choose each scene's cleaning ratio; write selection.json and the cleaned manifests."""
    from dldc.stages import run_select

    cfg = obj.config(
        **{"select.scores": scores, "select.manifest": manifest, "select.out": out, "select.mode": mode,
           "select.trials": trials}
    )
    try:
        result = run_select(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    chosen = result.selection
    ratios = ", ".join(f"{scene} {r:.3g}" for scene, r in chosen["ratios"].items())
    fallbacks = f"; {len(chosen['fallbacks'])} scene(s) fell back to it" if chosen["fallbacks"] else ""
    flagged = {name: [s for s, rec in chosen["scenes"].items() if rec.get(key)]
               for key, name in (("low_confidence", "low confidence"), ("no_model_signal", "no model signal"))}
    flags = "".join(f"; {name}: {', '.join(scenes)}" for name, scenes in flagged.items() if scenes)
    click.echo(
        f"{chosen['mode']}: global ratio {chosen['global_ratio']:g}{fallbacks}; per scene: {ratios}; kept "
        f"{chosen['pairs']['kept']} of {chosen['pairs']['total']} pairs{flags}\n{chosen['budget']}; "
        f"wrote {result.out} (results.md: intervals and evidence per scene)"
    )


@main.command("export-dataset")
@click.option("--original", type=click.Path(dir_okay=False), help="The ingest manifest [export_dataset.original].")
@click.option("--cleaned", type=click.Path(dir_okay=False), help="Kept pairs [export_dataset.cleaned].")
@click.option("--dropped", type=click.Path(dir_okay=False), help="dropped.parquet [export_dataset.dropped].")
@click.option("--scores", type=click.Path(dir_okay=False), help="IEL scores [export_dataset.scores].")
@click.option("--captions", type=click.Path(dir_okay=False), help="EGL's captions.parquet [export_dataset.captions].")
@click.option("--rejects", type=click.Path(dir_okay=False), help="Ingest's rejects.parquet [export_dataset.rejects].")
@click.option("--format", "fmt", type=click.Choice(["source", "karpathy", "folder"]),
              help="Format to write [export_dataset.format: the source's].")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False), help="Export folder [export_dataset.out].")
@click.pass_obj
def export_dataset(obj: _Context, fmt: str | None, **paths: str | None) -> None:
    """Write the cleaned dataset in its source's format (repaired captions in place) with provenance.parquet."""
    from dldc.stages import run_export_dataset

    cfg = obj.config(**{f"export_dataset.{key}": value for key, value in {**paths, "format": fmt}.items()})
    try:
        report = run_export_dataset(cfg)
    except (ValueError, FileNotFoundError, OSError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    counts = report["counts"]
    click.echo(
        f"wrote {cfg.export_dataset.out}/{report['annotations']} ({report['format']}): {counts['kept']} pairs kept "
        f"({counts['repaired_kept']} with repaired captions) on {counts['images']} images; {counts['dropped']} "
        f"dropped, {counts['rejected']} rejected at ingest: see provenance.parquet"
    )


@main.command("select-trial")
@click.option("--row", type=int, help="Row of select.mode's trial plan (a slot of select.rows; past the plan: idle).")
@click.option("--ratio", type=float, help="Instead of --row: one ratio for every scene (a loop trial).")
@click.option("--out", type=click.Path(file_okay=False), help="Trial folder [<select.trials>/row<ROW> or r<RATIO>].")
@click.option("--scores", type=click.Path(dir_okay=False), help="Scores of the final captions [select.scores].")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest the scores belong to [select.manifest].")
@click.option("--base", help="Base pipeline: hub id or save_pretrained folder [finetune.base].")
@click.pass_obj
def select_trial(
    obj: _Context, row: int | None, ratio: float | None, out: str | None, scores: str | None, manifest: str | None,
    base: str | None,
) -> None:
    """One trial: clean each scene at its ratio (plan row ROW, or RATIO everywhere), short LoRA, held-out eval."""
    from dldc.select.trial import trial_dir_name
    from dldc.stages import run_select_trial

    cfg = obj.config(**{"select.scores": scores, "select.manifest": manifest, "finetune.base": base})
    if (row is None) == (ratio is None):
        raise click.UsageError("give exactly one of --row (a row of select.mode's plan) and --ratio")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise click.BadParameter(f"must be in [0, 1), got {ratio}", param_hint="--ratio")
    if row is not None and row < 0:
        raise click.BadParameter(f"must be >= 0, got {row}", param_hint="--row")
    folder = out or str(Path(cfg.select.trials) / (f"row{row}" if row is not None else trial_dir_name(ratio)))
    try:
        report = run_select_trial(cfg, folder, ratio=ratio, row=row, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    if report.get("idle"):
        click.echo(f"slot {row}: idle ({report['note']}); wrote {folder}")
        return
    overall = report["metrics"].get("all", {})
    figures = ", ".join(f"{m} {v:.4g}" for m, v in overall.items())
    what = report["plan"]["label"] if report.get("plan") else f"r={ratio:g}"
    click.echo(f"trial {what}: kept {report['kept_pairs']} pairs; held-out {figures}; wrote {folder}")


@main.command()
@click.option("--dataset", help="Dataset layout: synthrs, dubai, loveda, potsdam, vaihingen, deepglobe, folder "
              "[segment.dataset].")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset root [segment.root].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [segment.out].")
@click.option("--base", help="Text-to-image base of the synthetic arms [segment.base].")
@click.option("--arm", "arms", multiple=True, metavar="NAME=ADAPTER_DIR",
              help="A synthetic arm and its adapter (NAME= for the base alone); repeatable, replaces segment.arms.")
@click.option("--protocol", "protocols", multiple=True, type=click.Choice(["pseudo-label", "layout-prompt"]),
              help="Synthetic-mask protocol; repeatable, replaces segment.protocols.")
@click.option("--real-only", is_flag=True, help="Train and score the real-only baseline alone (no synthetic arm).")
@click.option("--steps", type=int, help="Training steps of every arm [segment.steps].")
@click.pass_obj
def segment(
    obj: _Context,
    dataset: str | None,
    root: str | None,
    out: str | None,
    base: str | None,
    arms: tuple[str, ...],
    protocols: tuple[str, ...],
    real_only: bool,
    steps: int | None,
) -> None:
    """Downstream segmentation: real-only vs. real + synthetic arms, same budget; writes results.json / results.md."""
    from dldc.stages import run_segment

    parsed = _parse_arms(arms)
    cfg = obj.config(
        **{
            "segment.dataset": dataset,
            "segment.root": root,
            "segment.out": out,
            "segment.base": base,
            "segment.arms": parsed,
            "segment.protocols": [] if real_only else (list(protocols) or None),
            "segment.steps": steps,
        }
    )
    try:
        report = run_segment(cfg, progress=obj.progress)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(Path(cfg.segment.out, "results.md").read_text(encoding="utf-8"))
    click.echo(f"wrote {cfg.segment.out}/results.json ({len(report['runs'])} runs, {report['seconds']} s)")


def _parse_arms(arms: tuple[str, ...]) -> dict[str, str] | None:
    """``--arm NAME=ADAPTER_DIR`` values as ``{name: adapter}`` (``None`` when none were given)."""
    if not arms:
        return None
    parsed = {}
    for item in arms:
        name, sep, adapter = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=ADAPTER_DIR (or NAME= for the base), got {item!r}",
                                     param_hint="--arm")
        parsed[name] = adapter
    return parsed


def _print_ingest_summary(report: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = report["counts"]
    console = Console(file=sys.stdout)
    table = Table(title="ingest")
    table.add_column("outcome")
    table.add_column("pairs", justify="right")
    table.add_row("kept", str(counts["kept_pairs"]))
    for reason, number in counts["rejected_pairs_by_reason"].items():
        table.add_row(f"rejected: {reason}", str(number))
    console.print(table)
    console.print(
        f"{report['root']}: {counts['kept_images']} images, {counts['scenes']} scenes, "
        f"pairs per split {counts['pairs_by_split']}; "
        f"wrote {out}/manifest.parquet, rejects.parquet, ingest.json"
    )


# Commands kept beside their library (cli.py stays short): registered here, so `dldc --help` lists them.
from dldc.cli_config import config  # noqa: E402
from dldc.cli_report import report  # noqa: E402

main.add_command(config)
main.add_command(report)


if __name__ == "__main__":
    main()
