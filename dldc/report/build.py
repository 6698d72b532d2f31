"""``dldc report``: the cleaning report, one self-contained HTML folder a researcher opens in a browser.

Output folder (``report.out``, replaced as a whole, :func:`dldc.io.atomic_dir`)::

    index.html    the page: inline CSS, plain HTML, inline SVG plots; no script, no network
    thumbs/       the thumbnails it shows (``report.thumb_size`` px, JPEG or PNG)
    report.json   what was shown and from where: inputs, counts, sizes, seconds

Sections: the inputs; the ratio of every scene with its interval and evidence; per scene, the
score histogram with the cut, ``J(r)``, and thumbnails of the lowest dropped pairs, the pairs either
side of the cut and the best kept; EGL before/after; ingest rejects by reason; sample grids per
fine-tune arm; the metric tables with intervals and protocols. The size is bounded by the caps
of :class:`dldc.config.ReportConfig`, not by the dataset: a page of 30 scenes shows a few hundred
thumbnails whatever the number of pairs.

:func:`single_file` gives the same page with the thumbnails inlined (one HTML file, for viewers such
as Kubeflow's that show a single file).
"""

from __future__ import annotations

import base64
import html
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dldc.config import ReportConfig
from dldc.io import atomic_dir, write_json
from dldc.report.graphics import Thumbnails
from dldc.report.inputs import ReportInputs, read_inputs
from dldc.report.sections import (
    egl_section,
    esc,
    evaluation_section,
    generations_section,
    histogram_column,
    ingest_section,
    scene_anchor,
    scene_overview,
    scene_section,
    table,
)

