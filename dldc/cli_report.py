"""``dldc report``: the command (registered on :data:`dldc.cli.main`); the work is :func:`dldc.stages.run_report`.

Kept out of :mod:`dldc.cli` so that module stays under the size limit; it imports only click at load time,
so ``dldc --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click


@click.command()
@click.option("--manifest", type=click.Path(dir_okay=False, exists=True),
              help="Manifest `dldc select` ranked (the caption stage's) [report.manifest].")
@click.option("--scores", type=click.Path(dir_okay=False, exists=True), help="Its IEL scores [report.scores].")
@click.option("--selection", type=click.Path(file_okay=False, exists=True),
              help="`dldc select` output folder [report.selection].")
@click.option("--captions", type=click.Path(file_okay=False, exists=True),
              help="`dldc caption` output folder: EGL before/after (optional) [report.captions].")
@click.option("--ingest", "ingest_dir", type=click.Path(file_okay=False, exists=True),
              help="`dldc ingest` output folder: rejects by reason (optional) [report.ingest].")
@click.option("--evaluation", type=click.Path(file_okay=False, exists=True),
              help="`dldc evaluate` output folder: metric tables (optional) [report.evaluation].")
@click.option("--generations", type=click.Path(file_okay=False, exists=True),
              help="`dldc generate` output folder: sample grids per arm (optional) [report.generations].")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (index.html, thumbs/) [report.out].")
@click.option("--single-file", type=click.Path(dir_okay=False),
              help="Also write the page with its thumbnails inlined to this one HTML file.")
@click.pass_obj
def report(
    obj: Any,
    manifest: str | None,
    scores: str | None,
    selection: str | None,
    captions: str | None,
    ingest_dir: str | None,
    evaluation: str | None,
    generations: str | None,
    out: str | None,
    single_file: str | None,
) -> None:
    """The cleaning report: one HTML folder (open index.html) with ratios, cuts, thumbnails, repairs and metrics.

    Optional inputs missing from their default folders are left out (the page says so); -S report.NAME=null
    turns one off.
    """
    from dldc.stages import run_report

    cfg = obj.config(
        **{
            "report.manifest": manifest,
            "report.scores": scores,
            "report.selection": selection,
            "report.captions": captions,
            "report.ingest": ingest_dir,
            "report.evaluation": evaluation,
            "report.generations": generations,
            "report.out": out,
        }
    )
    try:
        result = run_report(cfg, single_file=single_file)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    summary = result.summary
    left_out = [name for name, info in summary["inputs"].items() if info["state"] != "used"]
    click.echo(
        f"wrote {result.index} ({summary['scenes']} scenes, {summary['thumbnails']} thumbnails, "
        f"{summary['bytes'] / 1e6:.2f} MB, {summary['seconds']:.1f} s)"
        + (f"; left out: {', '.join(left_out)}" if left_out else "")
    )
