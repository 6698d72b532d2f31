"""The ``dldc`` command line: one command per stage, all driven by ``params.yaml``.

Explicit flags win over ``-S key=value`` overrides, which win over ``params.yaml``, which
wins over the profile defaults (see :mod:`dldc.config`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from dldc.config import DEFAULT_PARAMS_FILE, ConfigError, DldcConfig, load_config


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.version_option(package_name="dldc")
@click.pass_context
def main(ctx: click.Context, params_file: str, overrides: tuple[str, ...], progress: bool) -> None:
    """dldc: Dual Loop Data Cleaning for remote-sensing text-to-image data."""
    ctx.obj = _Context(params_file, overrides, progress)


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
    click.echo(f"wrote the in-domain scorer ({report.get('folds', '?')} folds) to {cfg.indomain.out}")


@main.command()
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest to score [score.manifest].")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [score.out].")
@click.option(
    "--scorer",
    "scorers",
    multiple=True,
    metavar="SPEC",
    help="Scorer spec, repeatable: indomain:DIR, open_clip:ARCH[:TAG_OR_CHECKPOINT], hf:ID_OR_DIR [score.scorers].",
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


def _parse_part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise click.BadParameter(f"expected I/N with 0 <= I < N, got {text!r}", param_hint="--part")
    return int(index), int(count)


@main.group()
def config() -> None:
    """Inspect the resolved configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.pass_obj
def config_show(obj: _Context, as_json: bool) -> None:
    """Print the configuration after profile, params file and overrides."""
    data = obj.config().model_dump(mode="json")
    click.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))


@main.group()
def pipeline() -> None:
    """Kubeflow pipeline tools."""


@pipeline.command("compile")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="IR YAML file to write.")
def pipeline_compile(out: str) -> None:
    """Compile the Kubeflow pipeline (pipelines/dldc_pipeline.py) to IR YAML."""
    # Imported here so the library itself never imports kfp.
    from pipelines.dldc_pipeline import compile_pipeline

    compile_pipeline(Path(out))
    click.echo(f"wrote {out}")


def run_cli(args: list[str], settings: list[str] | tuple[str, ...] = (), run_group: str | None = None) -> None:
    """Run ``dldc --no-progress [-S setting]... ARGS`` in a child process (what components call).

    Args:
        args: the command and its flags, e.g. ``["ingest", "--root", path]``.
        settings: ``key=value`` overrides, passed as ``-S``.
        run_group: the MLflow parent-run group (``DLDC_RUN_GROUP``) of the pipeline run.

    Raises:
        subprocess.CalledProcessError: the command failed (its output is on stderr).
    """
    import os
    import subprocess

    overrides = [arg for setting in settings for arg in ("-S", setting)]
    env = {**os.environ, **({"DLDC_RUN_GROUP": run_group} if run_group else {})}
    subprocess.run([sys.executable, "-m", "dldc", "--no-progress", *overrides, *args], check=True, env=env)


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


if __name__ == "__main__":
    main()