INDEX_FILE = "index.html"
SUMMARY_FILE = "report.json"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2733;background:#fafbfc}
header,main{max-width:1200px;margin:0 auto;padding:0 16px}
header{padding-top:12px}
h1{font-size:24px;margin:8px 0}h2{border-bottom:2px solid #d6dde6;padding-bottom:4px;margin-top:32px}
h3{margin:20px 0 6px}h4{margin:12px 0 4px;font-size:13px;color:#4b5968;text-transform:uppercase}
nav{font-size:13px;line-height:1.9}nav a{margin-right:10px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
td,th{border:1px solid #d6dde6;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#eef2f6}table.wide{width:100%}
.facts{color:#4b5968;font-size:12px}.note{color:#4b5968}.ci{color:#6b7785;font-size:12px}
.scene{background:#fff;border:1px solid #d6dde6;border-radius:6px;padding:4px 14px 12px;margin:16px 0}
.plots{display:flex;gap:18px;align-items:flex-end;flex-wrap:wrap}
.gallery{display:flex;flex-wrap:wrap;gap:8px;align-items:stretch}
.card{margin:0;width:160px;background:#f4f6f8;border-radius:4px;padding:4px;border-top:4px solid #8a9bb0}
.card.dropped{border-top-color:#d0584a}.card.reject{border-top-color:#b7862f}
.card img,.noimg{display:block;width:128px;height:auto;margin:0 auto}
.grid img,.egl img{width:96px;height:auto;display:block}
.noimg{width:128px;height:64px;line-height:64px;text-align:center;background:#e3e7ec;color:#6b7785;font-size:12px}
.cap{display:block;font-size:12px;word-wrap:break-word}
.cutmark{writing-mode:vertical-rl;border-left:3px dashed #222;padding:0 4px;font-size:12px;color:#222}
.warn li{color:#8a4b00}code{font-size:12px}
"""


@dataclass
class ReportResult:
    """What :func:`build_report` wrote: the folder, its page and summary."""

    out: Path
    index: Path
    summary: dict[str, Any]


def _inputs_table(inputs: ReportInputs) -> str:
    rows = [[esc(s.name), f"<code>{esc(s.path)}</code>" if s.path else "–", esc(s.state), esc(s.detail)]
            for s in inputs.statuses]  # fmt: skip
    return "<details><summary>Inputs</summary>" + table(["input", "path", "state", "note"], rows) + "</details>"


def _page(title: str, nav: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty icon: without it the browser asks for /favicon.ico (an error on file://).
        f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head>'
        f"<body><header><h1>{esc(title)}</h1>{nav}</header><main>{body}</main></body></html>\n"
    )


def render(inputs: ReportInputs, cfg: ReportConfig, thumbs: Thumbnails) -> tuple[str, dict[str, Any]]:
    """The page's HTML and the counts of what it shows."""
    ranked = inputs.ranked[inputs.ranked["cleanable"]]
    column = histogram_column(ranked, cfg.score_column)
    scenes = sorted(inputs.selection["ratios"])
    scene_html = []
    for scene in scenes:
        rows = ranked[ranked["scene"] == scene]
        scene_html.append(scene_section(scene, rows, inputs, thumbs, cfg, column))
    egl, replaced = egl_section(inputs, thumbs, cfg)
    rejects, rejected = ingest_section(inputs, thumbs, cfg)
    grids, prompts = generations_section(inputs, thumbs, cfg)
    metrics, metric_rows = evaluation_section(inputs)
    links = [("selection", "Ratios")] + [(anchor, label) for anchor, label, present in (
        ("egl", "EGL", egl), ("ingest", "Rejects", rejects), ("generations", "Samples", grids),
        ("evaluation", "Metrics", metrics)) if present]  # fmt: skip
    nav = (
        "<nav>" + "".join(f'<a href="#{a}">{esc(label)}</a>' for a, label in links) + "<br>Scenes: "
        + "".join(f'<a href="#{scene_anchor(s)}">{esc(s)}</a>' for s in scenes) + "</nav>"
    )
    body = (
        f'<p class="note">{len(inputs.ranked)} pairs of <code>{esc(inputs.manifest)}</code>, '
        f"{len(ranked)} cleanable; {int(ranked['dropped'].sum())} dropped. Histograms: <b>{esc(column)}</b> "
        "(dropped red, kept grey); the dashed line is the cut between the last dropped and the first kept "
        "pair by fused rank. Captions are shown as written.</p>"
        + _inputs_table(inputs) + scene_overview(inputs) + '<section id="scenes"><h2>Scenes</h2>'
        + "".join(scene_html) + "</section>" + egl + rejects + grids + metrics
    )
    counts = {"scenes": len(scenes), "pairs": len(inputs.ranked), "cleanable": len(ranked),
              "dropped": int(ranked["dropped"].sum()), "egl_replaced": replaced, "rejected": rejected,
              "sample_prompts": prompts, "metric_rows": metric_rows}  # fmt: skip
    return _page(f"dldc cleaning report ({inputs.selection['mode']})", nav, body), counts


def build_report(cfg: ReportConfig) -> ReportResult:
    """Read the inputs of ``cfg``, write the report folder ``cfg.out`` atomically and return what it holds.

    Raises:
        FileNotFoundError, ValueError: an input is missing or malformed (see :func:`dldc.report.inputs.read_inputs`).
    """
    started = time.perf_counter()
    inputs = read_inputs(cfg)
    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        thumbs = Thumbnails(tmp, cfg.thumb_size, cfg.thumb_format, cfg.thumb_quality, cfg.max_pixels)
        page, counts = render(inputs, cfg, thumbs)
        (tmp / INDEX_FILE).write_text(page, encoding="utf-8")
        summary = {
            **counts,
            "thumbnails": thumbs.count,
            "thumbnail_failures": len(thumbs.failures),
            "html_bytes": len(page.encode("utf-8")),
            "thumbnail_bytes": thumbs.bytes,
            "bytes": len(page.encode("utf-8")) + thumbs.bytes,
            "seconds": round(time.perf_counter() - started, 3),
            "mode": inputs.selection["mode"],
            "inputs": {s.name: {"path": s.path, "state": s.state} for s in inputs.statuses},
            "failures": dict(sorted(thumbs.failures.items())[:20]),
        }
        write_json(tmp / SUMMARY_FILE, summary)
    return ReportResult(out, out / INDEX_FILE, summary)


_THUMB_SRC = re.compile(r'src="(thumbs/[0-9a-f]+\.(?:jpg|png))"')


def single_file(folder: str | Path) -> str:
    """The report's ``index.html`` with every thumbnail inlined as a data URI: one file, same page.

    Only the report's own ``thumbs/<hex>.jpg|png`` references are replaced (the names it writes), so
    nothing outside the folder is read.
    """
    folder = Path(folder)
    page = (folder / INDEX_FILE).read_text(encoding="utf-8")

    def inline(match: re.Match[str]) -> str:
        name = html.unescape(match.group(1))
        kind = "jpeg" if name.endswith(".jpg") else "png"
        data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
        return f'src="data:image/{kind};base64,{data}"'

    return _THUMB_SRC.sub(inline, page)
